"""Deep Compression reproduced on the scikit-learn digits: prune, trained k-means, Huffman — with bytes on disk.

For LeNet-300-100 (as 64-300-100-10) and LeNet-5, over 3 seeds, the shipped recipes
(src/deepslim/recipes/deep-compression-*.yaml) run end to end; the paper's table is rebuilt from the models each
stage saved. Compression ratio = fp32 parameter bytes ÷ archive bytes, where the archive (the .dsz file) holds
everything needed to restore the weights — biases, codebooks, code tables, the manifest and header included:
- pruning: the pruned model stored sparse, with fixed 5-bit relative indices and fp32 values (no Huffman);
- + quantization: the clustered model with fixed-width codebook indices (no Huffman);
- + Huffman: the archive as written (Huffman-coded indices and codes).
Han et al. (ICLR 2016, Table 1) report 40x for LeNet-300-100 and 39x for LeNet-5 (MNIST) with no accuracy loss.

Also the follow-up to the pruning benchmark: what unstructured 90% sparsity does to bytes on disk — the ONNX file
does not shrink, the archive does.

``--data fashion-mnist`` runs the same two recipes on Fashion-MNIST (real photographs of clothing, the Debian
package's 60,000/10,000 set; LeNet-300-100 as 784-300-100-10, LeNet-5 on 28×28) with fewer epochs per stage (the
set is 38× larger than the digits), accuracy on the full 10,000-image test set.

    python benchmarks/deep_compression.py [--data digits|fashion-mnist] [--json OUT] [--seeds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import deepslim as ds
from _common import result_header, save_json, training_threads, write_result

RECIPES = {"lenet300": "deep-compression-lenet300", "lenet5": "deep-compression-lenet5"}
PAPER = {"lenet300": 40, "lenet5": 39}
# Fashion-MNIST: epochs of each stage of the shipped recipes (the digits run them as written)
FASHION_EPOCHS = {"lenet300": {"train": 10, "prune": 8, "cluster": 2}, "lenet5": {"train": 4, "prune": 3, "cluster": 1}}


def recipe_for(model: str, dataset: str, seed: int, quick: bool = False) -> dict[str, Any]:
    """The shipped recipe as a dict, for ``dataset`` and ``seed`` (on Fashion-MNIST with its own stage epochs)."""
    raw = yaml.safe_load((Path(ds.__file__).parent / "recipes" / f"{RECIPES[model]}.yaml").read_text())
    raw["seed"] = seed
    if dataset != "digits":
        raw["data"] = dataset
        for stage in raw["stages"]:
            (kind, params), = stage.items()
            if kind in FASHION_EPOCHS[model]:
                params["epochs"] = 1 if quick else FASHION_EPOCHS[model][kind]
    return raw


def one_run(model: str, seed: int, tmp: Path, data: ds.DataBundle, raw: dict[str, Any]) -> dict[str, Any]:
    recipe = ds.load_recipe(raw)
    start = time.perf_counter()
    run = ds.run_recipe(recipe, tmp / f"{model}-{seed}", data=data)
    seconds = time.perf_counter() - start
    trained, final = run.stage("train"), run.metrics[-1]
    fp32 = 4 * trained["params"]
    pruned = ds.load_model(run.stage("prune")["model_file"])
    clustered = ds.load_model(run.stage("cluster")["model_file"])
    archive = Path(run.artifacts["archive"]).read_bytes()
    decoded = ds.decode(archive)
    info = ds.archive_info(archive)
    return {
        "seed": seed, "seconds": seconds, "stages": raw["stages"], "test_size": len(data.test.dataset),
        "params": trained["params"], "fp32_bytes": fp32,
        "nonzero_params": final["nonzero_params"],
        "accuracy_before": trained["accuracy"], "accuracy_after": final["accuracy"],
        "accuracy_decoded": ds.evaluate(decoded, data.test).accuracy,
        "bytes": {"pruning": len(ds.encode(pruned, huffman=False)),
                  "quantization": len(ds.encode(clustered, huffman=False)), "huffman": len(archive)},
        "archive_parts": info.by_part,
        "layers": [{"name": t.name, "bytes": t.total, "layout": t.layout, "encoding": t.encoding}
                   for t in info.tensors],
    }  # fmt: skip


def sparse_file_sizes(tmp: Path) -> list[dict]:
    """Unstructured 90% magnitude sparsity: ONNX file vs .dsz archive, dense and sparse."""
    rows = []
    for name in ("lenet5", "resnet18"):
        torch.manual_seed(0)
        model = ds.create_model(name).eval()
        x = ds.example_input(name)
        dense_onnx = ds.export_onnx(model, tmp / f"{name}.onnx", example_input=x).size_bytes
        dense_dsz = len(ds.encode(model))
        ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9))
        sparse_onnx = ds.export_onnx(model, tmp / f"{name}-90.onnx", example_input=x).size_bytes
        start = time.perf_counter()
        blob = ds.encode(model)
        enc = time.perf_counter() - start
        start = time.perf_counter()
        ds.decode(blob)
        dec = time.perf_counter() - start
        rows.append({"model": name, "params": sum(p.numel() for p in ds.create_model(name).parameters()),
                     "dense_onnx_bytes": dense_onnx, "sparse90_onnx_bytes": sparse_onnx,
                     "dense_dsz_bytes": dense_dsz, "sparse90_dsz_bytes": len(blob),
                     "encode_s": enc, "decode_s": dec})  # fmt: skip
    return rows


def summarize(runs: list[dict]) -> dict:
    mean = statistics.mean
    ratios = {k: mean(r["fp32_bytes"] / r["bytes"][k] for r in runs) for k in ("pruning", "quantization", "huffman")}
    return {
        "ratio": ratios,
        "accuracy_before": mean(r["accuracy_before"] for r in runs),
        "accuracy_after": mean(r["accuracy_after"] for r in runs),
        "drop_pp": 100 * mean(r["accuracy_before"] - r["accuracy_after"] for r in runs),
        "archive_bytes": mean(r["bytes"]["huffman"] for r in runs),
        "nonzero_fraction": mean(r["nonzero_params"] / r["params"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--data", choices=["digits", "fashion-mnist"], default="digits")
    parser.add_argument("--seeds", type=int, help="seeds per model (default 3 on the digits, 1 on Fashion-MNIST)")
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST smoke run: 1,000 images, 1 epoch a stage")
    parser.add_argument("--threads", type=int, help="intra-op threads (default 1: trained models depend on it)")
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.data == "digits" else 1)
    result: dict[str, Any] = {**result_header("deep_compression", training_threads(args.threads)), "data": args.data,
                              "models": {}}  # fmt: skip
    sizes = {"n_train": 1000, "n_test": 500} if args.quick and args.data != "digits" else {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in RECIPES:
            runs = []
            for seed in range(seeds):
                data = ds.load_data(args.data, seed=seed, **sizes)
                runs.append(one_run(model, seed, Path(tmp), data, recipe_for(model, args.data, seed, args.quick)))
            summary = summarize(runs)
            result["models"][model] = {"recipe": RECIPES[model], "paper_ratio": PAPER[model], "summary": summary,
                                       "runs": runs}  # fmt: skip
            save_json(result, args.json)
            r = summary["ratio"]
            print(f"{model}: {summary['accuracy_before']:.4f} -> {summary['accuracy_after']:.4f} "
                  f"({summary['drop_pp']:+.2f} pp drop), ratio pruning {r['pruning']:.1f}x, + quantization "
                  f"{r['quantization']:.1f}x, + Huffman {r['huffman']:.1f}x (paper {PAPER[model]}x); "
                  f"{summary['archive_bytes']:.0f} B", flush=True)  # fmt: skip
            for run in runs:
                print(f"  seed {run['seed']}: {run['accuracy_before']:.4f} -> {run['accuracy_after']:.4f}, "
                      f"{run['bytes']} B, decoded accuracy {run['accuracy_decoded']:.4f}, {run['seconds']:.0f} s")
        if args.data == "digits":  # the file sizes do not depend on the data (untrained weights)
            result["sparse90"] = sparse_file_sizes(Path(tmp))
            for row in result["sparse90"]:
                print(f"{row['model']} 90% sparse: ONNX {row['dense_onnx_bytes']:,} -> "
                      f"{row['sparse90_onnx_bytes']:,} B; archive {row['dense_dsz_bytes']:,} -> "
                      f"{row['sparse90_dsz_bytes']:,} B (encode {row['encode_s']:.2f} s, "
                      f"decode {row['decode_s']:.2f} s)")
    write_result(result, args.json)


if __name__ == "__main__":
    main()
