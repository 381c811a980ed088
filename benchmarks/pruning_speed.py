"""Does channel pruning make models faster in a real runtime? deepslim vs Torch-Pruning, same run.

ResNet-18 and MobileNetV2 at 224×224, batch 1, ONNX Runtime fp32 on the CPU with 2 intra-op threads. For each
Torch-Pruning ratio (L1 group magnitude, final classifier ignored) we prune with deepslim at the ratio that gives the
same MACs (bisection), so latencies are compared at equal MACs. Each variant gets its own ORT session, measured
alone (sessions alternated in one process distort each other). For MobileNetV2, ORT's own per-node profiler
splits the time between depthwise convolutions and the rest, to show why the gain lags the MAC cut.

    python benchmarks/pruning_speed.py [--json OUT] [--ratios 0.3,0.5,0.7]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

import deepslim as ds
from _common import result_header, write_result
from _peers import tp_prune

THREADS = 2


def ours_at_macs(model: torch.nn.Module, x: torch.Tensor, target: int,
                 round_to: int = 1) -> tuple[torch.nn.Module, float]:  # fmt: skip
    """deepslim-pruned copy whose MACs are as close to ``target`` as the channel counts allow."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        mid = (lo + hi) / 2
        config = ds.ChannelPruneConfig(ratio=mid, round_to=round_to)
        candidate = ds.prune_(copy.deepcopy(model), config, example_input=x)
        macs = ds.profile(candidate, x).macs
        if best is None or abs(macs - target) < abs(best[1] - target):
            best = (candidate, macs, mid)
        lo, hi = (mid, hi) if macs > target else (lo, mid)
    if best is None:  # the loop above always runs, so this is a bug if reached
        raise RuntimeError("ours_at_macs: the bisection produced no candidate")
    return best[0], best[2]


def latency(model: torch.nn.Module, x: torch.Tensor, tmp: Path, name: str) -> tuple[float, int]:
    path = tmp / f"{name}.onnx"
    ds.export_onnx(model, path, example_input=x)
    return ds.benchmark(path, example_input=x, threads=THREADS, min_seconds=3.0).median_ms, path.stat().st_size


def _kind(weight: list[int] | None) -> str:
    if weight is None or len(weight) != 4:
        return "other"
    if weight[1] == 1 and weight[2] > 1:
        return "depthwise"
    return "pointwise" if weight[2] == weight[3] == 1 else "conv kxk"


def time_breakdown(model: torch.nn.Module, x: torch.Tensor, tmp: Path) -> dict[str, dict[str, float]]:
    """Share of ORT kernel time and of MACs by kind of layer: depthwise, pointwise (1x1), other conv, other."""
    import onnxruntime as ort

    path = tmp / "prof.onnx"
    ds.export_onnx(model, path, example_input=x)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / "ort")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(50):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        shapes = e["args"].get("input_type_shape", [])
        weight = next(iter(shapes[1].values())) if e["args"].get("op_name") == "Conv" and len(shapes) > 1 else None
        kind = _kind(weight) if e["args"].get("op_name") == "Conv" else "other"
        times[kind] = times.get(kind, 0.0) + e["dur"]
    prof = ds.profile(model, x)
    macs: dict[str, float] = {}
    for lp in prof.layers:
        m = model.get_submodule(lp.name) if lp.name else model
        kind = _kind(list(m.weight.shape)) if isinstance(m, torch.nn.Conv2d) else "other"
        macs[kind] = macs.get(kind, 0) + lp.macs
    total_t, total_m = sum(times.values()), sum(macs.values())
    kinds = sorted(set(times) | set(macs))
    return {k: {"time_share": times.get(k, 0.0) / total_t, "mac_share": macs.get(k, 0) / total_m} for k in kinds}


def run(name: str, ratios: list[float], tmp: Path) -> dict:
    torch.manual_seed(0)
    model = ds.create_model(name).eval()
    x = ds.example_input(name)
    base = ds.profile(model, x).macs
    dense_ms, dense_bytes = latency(model, x, tmp, "dense")
    rows = []
    for ratio in ratios:
        tp_model = tp_prune(model, x, ratio).eval()
        tp_macs = ds.profile(tp_model, x).macs
        tp_ms, _ = latency(tp_model, x, tmp, "tp")
        row = {"tp_ratio": ratio, "tp_macs": tp_macs, "tp_mac_cut": base / tp_macs, "tp_ms": tp_ms,
               "tp_speedup": dense_ms / tp_ms}  # fmt: skip
        for round_to in (1, 16):  # round_to=1: exact ratios, as Torch-Pruning; 16: this CPU's NCHWc block size
            ours, our_ratio = ours_at_macs(model, x, tp_macs, round_to)
            our_macs = ds.profile(ours, x).macs
            our_ms, our_bytes = latency(ours, x, tmp, "ours")
            row[f"round{round_to}"] = {"ratio": round(our_ratio, 4), "macs": our_macs, "mac_cut": base / our_macs,
                                       "ms": our_ms, "speedup": dense_ms / our_ms, "onnx_bytes": our_bytes}  # fmt: skip
        rows.append(row)
    result = {"model": name, "dense_macs": base, "dense_ms": dense_ms, "dense_onnx_bytes": dense_bytes, "rows": rows}
    half = ds.prune_(copy.deepcopy(model), ds.ChannelPruneConfig(ratio=0.5), example_input=x)
    result["breakdown"] = {"dense": time_breakdown(model, x, tmp), "ratio_0.5": time_breakdown(half, x, tmp)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    args = parser.parse_args()
    out = result_header("pruning_speed", THREADS)
    ratios = [float(r) for r in args.ratios.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(name, ratios, Path(tmp)) for name in args.models.split(",")]
    for r in results:
        print(f"\n{r['model']}: dense {r['dense_macs'] / 1e6:.0f} M MACs, ORT fp32 {r['dense_ms']:.2f} ms")
        print("| TP ratio | MAC cut TP / ds / ds-16 | TP ms | deepslim ms | deepslim round_to=16 ms "
              "| speed-up TP / ds / ds-16 |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|")
        for row in r["rows"]:
            a, b = row["round1"], row["round16"]
            print(f"| {row['tp_ratio']} | {row['tp_mac_cut']:.2f}x / {a['mac_cut']:.2f}x / {b['mac_cut']:.2f}x | "
                  f"{row['tp_ms']:.2f} | {a['ms']:.2f} | {b['ms']:.2f} | "
                  f"{row['tp_speedup']:.2f}x / {a['speedup']:.2f}x / {b['speedup']:.2f}x |")  # fmt: skip
        for label, shares in r["breakdown"].items():
            cells = ", ".join(f"{k} {100 * v['time_share']:.0f}% of time / {100 * v['mac_share']:.0f}% of MACs"
                              for k, v in shares.items())  # fmt: skip
            print(f"  {label}: {cells}")
    out["results"] = results
    write_result(out, args.json, echo=False)


if __name__ == "__main__":
    main()
