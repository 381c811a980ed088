"""int8 PTQ on models trained on real(istic) images: ResNet-20 and MobileNetV2 on `shapes`, deepslim vs ONNX
Runtime's quantize_static and NNCF — accuracy measured in ONNX Runtime, where the integer graph runs, and latency.

Per model (seeds 0 and 1): train 15 epochs; the same 256-image calibration set for every quantizer; accuracy on the
held-out test split of:
- fp32 (PyTorch) and fp32 in ONNX Runtime;
- deepslim int8 (LinearQuantConfig, minmax and percentile calibration): the fake-quantized PyTorch model, and its
  integer QDQ export run in ONNX Runtime;
- ONNX Runtime quantize_static (QDQ, u8 activations, s8 per-channel weights, MinMax calibration);
- NNCF int8 PTQ (ONNX backend) run in ONNX Runtime.
Latency: 1×3×32×32, at the run's threads, all files in one round-robin (deepslim.interleave), each in its own
process. ``--threads`` (default 1, as the other benchmarks that train) fixes torch's intra-op threads for training
(given to ``fit`` and ``evaluate``: their load policy would otherwise use 1 thread on a busy machine unless
OMP_NUM_THREADS is set), the latency threads and the ONNX Runtime sessions that measure accuracy (else they took
every core): a trained model depends on it (BENCHMARKS.md session 8); the 2026-11-23 run used 2. The JSON is written
after every model and seed, so a long run never loses it all.

``--models``/``--seeds`` run a part of the table (seed numbers, not a count); ``--merge PREVIOUS`` adds the runs of
an earlier result of this benchmark (same threads) that this one does not re-run, so a run finished in parts is one
file: its ``merged`` field says which seeds came from which file and date, ``--note`` says the rest (commits).

    python benchmarks/quantization_shapes.py [--json OUT] [--models M ...] [--seeds 0 1] [--threads N]
                                             [--merge PREVIOUS.json] [--note TEXT]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import deepslim as ds
from _common import result_header, save_json, training_threads, write_result
from _peers import nncf_onnx, ort_accuracy, ort_quantize_static

MODELS = {"resnet20": {}, "mobilenet_v2": {"small_input": True, "width_mult": 0.5}}


def run(name: str, seed: int, data: ds.DataBundle, tmp: Path, threads: int) -> dict:
    torch.manual_seed(seed)
    model = ds.create_model(name, num_classes=data.num_classes, **MODELS[name])
    start = time.perf_counter()
    ds.fit(model, data, epochs=15, lr=2e-3, seed=seed, threads=threads)  # not the load policy: see --threads
    train_s = time.perf_counter() - start
    x = data.example_input
    calib_np = [b.numpy() for b, _ in data.calib]
    acc = {"fp32": ds.evaluate(model, data.test, threads=threads).accuracy}
    files = {"fp32": ds.export_onnx(model, tmp / f"{name}-fp32.onnx", example_input=x).path}
    acc["fp32 (ORT)"] = ort_accuracy(files["fp32"], data.test, threads)
    for cal in ("minmax", "percentile"):
        q = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(calibration=cal), calib_data=data.calib)
        acc[f"deepslim int8 {cal} (PyTorch)"] = ds.evaluate(q, data.test, threads=threads).accuracy
        path = ds.export_onnx(q, tmp / f"{name}-ds-{cal}.onnx", example_input=x, calib_data=data.calib).path
        acc[f"deepslim int8 {cal} (ORT)"] = ort_accuracy(path, data.test, threads)
        files[f"deepslim int8 {cal}"] = path
    files["ORT quantize_static"] = ort_quantize_static(files["fp32"], tmp / f"{name}-ort.onnx", calib_np)
    acc["ORT quantize_static (ORT)"] = ort_accuracy(files["ORT quantize_static"], data.test, threads)
    try:
        files["NNCF"] = nncf_onnx(files["fp32"], tmp / f"{name}-nncf.onnx", calib_np)
        acc["NNCF (ORT)"] = ort_accuracy(files["NNCF"], data.test, threads)
    except Exception as exc:  # a peer failing is a finding, recorded as such
        acc["NNCF (ORT)"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        files.pop("NNCF", None)
    measured = ds.interleave(files, threads=threads, rounds=20)  # one round-robin: drift hits every variant alike
    latency = {label: {"median_ms": r.median_ms, "file_bytes": files[label].stat().st_size}
               for label, r in measured.items()}  # fmt: skip
    return {"seed": seed, "train_seconds": train_s, "accuracy": acc, "latency": latency}


def summarize(name: str, runs: list[dict]) -> dict:
    """The model's entry: its options, its runs so far and the mean accuracy over them (strings: a peer failed)."""
    keys = [k for k, v in runs[0]["accuracy"].items() if not isinstance(v, str)]
    mean = {k: statistics.mean(r["accuracy"][k] for r in runs if not isinstance(r["accuracy"][k], str))
            for k in keys}  # fmt: skip
    return {"options": MODELS[name], "runs": runs, "mean_accuracy": mean}


def merge_problem(previous: dict, models: list[str], seeds: list[int], threads: int) -> str | None:
    """Why ``previous`` (an earlier result of this benchmark) cannot be merged with a run of ``models`` × ``seeds``
    at ``threads`` (None: it can): a trained model depends on the thread count, and a seed in both is ambiguous."""
    if previous.get("benchmark") != "quantization_shapes":
        return f"--merge: not a quantization_shapes result (benchmark {previous.get('benchmark')!r})"
    if previous.get("threads") != threads:
        return f"--merge: its runs trained at {previous.get('threads')} threads, this one at {threads}: use --threads"
    twice = [f"{name} seed {r['seed']}" for name in models for r in previous["models"].get(name, {}).get("runs", [])
             if r["seed"] in seeds]  # fmt: skip
    return f"--merge: {', '.join(twice)} already in it: leave them out of --models/--seeds" if twice else None


def merged(result: dict, previous: dict | None, source: str = "") -> dict:
    """``result`` with the runs of ``previous`` it does not have, every model's runs in seed order and its mean over
    them all, and a ``merged`` field naming which seeds came from ``previous`` (``source``, its date and note)."""
    if previous is None:
        return result
    models = {}
    for name in MODELS:
        runs = previous["models"].get(name, {}).get("runs", []) + result["models"].get(name, {}).get("runs", [])
        if runs:
            models[name] = summarize(name, sorted(runs, key=lambda r: r["seed"]))
    kept = {name: [r["seed"] for r in m["runs"]] for name, m in previous["models"].items()}
    return {**result, "models": models,
            "merged": {"from": source, "date": previous.get("date"), "machine": previous.get("machine"),
                       "seeds": kept, "note": previous.get("note")}}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seed numbers (default 0 1)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default 1: trained models depend on it)")
    parser.add_argument("--merge", type=Path, help="an earlier result whose other runs this one's JSON keeps")
    parser.add_argument("--note", help="recorded as the JSON's note (e.g. which commit ran which part)")
    args = parser.parse_args(argv)
    args.threads = training_threads(args.threads)
    args.previous = json.loads(args.merge.read_text()) if args.merge else None
    problem = merge_problem(args.previous, args.models, args.seeds, args.threads) if args.previous else None
    if problem:
        parser.error(problem)
    return args


def main() -> None:
    args = parse_args()
    threads = args.threads
    result: dict = {**result_header("quantization_shapes", threads), "models": {}}
    if args.note:
        result["note"] = args.note
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            runs: list[dict] = []
            for seed in args.seeds:
                data = ds.load_data("shapes", seed=seed)
                runs.append(run(name, seed, data, Path(work), threads))
                r = runs[-1]
                print(f"{name} seed {seed} (trained in {r['train_seconds']:.0f} s):", flush=True)
                for k, v in r["accuracy"].items():
                    print(f"  {k:<34} {v if isinstance(v, str) else f'{100 * v:.2f}%'}")
                for k, v in r["latency"].items():
                    print(f"  latency {k:<26} {v['median_ms']:.3f} ms  {v['file_bytes']:,} B")
                result["models"][name] = summarize(name, runs)
                save_json(merged(result, args.previous, str(args.merge)), args.json)  # a partial run is usable
            mean = result["models"][name]["mean_accuracy"]
            print(f"{name} mean: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in mean.items()), flush=True)
    result = merged(result, args.previous, str(args.merge))
    write_result(result, args.json, echo=False)


if __name__ == "__main__":
    main()
