"""ONNX Runtime and OpenVINO side by side on the same files: ResNet-18 at 224×224, batch 1, fp32 and int8.

int8 is deepslim's documented path: ``quantize_(model, LinearQuantConfig(bits=8), calib_data=calib)`` then
``export_onnx(model, path, example_input=x)``; OpenVINO reads the same QDQ file. Every variant runs in its own worker
process, timed round-robin with ``deepslim.interleave`` (spinning off in ONNX Runtime, no pinning in OpenVINO, order
reversed every round), at 2 threads. OpenVINO fp32 is compiled with ``INFERENCE_PRECISION_HINT=f32``; the row
"OpenVINO bf16" shows what the plugin's default on a CPU with bf16 units would do to the fp32 file. Also recorded: how
many compute layers OpenVINO's runtime graph runs in int8, OpenVINO's agreement with the float model, and the load
average before and after (the machine is shared; a load above 2 makes the numbers noisy).

    python benchmarks/openvino_runtime.py [--json benchmarks/results/openvino.json] [--rounds 20]

(Not named ``openvino.py``: run as a script, its folder comes first on ``sys.path`` and ``import openvino`` would
import the script itself.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import deepslim as ds
from _common import result_header, write_result
from deepslim.export.openvino import layer_precisions, run_openvino

THREADS = 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    import onnxruntime
    import openvino

    out = result_header("openvino", THREADS)
    out["versions"] = {"openvino": openvino.__version__, "onnxruntime": onnxruntime.__version__}
    out["load_average_before"] = os.getloadavg()
    torch.manual_seed(0)
    model = ds.create_model("resnet18").eval()
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=gen),) for _ in range(4)]
    x = torch.randn(1, 3, 224, 224, generator=gen)
    xs = torch.randn(8, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = model(xs).numpy()
    with tempfile.TemporaryDirectory() as work:
        fp32 = ds.export_onnx(model, Path(work) / "fp32.onnx", example_input=x).path
        ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
        int8 = ds.export_onnx(model, Path(work) / "int8.onnx", example_input=x).path
        out["openvino"] = {}
        variants = (("fp32", fp32, "openvino"), ("int8", int8, "openvino"), ("bf16", fp32, "openvino-bf16"))
        for label, path, rt in variants:
            got = run_openvino(path, xs, threads=THREADS, runtime=rt)
            prec = layer_precisions(path, runtime=rt)
            out["openvino"][label] = {
                "compute_layers": prec.compute_layers, "int8_layers": prec.integer_layers,
                "kernels": sorted(set(prec.kernels)),
                "cosine_vs_float": float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref))),
                "top1_vs_float": float((got.argmax(1) == ref.argmax(1)).mean())}  # fmt: skip
        files = {"ORT fp32": (fp32, "onnxruntime"), "ORT int8": (int8, "onnxruntime"),
                 "OpenVINO fp32": (fp32, "openvino"), "OpenVINO int8": (int8, "openvino"),
                 "OpenVINO bf16 (fp32 file)": (fp32, "openvino-bf16")}  # fmt: skip
        timed = ds.interleave(files, example_input=x, threads=THREADS, rounds=args.rounds)
    base = timed["ORT fp32"].median_ms
    out["timing"] = {label: {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms, "runs": r.runs,
                             "peak_memory_bytes": r.peak_memory_bytes, "speedup_vs_ort_fp32": base / r.median_ms}
                     for label, r in timed.items()}  # fmt: skip
    write_result(out, args.json)


if __name__ == "__main__":
    main()
