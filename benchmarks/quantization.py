"""Quantization accuracy on real data: deepslim vs ONNX Runtime's quantize_static, and the non-linear encodings.

LeNet-5 trained on the scikit-learn digits (3 seeds; ``--data digits``, the default) or on Fashion-MNIST (real
photographs of clothing, the Debian package's 60,000/10,000 set; ``--data fashion-mnist``: 1 seed, 4 epochs, 1 epoch
of fine-tuning for each encoding, accuracy on the full 10,000-image test set). Same trained model, same 256-image
calibration set:
- deepslim int8 PTQ (per-channel s8 weights, u8 activations) with each calibration method, evaluated in PyTorch
  (fake quantization that matches the integer arithmetic);
- ONNX Runtime ``quantize_static`` (QDQ, u8 activations, s8 per-channel weights — its fast CPU form) with its MinMax,
  Percentile and Entropy calibrators, evaluated in ONNX Runtime;
- NNCF ``nncf.quantize`` (its default int8 PTQ, with fast bias correction), evaluated in PyTorch (digits) or, on
  Fashion-MNIST, on the ONNX file (NNCF's ONNX backend) evaluated in ONNX Runtime: its PyTorch backend compiles a C++
  extension on first use, which timed out on the shared machine;
- 4-bit linear with and without QAT, k-means 5/3-bit with and without centroid fine-tuning, binary and ternary with
  and without fine-tuning (3 epochs each);
- the four calibration methods on a model with activation outliers: the same LeNet-5 with one channel of the first
  convolution scaled ×50 and the second convolution's matching input ÷50 — the same function in fp32 (ReLU and
  max-pool are positively homogeneous), but the second layer's input now has a 50× outlier channel (measured with
  ``accept_low_fidelity=True``: the fidelity check refuses some of them, which is what this row shows).

    python benchmarks/quantization.py [--data digits|fashion-mnist] [--json OUT] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, save_json, training_threads, write_result
from _peers import nncf_onnx, ort_accuracy, ort_quantize_static

# per data set: the model's options, seeds, training epochs, fine-tuning epochs of each encoding
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"options": {"input_size": 8}, "seeds": (0, 1, 2), "epochs": 30, "ft_epochs": 3, "nncf": "torch"},
    "fashion-mnist": {"options": {}, "seeds": (0,), "epochs": 4, "ft_epochs": 1, "nncf": "onnx"},
}


def ort_static(model: torch.nn.Module, data: ds.DataBundle, tmp: Path, method: str) -> float:
    fp32, int8 = tmp / "fp32.onnx", tmp / f"int8_{method}.onnx"
    ds.export_onnx(model, fp32, example_input=data.example_input)
    ort_quantize_static(fp32, int8, [x.numpy() for x, _ in data.calib], method)
    return ort_accuracy(int8, data.test, torch.get_num_threads())  # the run's --threads, set by result_header


def nncf_int8(model: torch.nn.Module, data: ds.DataBundle) -> torch.nn.Module:
    import nncf

    return nncf.quantize(copy.deepcopy(model).eval(), nncf.Dataset(data.calib, lambda batch: batch[0]),
                         subset_size=len(data.calib.dataset))  # fmt: skip


def nncf_accuracy(model: torch.nn.Module, data: ds.DataBundle, tmp: Path, backend: str) -> float:
    """NNCF's default int8 PTQ: on the PyTorch model (evaluated in PyTorch; its backend compiles a C++ extension on
    first use) or on the exported ONNX file (its ONNX backend, evaluated in ONNX Runtime)."""
    if backend == "torch":
        return ds.evaluate(nncf_int8(model, data), data.test).accuracy
    fp32, int8 = tmp / "fp32_nncf.onnx", tmp / "int8_nncf.onnx"
    ds.export_onnx(model, fp32, example_input=data.example_input)
    nncf_onnx(fp32, int8, [x.numpy() for x, _ in data.calib])
    return ort_accuracy(int8, data.test, torch.get_num_threads())  # the run's --threads, set by result_header


def with_outliers(model: torch.nn.Module, factor: float = 50.0) -> torch.nn.Module:
    """The same function with one activation channel ``factor`` times larger."""
    m = copy.deepcopy(model)
    features = m.features
    if not isinstance(features, torch.nn.Sequential):
        raise TypeError(f"with_outliers expects a LeNet-5-like model with .features, got {type(model).__name__}")
    conv1, conv2 = features[0], features[2]
    if not (isinstance(conv1, torch.nn.Conv2d) and isinstance(conv2, torch.nn.Conv2d) and conv1.bias is not None):
        raise TypeError("with_outliers expects features[0] (with a bias) and features[2] to be Conv2d layers")
    c = int(conv1.weight.detach().flatten(1).norm(dim=1).argmax())
    with torch.no_grad():
        conv1.weight[c] *= factor
        conv1.bias[c] *= factor
        conv2.weight[:, c] /= factor
    return m


def run_seed(seed: int, tmp: Path, dataset: str = "digits", res: dict[str, float] | None = None,
             progress: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Every variant's test accuracy, filled into ``res`` (calling ``progress`` after each step: a long run never
    loses it all)."""
    res = {} if res is None else res
    settings = SETTINGS[dataset]
    data = ds.load_data(dataset, seed=seed)
    torch.manual_seed(seed)
    model = ds.create_model("lenet5", **settings["options"])
    ds.fit(model, data, epochs=settings["epochs"], lr=2e-3, seed=seed)
    acc = lambda m: ds.evaluate(m, data.test).accuracy  # noqa: E731
    res["fp32"] = acc(model)
    for cal in ("minmax", "percentile", "mse", "entropy"):
        q = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(calibration=cal), calib_data=data.calib)
        res[f"deepslim_int8_{cal}"] = acc(q)
    for method in ("MinMax", "Percentile", "Entropy"):
        res[f"ort_int8_{method.lower()}"] = ort_static(model, data, tmp, method)
    res["nncf_int8"] = nncf_accuracy(model, data, tmp, settings["nncf"])
    progress()

    outlier = with_outliers(model)
    res["outlier_model_fp32"] = acc(outlier)
    for cal in ("minmax", "percentile", "mse", "entropy"):
        # the fidelity check refuses some of these (that is the point of the outlier model): measure them anyway
        config = ds.LinearQuantConfig(calibration=cal, accept_low_fidelity=True)
        res[f"outlier_model_int8_{cal}"] = acc(ds.quantize_(copy.deepcopy(outlier), config, calib_data=data.calib))
    res["outlier_model_nncf_int8"] = nncf_accuracy(outlier, data, tmp, settings["nncf"])
    progress()

    def with_and_without(name: str, make: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        m = make(copy.deepcopy(model))
        res[name] = acc(m)
        ds.fit(m, data, epochs=settings["ft_epochs"], lr=5e-4, seed=seed, restore_best=False)
        res[f"{name}_finetuned"] = acc(m)
        progress()

    with_and_without("linear_w4a8", lambda m: ds.quantize_(m, ds.LinearQuantConfig(bits=4), calib_data=data.calib))
    res["linear_w4a8_qat"] = res.pop("linear_w4a8_finetuned")
    with_and_without("kmeans_5bit", lambda m: ds.cluster_(m, ds.KMeansConfig(bits=5)))
    with_and_without("kmeans_3bit", lambda m: ds.cluster_(m, ds.KMeansConfig(bits=3)))
    with_and_without("binary", lambda m: ds.quantize_(m, ds.BinaryConfig()))
    with_and_without("ternary", lambda m: ds.quantize_(m, ds.TernaryConfig()))
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--data", choices=sorted(SETTINGS), default="digits")
    parser.add_argument("--threads", type=int, help="intra-op threads (default 1: trained models depend on it)")
    args = parser.parse_args()
    out: dict[str, Any] = {**result_header("quantization", training_threads(args.threads)), "data": args.data,
                           "settings": SETTINGS[args.data], "runs": []}  # fmt: skip
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SETTINGS[args.data]["seeds"]:
            res: dict[str, float] = {}
            out["runs"].append(res)
            run_seed(seed, Path(tmp), args.data, res, lambda: save_json(out, args.json))
            save_json(out, args.json)
    runs = out["runs"]
    write_result(out, args.json)
    print(f"| variant | test accuracy (mean of {len(runs)} seeds) | vs fp32 (pp) |")
    print("|---|---:|---:|")
    base = statistics.mean(r["fp32"] for r in runs)
    for key in runs[0]:
        mean = statistics.mean(r[key] for r in runs)
        print(f"| {key} | {100 * mean:.2f}% | {100 * (mean - base):+.2f} |")


if __name__ == "__main__":
    main()
