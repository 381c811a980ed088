"""Accuracy after structured pruning + fine-tuning, deepslim vs Torch-Pruning, with the same training.

- digits (real handwritten digits), LeNet-5: dense training, then channel ratios 0.3/0.5/0.7, each followed by the
  same fine-tuning, for deepslim and for Torch-Pruning (L1 group magnitude, final layer ignored); 3 seeds.
  Also unstructured magnitude pruning at 90% (global): accuracy after fine-tuning and its ONNX Runtime latency,
  which does not improve (dense kernels compute the zeros).
- shapes (generated 32×32 RGB shapes), ResNet-20 and MobileNetV2 (small input, width 0.5): ratio 0.5; 1 seed.

    python benchmarks/pruning_accuracy.py [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
from datetime import date
from pathlib import Path

import torch

import deepslim as ds


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    import torch_pruning as tp

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[head])  # fmt: skip
    pruner.step()
    return model


def experiment(model_name: str, data: ds.DataBundle, options: dict, ratios: list[float], seed: int,
               train_epochs: int, ft_epochs: int, lr: float) -> dict:  # fmt: skip
    torch.manual_seed(seed)
    dense = ds.create_model(model_name, **options)
    ds.fit(dense, data, epochs=train_epochs, lr=lr, seed=seed)
    x = data.example_input
    out = {"seed": seed, "dense_accuracy": ds.evaluate(dense, data.test).accuracy,
           "dense_macs": ds.profile(dense, x).macs, "ratios": {}}  # fmt: skip
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
            ds.fit(model, data, epochs=ft_epochs, lr=lr / 2, seed=seed)
            row[f"{tool}_accuracy"] = ds.evaluate(model, data.test).accuracy
        out["ratios"][str(ratio)] = row
    return out


def unstructured(data: ds.DataBundle, seed: int, tmp: Path) -> dict:
    torch.manual_seed(seed)
    model = ds.create_model("lenet5", input_size=8)
    ds.fit(model, data, epochs=30, lr=2e-3, seed=seed)
    x = data.example_input
    dense_acc = ds.evaluate(model, data.test).accuracy
    ds.export_onnx(model, tmp / "dense.onnx", example_input=x)
    dense_ms = ds.benchmark(tmp / "dense.onnx", example_input=x, threads=2, min_seconds=2.0).median_ms
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9, scope="global"))
    ds.fit(model, data, epochs=10, lr=1e-3, seed=seed)
    ds.bake_masks_(model)
    ds.export_onnx(model, tmp / "sparse.onnx", example_input=x)
    sparse_ms = ds.benchmark(tmp / "sparse.onnx", example_input=x, threads=2, min_seconds=2.0).median_ms
    prof = ds.profile(model, x)
    return {"dense_accuracy": dense_acc, "sparse_accuracy": ds.evaluate(model, data.test).accuracy,
            "nonzero_fraction": prof.nonzero_params / prof.params, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
            "dense_onnx_bytes": (tmp / "dense.onnx").stat().st_size,
            "sparse_onnx_bytes": (tmp / "sparse.onnx").stat().st_size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = [0] if args.quick else [0, 1, 2]
    results: dict = {}

    def save(key: str, value: object) -> None:  # written after every experiment: a long run never loses it all
        results[key] = value
        print(f"done: {key}", flush=True)
        if args.json:
            meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "quick": args.quick}  # fmt: skip
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    digits = ds.load_data("digits")
    save("digits_lenet5", [experiment("lenet5", digits, {"input_size": 8}, [0.3, 0.5, 0.7], s, 30, 10, 2e-3)
                           for s in seeds])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save("digits_lenet5_unstructured_90", unstructured(digits, 0, Path(tmp)))
    shapes = ds.load_data("shapes")
    small = {"num_classes": 10, "small_input": True, "input_size": 32, "width_mult": 0.5}
    epochs = (3, 1) if args.quick else (15, 5)
    save("shapes_resnet20", [experiment("resnet20", shapes, {}, [0.5], 0, *epochs, 2e-3)])
    save("shapes_resnet20_shortcut_b", [experiment("resnet20", shapes, {"shortcut": "B"}, [0.5], 0, *epochs, 2e-3)])
    save("shapes_mobilenet_v2", [experiment("mobilenet_v2", shapes, small, [0.5], 0, *epochs, 2e-3)])
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


if __name__ == "__main__":
    main()
