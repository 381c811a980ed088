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

    python benchmarks/deep_compression.py [--json OUT] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import deepslim as ds
from _common import result_header

RECIPES = {"lenet300": "deep-compression-lenet300", "lenet5": "deep-compression-lenet5"}
PAPER = {"lenet300": 40, "lenet5": 39}


def one_run(model: str, seed: int, tmp: Path) -> dict:
    from dataclasses import replace

    recipe = replace(ds.load_recipe(RECIPES[model]), seed=seed)
    start = time.perf_counter()
    run = ds.run_recipe(recipe, tmp / f"{model}-{seed}")
    seconds = time.perf_counter() - start
    trained, final = run.stage("train"), run.metrics[-1]
    fp32 = 4 * trained["params"]
    pruned = ds.load_model(run.stage("prune")["model_file"])
    clustered = ds.load_model(run.stage("cluster")["model_file"])
    archive = Path(run.artifacts["archive"]).read_bytes()
    decoded = ds.decode(archive)
    data = ds.load_data("digits", seed=seed)
    info = ds.archive_info(archive)
    return {
        "seed": seed, "seconds": seconds, "params": trained["params"], "fp32_bytes": fp32,
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
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    result: dict = {**result_header("deep_compression"), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in RECIPES:
            runs = [one_run(model, seed, Path(tmp)) for seed in range(args.seeds)]
            summary = summarize(runs)
            result["models"][model] = {"recipe": RECIPES[model], "paper_ratio": PAPER[model], "summary": summary,
                                       "runs": runs}  # fmt: skip
            r = summary["ratio"]
            print(f"{model}: {summary['accuracy_before']:.4f} -> {summary['accuracy_after']:.4f} "
                  f"({summary['drop_pp']:+.2f} pp drop), ratio pruning {r['pruning']:.1f}x, + quantization "
                  f"{r['quantization']:.1f}x, + Huffman {r['huffman']:.1f}x (paper {PAPER[model]}x); "
                  f"{summary['archive_bytes']:.0f} B", flush=True)  # fmt: skip
            for run in runs:
                print(f"  seed {run['seed']}: {run['accuracy_before']:.4f} -> {run['accuracy_after']:.4f}, "
                      f"{run['bytes']} B, decoded accuracy {run['accuracy_decoded']:.4f}, {run['seconds']:.0f} s")
        result["sparse90"] = sparse_file_sizes(Path(tmp))
        for row in result["sparse90"]:
            print(f"{row['model']} 90% sparse: ONNX {row['dense_onnx_bytes']:,} -> {row['sparse90_onnx_bytes']:,} B; "
                  f"archive {row['dense_dsz_bytes']:,} -> {row['sparse90_dsz_bytes']:,} B "
                  f"(encode {row['encode_s']:.2f} s, decode {row['decode_s']:.2f} s)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
