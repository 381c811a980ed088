"""Accuracy after structured pruning + fine-tuning, deepslim vs Torch-Pruning, with the same training.

``--data digits`` (the default; the tables in BENCHMARKS.md):
- digits (real handwritten digits), LeNet-5: dense training, then channel ratios 0.3/0.5/0.7, each followed by the
  same fine-tuning, for deepslim and for Torch-Pruning (L1 group magnitude, final layer ignored); 3 seeds.
  Also unstructured magnitude pruning at 90% (global): accuracy after fine-tuning and its ONNX Runtime latency,
  which does not improve (dense kernels compute the zeros).
- shapes (generated 32×32 RGB shapes), ResNet-20 and MobileNetV2 (small input, width 0.5): ratio 0.5; 1 seed.

``--data fashion-mnist``: the same rows on real photographs of clothing (the Debian package's 60,000/10,000 set),
accuracy on the full 10,000-image test set, 1 seed. LeNet-5 trains on all 54,000 training images (6,000 held out for
validation); the convnets, ~25× (ResNet-20) to ~150× (MobileNetV2) more expensive per image, on a class-balanced
subset, so that the run fits a shared 2-core machine (the JSON records every size and epoch count).

    python benchmarks/pruning_accuracy.py [--data digits|fashion-mnist] [--json OUT] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, save_json, training_threads, write_result


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    import torch_pruning as tp

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[head])  # fmt: skip
    pruner.step()
    return model


def train_dense(model_name: str, data: ds.DataBundle, options: dict[str, Any], seed: int, epochs: int,
                lr: float, *, threads: int) -> torch.nn.Module:  # fmt: skip
    """Train at exactly ``threads`` intra-op threads: ``fit``'s own default follows the machine's load, and the trained
    weights depend on the thread count."""
    torch.manual_seed(seed)
    dense = ds.create_model(model_name, **options)
    ds.fit(dense, data, epochs=epochs, lr=lr, seed=seed, threads=threads)
    return dense


def experiment(model_name: str, data: ds.DataBundle, options: dict[str, Any], ratios: list[float], seed: int,
               train_epochs: int, ft_epochs: int, lr: float, dense: torch.nn.Module | None = None, *,
               threads: int) -> dict[str, Any]:
    """Prune the dense model (trained here unless given) at each ratio with both tools, then fine-tune each."""
    if dense is None:
        dense = train_dense(model_name, data, options, seed, train_epochs, lr, threads=threads)
    x = data.example_input
    out: dict[str, Any] = {"seed": seed, "dense_accuracy": ds.evaluate(dense, data.test).accuracy,
                           "dense_macs": ds.profile(dense, x).macs, "train_epochs": train_epochs,
                           "ft_epochs": ft_epochs, "train_size": len(data.train.dataset),
                           "test_size": len(data.test.dataset), "ratios": {}}  # fmt: skip
    for ratio in ratios:
        row = {}
        for tool in ("deepslim", "torch_pruning"):
            model = copy.deepcopy(dense)
            if tool == "deepslim":
                ds.prune_(model, ds.ChannelPruneConfig(ratio=ratio), example_input=x)
            else:
                tp_prune(model, x, ratio)
            try:
                row[f"{tool}_macs"] = ds.profile(model, x).macs
            except ds.InputShapeError as exc:  # the pruned model no longer runs
                row[f"{tool}_error"] = f"pruned model is broken: {exc}"
                continue
            row[f"{tool}_pruned_accuracy"] = ds.evaluate(model, data.test).accuracy
            ds.fit(model, data, epochs=ft_epochs, lr=lr / 2, seed=seed, threads=threads)
            row[f"{tool}_accuracy"] = ds.evaluate(model, data.test).accuracy
        out["ratios"][str(ratio)] = row
    return out


def unstructured(data: ds.DataBundle, seed: int, tmp: Path, *, threads: int, dense: torch.nn.Module | None = None,
                 epochs: tuple[int, int] = (30, 10), options: dict[str, Any] | None = None) -> dict[str, Any]:
    """90% global magnitude sparsity on LeNet-5 (trained here unless given), fine-tuned with the masks kept."""
    if dense is None:
        model = train_dense("lenet5", data, options or {"input_size": 8}, seed, epochs[0], 2e-3, threads=threads)
    else:
        model = copy.deepcopy(dense)
    x = data.example_input
    dense_acc = ds.evaluate(model, data.test).accuracy
    ds.export_onnx(model, tmp / "dense.onnx", example_input=x)
    dense_ms = ds.benchmark(tmp / "dense.onnx", example_input=x, threads=threads, min_seconds=2.0).median_ms
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9, scope="global"))
    ds.fit(model, data, epochs=epochs[1], lr=1e-3, seed=seed, threads=threads)
    ds.bake_masks_(model)
    ds.export_onnx(model, tmp / "sparse.onnx", example_input=x)
    sparse_ms = ds.benchmark(tmp / "sparse.onnx", example_input=x, threads=threads, min_seconds=2.0).median_ms
    prof = ds.profile(model, x)
    return {"dense_accuracy": dense_acc, "sparse_accuracy": ds.evaluate(model, data.test).accuracy,
            "nonzero_fraction": prof.nonzero_params / prof.params, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
            "dense_onnx_bytes": (tmp / "dense.onnx").stat().st_size,
            "sparse_onnx_bytes": (tmp / "sparse.onnx").stat().st_size, "ft_epochs": epochs[1]}  # fmt: skip


Save = Callable[[str, object], None]


def run_digits(save: Save, quick: bool, threads: int) -> None:
    seeds = [0] if quick else [0, 1, 2]
    digits = ds.load_data("digits")
    save("digits_lenet5", [experiment("lenet5", digits, {"input_size": 8}, [0.3, 0.5, 0.7], s, 30, 10, 2e-3,
                                      threads=threads)
                           for s in seeds])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save("digits_lenet5_unstructured_90", unstructured(digits, 0, Path(tmp), threads=threads))
    shapes = ds.load_data("shapes")
    small = {"num_classes": 10, "small_input": True, "input_size": 32, "width_mult": 0.5}
    epochs = (3, 1) if quick else (15, 5)
    save("shapes_resnet20", [experiment("resnet20", shapes, {}, [0.5], 0, *epochs, 2e-3, threads=threads)])
    save("shapes_resnet20_shortcut_b", [experiment("resnet20", shapes, {"shortcut": "B"}, [0.5], 0, *epochs, 2e-3,
                                                     threads=threads)])
    save("shapes_mobilenet_v2", [experiment("mobilenet_v2", shapes, small, [0.5], 0, *epochs, 2e-3, threads=threads)])


# Fashion-MNIST budgets: (training images incl. validation or None for all 60,000, dense epochs, fine-tuning epochs)
FASHION = {"lenet5": (None, 4, 1), "resnet20": (4000, 5, 2), "mobilenet_v2": (2000, 5, 2)}


def run_fashion(save: Save, quick: bool, threads: int) -> None:
    budget = {k: (1000, 1, 1) for k in FASHION} if quick else FASHION
    n_test = 500 if quick else None  # the full 10,000-image test set unless smoke-testing
    n_train, train_epochs, ft_epochs = budget["lenet5"]
    full = ds.load_data("fashion-mnist", n_train=n_train, n_test=n_test)
    dense = train_dense("lenet5", full, {}, 0, train_epochs, 2e-3, threads=threads)
    save("fashion_lenet5", [experiment("lenet5", full, {}, [0.3, 0.5, 0.7], 0, train_epochs, ft_epochs, 2e-3,
                                       dense=dense, threads=threads)])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save("fashion_lenet5_unstructured_90",
             unstructured(full, 0, Path(tmp), threads=threads, dense=dense, epochs=(train_epochs, ft_epochs)))
    del full
    grey = {"in_channels": 1}
    small = {"num_classes": 10, "small_input": True, "input_size": 28, "width_mult": 0.5, "in_channels": 1}
    for key, name, options in (("fashion_resnet20", "resnet20", grey),
                               ("fashion_resnet20_shortcut_b", "resnet20", {**grey, "shortcut": "B"}),
                               ("fashion_mobilenet_v2", "mobilenet_v2", small)):  # fmt: skip
        n_train, train_epochs, ft_epochs = budget[name]
        subset = ds.load_data("fashion-mnist", n_train=n_train, n_test=n_test)
        save(key, [experiment(name, subset, options, [0.5], 0, train_epochs, ft_epochs, 2e-3, threads=threads)])


def summary(results: dict[str, Any]) -> None:
    for key, runs in results.items():
        if not isinstance(runs, list):
            print(key, json.dumps(runs, indent=1))
            continue
        print(f"\n{key}: dense {100 * statistics.mean(r['dense_accuracy'] for r in runs):.2f}% ({len(runs)} seeds)")
        for ratio in runs[0]["ratios"]:
            rows = [r["ratios"][ratio] for r in runs]
            for tool in ("deepslim", "torch_pruning"):
                if f"{tool}_error" in rows[0]:
                    print(f"  ratio {ratio}: {tool}: {rows[0][f'{tool}_error']}")
                    continue
                cut = runs[0]["dense_macs"] / rows[0][f"{tool}_macs"]
                acc = statistics.mean(r[f"{tool}_accuracy"] for r in rows)
                print(f"  ratio {ratio}: {tool}: MAC cut {cut:.2f}x, accuracy after fine-tuning {100 * acc:.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--data", choices=["digits", "fashion-mnist"], default="digits",
                        help="digits: digits + shapes (the BENCHMARKS.md tables); fashion-mnist: the same rows on it")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs (a smoke run)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default 1: trained models depend on it)")
    args = parser.parse_args()
    threads = training_threads(args.threads)
    out: dict[str, Any] = {**result_header("pruning_accuracy", threads), "data": args.data, "quick": args.quick,
                           "results": {}}  # fmt: skip

    def save(key: str, value: object) -> None:  # written after every experiment: a long run never loses it all
        out["results"][key] = value
        print(f"done: {key}", flush=True)
        save_json(out, args.json)

    (run_fashion if args.data == "fashion-mnist" else run_digits)(save, args.quick, threads)
    write_result(out, args.json)
    summary(out["results"])


if __name__ == "__main__":
    main()
