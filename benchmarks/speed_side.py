"""The speed side of issue 14 alone, session 11: ResNet-18 224² (random weights), uniform 0.5 + int8 against a
latency-aware policy at the same MACs, steered and judged by measured latency: ``python benchmarks/speed_side.py``.

The latency-aware policy is steered by measured end-to-end latency instead of a table
(:func:`deepslim.search.speed_moves.speed_moves`), or given (``--policy``); each candidate is a file cut from the
dense int8 export in well under a second (:mod:`deepslim.search.int8_slices`) instead of a whole export, timed by the
calling thread's CPU time (``_cpu_timer.py``: on the loaded machine the wall-clock minimum of identical files moved
by up to 3x). The final comparison times the toolkit's own exports of dense fp32, uniform (twice: the noise band) and
the latency-aware policy, interleaved, wall clock and CPU time side by side.

Session 12: ``--profile`` steers each round by ONNX Runtime's per-node profile of the current policy's cut file
(each group's ms per MAC, :meth:`deepslim.search.int8_slices.Int8Slicer.group_profile`) instead of by probes, with
exchanges that move several of the costliest groups down at once (``SpeedMovesConfig.multi``, ``shares``, ``reach``).
Session 16: a stage's groups down together (``window``), confirmation by a median of fresh timings (``confirms``), the
whole path timed again at the end (``polish``): session 16's runs gave ``--profile 20 --config '{"multi": 4, "shares":
[0.05, 0.1, 0.2, 0.3], "candidates": 8, "patience": 2, "window": 8, "confirms": 3, "polish": 3}'``, which are now
``SpeedMovesConfig()``'s defaults (``--config '{}'`` runs them).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _search_speed import quantize_speed
from deepslim.search import SearchSpace
from deepslim.search.latency import layer_keys
from deepslim.search.space import Policy, prune_policy


def fine_space(space: SearchSpace) -> SearchSpace:
    """``space`` with every multiple of ``space.round_to`` (16 channels here: the runtime's block) up to each group's
    width as an option (the space's own grid holds only its keep ratios: 128-channel steps on a 512-wide group)."""
    step = space.round_to
    groups = tuple(replace(g, keep=tuple(range(step, g.width + 1, step))) for g in space.groups)
    return replace(space, groups=groups)


def time_cpu(files: list[tuple[str, list[int]]], repeats: int, rounds: int, block: int = 2,
             copies: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    """``repeats`` interleaved runs of ``files`` (each a process of ``_cpu_timer.py``; the sessions created in
    reverse order every other run): each run's statistics (wall and thread CPU time)."""
    import subprocess
    import sys

    script = str(Path(__file__).with_name("_cpu_timer.py"))
    out = []
    for r in range(repeats):
        order = list(range(len(files)))[:: -1 if r % 2 else 1]
        cmd = json.dumps({"files": files, "rounds": rounds, "block": block, "order": order, "copies": copies})
        proc = subprocess.run([sys.executable, script], input=cmd, capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        out.append(json.loads(proc.stdout))
    return out


def paired_ratios(runs: list[dict[str, Any]]) -> list[float]:
    """Each file's CPU time over the first file's: the median over every round of every run of the ratio of the
    two files' fastest runs in that round (paired in time, so drift of the machine cancels)."""
    import statistics

    n = len(runs[0]["cpu_rounds_ms"])
    return [statistics.median(a / b for run in runs for a, b in zip(run["cpu_rounds_ms"][i], run["cpu_rounds_ms"][0],
                                                                   strict=True)) for i in range(n)]  # fmt: skip


class SlicedTimer:
    """Policies timed as files cut from the dense int8 export (:mod:`deepslim.search.int8_slices`), by thread CPU
    time (:func:`time_cpu`, :func:`paired_ratios`): each policy's time is its paired ratio to the first policy times
    the first's median CPU time."""

    def __init__(self, slicer: Any, work: Path, shape: list[int], *, rounds: int, block: int, repeats: int,
                 copies: int) -> None:  # fmt: skip
        self.slicer, self.work, self.shape = slicer, work, shape
        self.rounds, self.block, self.repeats, self.copies = rounds, block, repeats, copies
        self.files: dict[str, str] = {}
        self.cpu_s = 0.0
        self.batches = 0

    def file(self, policy: Policy) -> str:
        key = str(sorted(policy.params().items()))
        if key not in self.files:
            path = self.work / f"p{len(self.files)}.onnx"
            self.slicer.write(policy, path, floats=[n for n, q in policy.int8.items() if not q])
            self.files[key] = str(path)
        return self.files[key]

    def __call__(self, policies: Any) -> list[float]:
        import os
        import statistics

        files = [(self.file(p), self.shape) for p in policies]
        c0 = os.times()
        runs = time_cpu(files, self.repeats, self.rounds, self.block, self.copies)
        c1 = os.times()
        self.cpu_s += (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
        self.batches += 1
        first = statistics.median(r["cpu_median_ms"][0] for r in runs)
        return [first * r for r in paired_ratios(runs)]


class SlicedProfiler:
    """Each group's ms per MAC at a policy, from ONNX Runtime's per-node profile of the policy's cut file."""

    def __init__(self, slicer: Any, keys: Any, work: Path, shape: list[int], runs: int) -> None:
        self.slicer, self.keys, self.work, self.shape, self.runs = slicer, keys, work, tuple(shape), runs
        self.profiles: list[dict[str, float]] = []

    def __call__(self, policy: Policy) -> dict[str, float]:
        path = self.work / f"profile{len(self.profiles)}.onnx"
        found = self.slicer.group_profile(policy, path, self.keys, input_shape=self.shape, runs=self.runs)
        self.profiles.append(found)
        return found


def speed_measured(*, rounds: int = 20, interleaves: int = 6, probe_rounds: int = 12, repeats: int = 3, copies: int = 2,
                   config: Any = None, work: Path = Path("/tmp/p11/files"),
                   policy: dict[str, int] | None = None, steer: bool = False,
                   profile_runs: int = 0) -> dict[str, Any]:  # fmt: skip
    """ResNet-18 224² (random weights): uniform 0.5 + int8 vs the policy of measured moves at the same MACs
    (:func:`deepslim.search.speed_moves.speed_moves` on files cut from the dense int8 export), then dense fp32,
    uniform (twice: two identical files give the noise band) and the moved policy exported by the toolkit and timed
    interleaved ``interleaves`` times. ``policy``: channel counts (per group; the rest as uniform) to compare instead
    of steering, or with ``steer`` to steer from. ``profile_runs``: steer by the group profile of each policy (that
    many profiled runs), not by probes."""
    from deepslim.export import export_onnx
    from deepslim.search.int8_slices import Int8Slicer, group_layers, int8_layer_keys, policy_macs
    from deepslim.search.speed_moves import SpeedMoves, speed_moves

    torch.manual_seed(0)
    model = ds.load_model("resnet18").eval()
    x = torch.randn(1, 3, 224, 224)
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.randn(8, 3, 224, 224, generator=gen),) for _ in range(2)]
    space = fine_space(SearchSpace.from_model(model, x, round_to=16))
    uniform = space.uniform(0.5, True)
    work.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    dense_int8 = quantize_speed(copy.deepcopy(model), space, space.uniform(1.0, True), calib)
    export_onnx(dense_int8, work / "dense_int8.onnx", example_input=x)
    slicer = Int8Slicer(work / "dense_int8.onnx", dense_int8, space)
    keys, groups = int8_layer_keys(model, x, space), group_layers(space)
    timer = SlicedTimer(slicer, work, list(x.shape), rounds=probe_rounds, block=2, repeats=repeats, copies=copies)
    profiler = SlicedProfiler(slicer, keys, work, list(x.shape), profile_runs) if profile_runs else None
    setup_s = time.perf_counter() - t0
    limit = policy_macs(keys, groups, uniform)
    start = uniform if policy is None else replace(uniform, keep={**uniform.keep, **policy})
    if policy is None or steer:  # moves from uniform, or from the given policy, at no more MACs than uniform
        moved = speed_moves(space, start, macs=lambda p: policy_macs(keys, groups, p), time=timer, config=config,
                            limit=limit, profile=profiler)  # fmt: skip
    else:  # a policy chosen elsewhere (measured candidates): only the final comparison
        moved = SpeedMoves(start, policy_macs(keys, groups, start), limit, ({"move": "given", "keep": policy},), 0)
    search_s, search_cpu_s = time.perf_counter() - t0, time.process_time() - c0 + timer.cpu_s
    (work / "moves.json").write_text(json.dumps(moved.to_dict(), indent=1))  # kept should the comparison fail
    rows, files = {}, []
    for i, (label, final) in enumerate((("dense fp32", space.dense()), ("uniform 0.5 + int8", uniform),
                                        ("uniform 0.5 + int8 (again)", uniform),
                                        ("latency-aware (measured moves)", moved.policy))):  # fmt: skip
        net = prune_policy(model, space, final, example_input=x)
        found = list(layer_keys(net, x, final.int8).values())
        qnet = quantize_speed(copy.deepcopy(net), space, final, calib)
        rows[label] = {"policy": final.to_dict(), "macs": sum(k.macs for k in found),
                       "macs_from_keys": policy_macs(keys, groups, final),
                       "int8_layers": sum(final.int8.values())}  # fmt: skip
        export_onnx(qnet, work / f"final{i}.onnx", example_input=x)  # the toolkit's export, as deepslim ships it
        files.append((str(work / f"final{i}.onnx"), list(x.shape)))
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    t1 = time.perf_counter()
    runs = time_cpu(files, interleaves, rounds, 2, copies)
    loads.append(Path("/proc/loadavg").read_text().split()[0])
    for i, row in enumerate(rows.values()):
        row["wall_min_ms"] = [r["min_ms"][i] for r in runs]
        row["cpu_median_ms"] = [r["cpu_median_ms"][i] for r in runs]
        row["x_fp32_wall_min"] = [r["min_ms"][0] / r["min_ms"][i] for r in runs]
        row["x_fp32_cpu_paired"] = [1 / paired_ratios([r])[i] for r in runs]
    for label, k in (("uniform 0.5 + int8 (again)", 2), ("latency-aware (measured moves)", 3)):
        rows[label]["vs_uniform_wall_min"] = [r["min_ms"][1] / r["min_ms"][k] for r in runs]
        rows[label]["vs_uniform_cpu_paired"] = [paired_ratios([r])[1] / paired_ratios([r])[k] for r in runs]
        rows[label]["vs_uniform_cpu_paired_all_runs"] = paired_ratios(runs)[1] / paired_ratios(runs)[k]
    return {"model": "resnet18 224x224, random weights", "groups": len(space.groups),
            "steer": "measured, profile-steered" if profiler else "measured, probes",
            "moves": moved.to_dict(), "sliced_files": len(timer.files), "timer_batches": timer.batches,
            "setup_s": setup_s, "search_s": search_s, "search_cpu_s": search_cpu_s,
            "measure_s": time.perf_counter() - t1, "rounds": rounds, "interleaves": interleaves,
            "loadavg_before_after_measure": loads, "rows": rows}  # fmt: skip


def side_by_side(files: dict[str, str], *, interleaves: int = 6, rounds: int = 20, copies: int = 2,
                 shape: tuple[int, ...] = (1, 3, 224, 224)) -> dict[str, Any]:  # fmt: skip
    """ONNX files (label -> path) timed side by side, interleaved (:func:`time_cpu`): each one's speed over the first
    file's, CPU time paired round by round (pooled over the runs and per run) and wall-clock minimum per run."""
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    runs = time_cpu([(f, list(shape)) for f in files.values()], interleaves, rounds, 2, copies)
    load.append(Path("/proc/loadavg").read_text().split()[:3])
    pooled, per_run = paired_ratios(runs), [paired_ratios([r]) for r in runs]
    labels = list(enumerate(files))
    return {"files": files, "loadavg_start_end": load, "interleaves": interleaves, "rounds": rounds,
            "x_first_cpu_pooled": {k: pooled[0] / pooled[i] for i, k in labels},
            "x_first_cpu_per_run": {k: [p[0] / p[i] for p in per_run] for i, k in labels},
            "x_first_wall_min_per_run": {k: [r["min_ms"][0] / r["min_ms"][i] for r in runs] for i, k in labels},
            "runs": runs}  # fmt: skip


def main() -> None:
    import argparse
    import logging

    from deepslim._io import atomic_path
    from deepslim.search.speed_moves import SpeedMovesConfig

    p = argparse.ArgumentParser(description="ResNet-18 224² speed side: measured moves vs uniform 0.5 + int8")
    p.add_argument("--json", required=True, help="where the result goes")
    p.add_argument("--rounds", type=int, default=20, help="timing rounds of the final comparison")
    p.add_argument("--interleaves", type=int, default=6, help="final runs (processes), session order alternating")
    p.add_argument("--probe-rounds", type=int, default=12, help="timing rounds of each steering run")
    p.add_argument("--repeats", type=int, default=3, help="steering runs (processes) per timing")
    p.add_argument("--copies", type=int, default=2, help="sessions per file in each timing process")
    p.add_argument("--config", default="{}", help="SpeedMovesConfig fields as JSON")
    p.add_argument("--work", default="/tmp/p11/files")
    p.add_argument("--policy", help="JSON {group: channels}: compare this policy, no steering")
    p.add_argument("--steer", action="store_true", help="with --policy: steer from it (MACs at most uniform's)")
    p.add_argument("--profile", type=int, default=0, metavar="RUNS",
                   help="steer by each policy's group profile (RUNS profiled runs), not by probes")
    p.add_argument("--compare", nargs="+", metavar="LABEL=FILE",
                   help="only time these ONNX files side by side (speed over the first), no steering")  # fmt: skip
    args = p.parse_args()
    if args.compare:
        pairs = [c.partition("=") for c in args.compare]
        found = side_by_side({label: path for label, _, path in pairs}, interleaves=args.interleaves,
                             rounds=args.rounds, copies=args.copies)  # fmt: skip
        with atomic_path(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(found, indent=1))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load = Path("/proc/loadavg").read_text().split()[:3]
    config = SpeedMovesConfig.from_dict(json.loads(args.config))
    out = speed_measured(rounds=args.rounds, interleaves=args.interleaves, probe_rounds=args.probe_rounds,
                         repeats=args.repeats, copies=args.copies, config=config, work=Path(args.work),
                         policy=json.loads(args.policy) if args.policy else None, steer=args.steer,
                         profile_runs=args.profile)  # fmt: skip
    out["loadavg_start_end"] = [load, Path("/proc/loadavg").read_text().split()[:3]]
    out["config"] = json.loads(args.config)
    with atomic_path(Path(args.json)) as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
