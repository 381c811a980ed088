"""How fast and how exact is deepslim's profiler, next to fvcore's FlopCountAnalysis, in the same run?

For each model (real fp32 weights on the CPU, batch 1): median wall time of 5 profiles after one warm-up, for
deepslim (real execution and on the meta device), fvcore and the eager forward — timed round-robin, one call of each
per round, so a shared machine's drift hits all alike — and the MACs each reports. The small models (LeNet-5 on
28×28, ResNet-20 on 32×32) show the profiler's fixed cost, which dominates on small inputs. Usage:
    python benchmarks/profile_speed.py [--json OUT] [--models resnet50,...] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import deepslim as ds
from _common import pick_threads, result_header, write_result

MODELS = ["lenet5", "resnet20", "resnet18", "resnet50", "mobilenet_v2", "vgg16", "vit_b16", "bert_base"]


def _median_seconds(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median wall time of each function: one warm-up call each, then ``repeats`` rounds of one call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(name: str) -> dict[str, Any]:
    from fvcore.nn import FlopCountAnalysis

    model = ds.create_model(name).eval()  # each model's own default input (LeNet-5 28×28, ResNet-20 32×32)
    x = ds.example_input(name)
    with torch.device("meta"):
        meta_model, meta_x = ds.create_model(name), ds.example_input(name)
    ours = ds.profile(model, x)

    def fv():
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return analysis.total()

    def eager() -> None:
        with torch.no_grad():
            model(x)

    fv_macs = fv()
    seconds = _median_seconds({"deepslim_s": lambda: ds.profile(model, x),
                               "deepslim_meta_s": lambda: ds.profile(meta_model, meta_x),
                               "fvcore_s": fv, "eager_forward_s": eager})  # fmt: skip
    return {"model": name, "input_shape": list(x.shape), "deepslim_macs": ours.macs, "fvcore_macs": int(fv_macs),
            **seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, help="intra-op threads (default 2, or 1 on a machine under load)")
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    out = result_header("profile_speed", pick_threads(args.threads))
    rows = out["rows"] = [measure(n) for n in args.models.split(",")]
    write_result(out, args.json)
    print("| model | deepslim MACs | fvcore MACs | deepslim s | deepslim (meta) s | fvcore s | fvcore / deepslim time "
          "| eager forward s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['deepslim_macs']:,} | {r['fvcore_macs']:,} | {r['deepslim_s']:.3f} | "
              f"{r['deepslim_meta_s']:.3f} | {r['fvcore_s']:.3f} | {r['fvcore_s'] / r['deepslim_s']:.2f} | "
              f"{r['eager_forward_s']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
