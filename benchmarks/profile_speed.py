"""How fast and how exact is deepslim's profiler, next to fvcore's FlopCountAnalysis, in the same run?

For each model (real fp32 weights on the CPU, batch 1): median wall time of 5 profiles after one warm-up, for
deepslim (real execution and on the meta device) and fvcore, and the MACs each reports. Usage:
    python benchmarks/profile_speed.py [--json OUT] [--models resnet50,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from datetime import date

import torch

import deepslim as ds

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "vgg16", "vit_b16", "bert_base"]


def _median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str) -> dict:
    from fvcore.nn import FlopCountAnalysis

    model = ds.create_model(name).eval()
    x = ds.example_input(name)
    with torch.device("meta"):
        meta_model, meta_x = ds.create_model(name), ds.example_input(name)
    ours = ds.profile(model, x)

    def fv():
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return analysis.total()

    fv_macs = fv()
    with torch.no_grad():
        eager_s = _median_seconds(lambda: model(x))
    return {
        "model": name,
        "deepslim_macs": ours.macs,
        "fvcore_macs": int(fv_macs),
        "deepslim_s": _median_seconds(lambda: ds.profile(model, x)),
        "deepslim_meta_s": _median_seconds(lambda: ds.profile(meta_model, meta_x)),
        "fvcore_s": _median_seconds(fv),
        "eager_forward_s": eager_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    rows = [measure(n) for n in args.models.split(",")]
    print("| model | deepslim MACs | fvcore MACs | deepslim s | deepslim (meta) s | fvcore s | fvcore / deepslim time "
          "| eager forward s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['deepslim_macs']:,} | {r['fvcore_macs']:,} | {r['deepslim_s']:.3f} | "
              f"{r['deepslim_meta_s']:.3f} | {r['fvcore_s']:.3f} | {r['fvcore_s'] / r['deepslim_s']:.2f} | "
              f"{r['eager_forward_s']:.3f} |")  # fmt: skip
    if args.json:
        meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                "cpus": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
