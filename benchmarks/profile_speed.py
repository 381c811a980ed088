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
    """Median wall time of each function (``KEY``) and the median CPU time this process spent in it (``KEY_cpu``:
    what a loaded machine inflates least): one warm-up call each, then ``repeats`` rounds of one call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{f"{k}_cpu": statistics.median(v) for k, v in cpu.items()}}  # fmt: skip


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
    write_result(out, args.json, echo=False)
    print("| model | deepslim MACs | fvcore MACs | deepslim s (CPU s) | deepslim (meta) s (CPU s) | fvcore s (CPU s) "
          "| fvcore / deepslim time | eager forward s (CPU s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = {k: f"{r[k]:.3f} ({r[k + '_cpu']:.3f})" for k in ("deepslim_s", "deepslim_meta_s", "fvcore_s",
                                                               "eager_forward_s")}  # fmt: skip
        print(f"| {r['model']} | {r['deepslim_macs']:,} | {r['fvcore_macs']:,} | {t['deepslim_s']} | "
              f"{t['deepslim_meta_s']} | {t['fvcore_s']} | {r['fvcore_s'] / r['deepslim_s']:.2f} | "
              f"{t['eager_forward_s']} |")  # fmt: skip

if __name__ == "__main__":
    main()
