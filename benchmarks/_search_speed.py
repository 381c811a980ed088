"""The speed side of issue 14 alone: at the same MACs as uniform pruning + int8, a latency-aware policy.

ResNet-18 at 224², random weights (speed does not depend on them; accuracy is not judged here). The baseline keeps
half of every channel group (every count a multiple of 16, this CPU's NCHWc block) with every layer int8. The
latency-aware policy starts there and moves channels between groups — one group one step up the 16-channel grid,
another one step down — when the per-layer latency table predicts a faster model at no more MACs, then keeps float
the layers the table predicts faster in float. Dense fp32, the uniform policy and the latency-aware policy are then
exported and timed end to end in one interleaved run (``LatencyTable.measure``), which decides.

Session 11 (:func:`speed_measured`, ``python benchmarks/_search_speed.py --json F``): the latency-aware policy is
steered by measured end-to-end latency instead of a table (:func:`deepslim.search.speed_moves.speed_moves`), each
candidate a file cut from the dense int8 export in well under a second (:mod:`deepslim.search.int8_slices`) instead
of a whole export, timed by the calling thread's CPU time (``_cpu_timer.py``: on the loaded machine the wall-clock
minimum of identical files moved by up to 3x). The final comparison times the toolkit's own exports of dense fp32,
uniform (twice: the noise band) and the latency-aware policy, interleaved, wall clock and CPU time side by side.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import deepslim as ds
from deepslim.search import LatencyTable, SearchSpace
from deepslim.search.latency import LayerKey, layer_keys
from deepslim.search.space import Policy, prune_policy


def group_layers(model: nn.Module, space: SearchSpace, x: torch.Tensor) -> dict[str, tuple[set[str], set[str]]]:
    """Per group: the layers whose output channels it sets and those whose input channels it sets — found by
    pruning that group alone one step and comparing layer shapes with the dense model's."""
    base = layer_keys(model, x, {})
    dense = space.dense()
    found = {}
    for g in space.groups:
        if len(g.keep) < 2:
            continue
        p = replace(dense, keep={**dense.keep, g.name: g.keep[-2]})
        keys = layer_keys(prune_policy(model, space, p, example_input=x), x, {})
        outs = {n for n in base if keys[n].out_channels != base[n].out_channels}
        ins = {n for n in base if keys[n].in_shape != base[n].in_shape}
        found[g.name] = (outs, ins)
    return found


def policy_keys(base: Mapping[str, LayerKey], groups: Mapping[str, tuple[set[str], set[str]]],
                policy: Policy) -> list[LayerKey]:  # fmt: skip
    """The layer keys of ``policy`` from the dense model's, without pruning anything (execution order kept)."""
    out: list[LayerKey] = []
    for name, key in base.items():
        cout, cin = key.out_channels, key.in_shape[1] if key.kind != "linear" else key.in_shape[-1]
        for g, (outs, ins) in groups.items():
            if name in outs:
                cout = policy.keep[g]
            if name in ins:
                cin = policy.keep[g]
        shape = (*key.in_shape[:-1], cin) if key.kind == "linear" else (key.in_shape[0], cin, *key.in_shape[2:])
        depthwise = key.kind != "linear" and key.groups > 1 and key.groups == key.in_shape[1]
        out.append(replace(key, in_shape=shape, out_channels=cout, groups=cin if depthwise else key.groups,
                           int8=bool(policy.int8.get(name, False))))  # fmt: skip
    return out


def latency_aware(model: nn.Module, space: SearchSpace, table: LatencyTable, x: torch.Tensor, start: Policy,
                  *, span: int = 2, max_moves: int = 12,
                  band: float = 0.05) -> tuple[Policy, list[dict[str, Any]]]:  # fmt: skip
    """From ``start``, moves of one group one step up and another one step down (within ``span`` steps of the
    start) that the table predicts faster with MACs within ``band`` below the start's; then float where the table
    predicts float faster; then the MACs left are spent one step at a time where they cost the least latency."""
    base = layer_keys(model, x, {})
    groups = group_layers(model, space, x)
    names = list(base)
    options = {g.name: list(g.keep) for g in space.groups if g.name in groups}
    lo = {g: max(0, o.index(start.keep[g]) - span) for g, o in options.items()}
    hi = {g: min(len(o) - 1, o.index(start.keep[g]) + span) for g, o in options.items()}

    def cost(p: Policy) -> tuple[float, int]:
        keys = policy_keys(base, groups, p)
        return table.predict_keys(keys), sum(k.macs for k in keys)

    policy, log = start, []
    ms, macs = cost(policy)
    limit = macs
    log.append({"move": "start", "predicted_ms": ms, "macs": macs})
    for _ in range(max_moves):
        cands = []
        for up in options:
            for down in options:
                i, j = options[up].index(policy.keep[up]), options[down].index(policy.keep[down])
                if up == down or i + 1 > hi[up] or j - 1 < lo[down]:
                    continue
                keep = {**policy.keep, up: options[up][i + 1], down: options[down][j - 1]}
                cands.append((replace(policy, keep=keep), f"{up}+ {down}-"))
        table.layer_ms([k for p, _ in cands for k in policy_keys(base, groups, p)])  # one batch of new entries
        scored = [(cost(p), p, move) for p, move in cands]
        ok = [(c, p, move) for c, p, move in scored if (1 - band) * limit <= c[1] <= limit and c[0] < ms]
        if not ok:
            break
        (ms, macs), policy, move = min(ok, key=lambda t: t[0][0])
        log.append({"move": move, "predicted_ms": ms, "macs": macs})
    table.layer_ms([replace(k, int8=False) for k in policy_keys(base, groups, policy)])  # one batch
    for name in names:  # precision: float where the table predicts it faster (conversions included)
        if name not in policy.int8 or not policy.int8[name]:
            continue
        trial = replace(policy, int8={**policy.int8, name: False})
        c = cost(trial)
        if c[0] < ms:
            policy, (ms, macs) = trial, c
            log.append({"move": f"{name} float", "predicted_ms": ms, "macs": macs})
    while True:  # spend the MACs left: the growth that costs the least predicted latency
        grown = [(replace(policy, keep={**policy.keep, g: o[o.index(policy.keep[g]) + 1]}), f"{g}+")
                 for g, o in options.items() if o.index(policy.keep[g]) + 1 <= hi[g]]  # fmt: skip
        table.layer_ms([k for p, _ in grown for k in policy_keys(base, groups, p)])  # one batch
        fits = [(cost(p), p, move) for p, move in grown]
        fits = [t for t in fits if t[0][1] <= limit]
        if not fits:
            return policy, log
        (ms, macs), policy, move = min(fits, key=lambda t: t[0][0])
        log.append({"move": move, "predicted_ms": ms, "macs": macs})


def quantize_speed(net: nn.Module, space: SearchSpace, policy: Policy, calib: Any) -> nn.Module:
    """``quantize_policy`` with the fidelity check accepted: with random weights the logits are near-flat, so top-1
    agreement between float and int8 says nothing (speed alone is compared here; a warning is logged)."""
    from deepslim.compress.quantize import quantize_

    _, quant = space.configs(policy)
    if quant is not None:
        quantize_(net, replace(quant, accept_low_fidelity=True), calib_data=calib)
    return net


class NodeCost:
    """A policy's predicted latency from the node table: the policy's model built (pruned, int8 layers quantized),
    exported, and the nodes of ONNX Runtime's optimized graph summed (:class:`deepslim.search.node_table.NodeTable`);
    cached per policy."""

    def __init__(self, model: nn.Module, space: SearchSpace, nodes: Any, x: torch.Tensor, calib: Any) -> None:
        self.model, self.space, self.nodes, self.x, self.calib = model, space, nodes, x, calib
        self.cache: dict[str, float] = {}
        self.exports = 0

    def __call__(self, p: Policy) -> float:
        key = str(sorted(p.params().items()))
        if key not in self.cache:
            net = prune_policy(self.model, self.space, p, example_input=self.x)
            net = quantize_speed(net, self.space, p, self.calib)
            self.cache[key] = self.nodes.raw_model(net, self.x)
            self.exports += 1
        return self.cache[key]


def latency_aware_nodes(model: nn.Module, space: SearchSpace, cost: NodeCost, x: torch.Tensor, start: Policy,
                        *, span: int = 2, max_moves: int = 6, band: float = 0.05,
                        verify: int = 3) -> tuple[Policy, list[dict[str, Any]]]:  # fmt: skip
    """From ``start``, steered by the node table: first the precision of the first and last layers (float where the
    node sum is lower), then moves of one group one step up the channel grid and another one step down, with MACs
    within ``band`` below the start's. Each round times every single-group step (2 × groups exports), ranks the
    pairs by the sum of their two steps' changes, and exports the ``verify`` best pairs to confirm one is faster."""
    base = layer_keys(model, x, {})
    groups = group_layers(model, space, x)
    options = {g.name: list(g.keep) for g in space.groups if g.name in groups}
    lo = {g: max(0, o.index(start.keep[g]) - span) for g, o in options.items()}
    hi = {g: min(len(o) - 1, o.index(start.keep[g]) + span) for g, o in options.items()}

    def macs(p: Policy) -> int:
        return sum(k.macs for k in policy_keys(base, groups, p))

    def step(p: Policy, g: str, d: int) -> Policy:
        return replace(p, keep={**p.keep, g: options[g][options[g].index(p.keep[g]) + d]})

    policy, limit = start, macs(start)
    ms = cost(policy)
    log: list[dict[str, Any]] = [{"move": "start", "node_ms": ms, "macs": limit}]
    names = list(base)
    for name in (names[0], names[-1]):
        if policy.int8.get(name):
            trial = replace(policy, int8={**policy.int8, name: False})
            c = cost(trial)
            log.append({"move": f"{name} float?", "node_ms": c, "kept": c < ms})
            if c < ms:
                policy, ms = trial, c
    for _ in range(max_moves):
        idx = {g: options[g].index(policy.keep[g]) for g in options}
        ups = {g: cost(step(policy, g, 1)) - ms for g in options if idx[g] + 1 <= hi[g]}
        downs = {g: cost(step(policy, g, -1)) - ms for g in options if idx[g] - 1 >= lo[g]}
        pairs = []
        for up, du in ups.items():
            for down, dd in downs.items():
                if up != down:
                    p = step(step(policy, up, 1), down, -1)
                    if (1 - band) * limit <= macs(p) <= limit and du + dd < 0:
                        pairs.append((du + dd, p, f"{up}+ {down}-"))
        best = None
        for est, p, move in sorted(pairs, key=lambda t: t[0])[:verify]:
            c = cost(p)
            if c < ms and (best is None or c < best[0]):
                best = (c, p, move, est)
        if best is None:
            break
        ms, policy = best[0], best[1]
        log.append({"move": best[2], "node_ms": ms, "estimated_change_ms": best[3], "macs": macs(policy),
                    "exports": cost.exports})  # fmt: skip
    return policy, log


def speed_only(table: LatencyTable, *, rounds: int = 20, span: int = 2, max_moves: int = 12, steer: str = "nodes",
               interleaves: int = 3) -> dict[str, Any]:  # fmt: skip
    """ResNet-18 224² (random weights): uniform 0.5 + int8 vs the latency-aware policy at the same MACs (within
    5 % below), steered by the node table (``steer="nodes"``) or the layer table (``"layers"``), timed interleaved
    with dense fp32 ``interleaves`` times; ``steer="measured"``: :func:`speed_measured` (moves timed end to end)."""
    from deepslim.search.node_table import NodeTable

    if steer == "measured":
        return speed_measured(rounds=rounds, interleaves=interleaves)

    torch.manual_seed(0)
    model = ds.load_model("resnet18").eval()
    x = torch.randn(1, 3, 224, 224)
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.randn(8, 3, 224, 224, generator=gen),) for _ in range(2)]
    space = SearchSpace.from_model(model, x, round_to=16)
    uniform = space.uniform(0.5, True)
    nodes = NodeTable(table)
    cost = NodeCost(model, space, nodes, x, calib)
    t0, c0 = time.perf_counter(), time.process_time()
    if steer == "nodes":
        aware, moves = latency_aware_nodes(model, space, cost, x, uniform, span=span, max_moves=max_moves)
    else:
        aware, moves = latency_aware(model, space, table, x, uniform, span=span, max_moves=max_moves)
    search_s, search_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    nets, rows = [], {}
    for label, policy in (("dense fp32", space.dense()), ("uniform 0.5 + int8", uniform),
                          ("latency-aware", aware)):  # fmt: skip
        net = prune_policy(model, space, policy, example_input=x)
        keys = list(layer_keys(net, x, policy.int8).values())
        qnet = quantize_speed(copy.deepcopy(net), space, policy, calib)
        rows[label] = {"policy": policy.to_dict(), "macs": sum(k.macs for k in keys),
                       "layer_table_ms": table.predict_keys(keys), "node_table_ms": nodes.raw_model(qnet, x),
                       "int8_layers": sum(policy.int8.values())}  # fmt: skip
        nets.append((qnet, x))
    t1 = time.perf_counter()
    runs, loads = [], []
    for _ in range(interleaves):  # interleaved runs: their spread is the noise band
        runs.append(_measure(table, nets, rounds))
        loads.append(Path("/proc/loadavg").read_text().split()[0])
    for i, row in enumerate(rows.values()):
        row["measured_ms"] = [r[i] for r in runs]
        row["speedup_vs_fp32"] = [r[0] / r[i] for r in runs]
    rows["latency-aware"]["vs_uniform"] = [r[1] / r[2] for r in runs]
    return {"model": "resnet18 224x224, random weights", "steer": steer, "groups": len(space.groups),
            "moves": moves, "search_s": search_s, "search_cpu_s": search_cpu_s, "node_exports": cost.exports,
            "measure_s": time.perf_counter() - t1, "rounds": rounds, "interleaves": interleaves,
            "loadavg_per_interleave": loads, "rows": rows}  # fmt: skip


def _measure(table: LatencyTable, pairs: list[tuple[nn.Module, torch.Tensor]], rounds: int) -> list[float]:
    from deepslim.search.latency import time_models

    return time_models(pairs, threads=table.threads, rounds=rounds, block=3)


# -- session 11: steered by measured end-to-end latency (files cut from the dense int8 export) ------------------------

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


def speed_measured(*, rounds: int = 20, interleaves: int = 6, probe_rounds: int = 12, repeats: int = 3, copies: int = 2,
                   config: Any = None, work: Path = Path("/tmp/p11/files"),
                   policy: dict[str, int] | None = None, steer: bool = False) -> dict[str, Any]:  # fmt: skip
    """ResNet-18 224² (random weights): uniform 0.5 + int8 vs the policy of measured moves at the same MACs
    (:func:`deepslim.search.speed_moves.speed_moves` on files cut from the dense int8 export), then dense fp32,
    uniform (twice: two identical files give the noise band) and the moved policy exported by the toolkit and timed
    interleaved ``interleaves`` times. ``policy``: channel counts (per group; the rest as uniform) to compare instead
    of steering, or with ``steer`` to steer from."""
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
    setup_s = time.perf_counter() - t0
    limit = policy_macs(keys, groups, uniform)
    start = uniform if policy is None else replace(uniform, keep={**uniform.keep, **policy})
    if policy is None or steer:  # moves from uniform, or from the given policy, at no more MACs than uniform
        moved = speed_moves(space, start, macs=lambda p: policy_macs(keys, groups, p), time=timer, config=config,
                            limit=limit)  # fmt: skip
    else:  # a policy chosen elsewhere (measured candidates): only the final comparison
        moved = SpeedMoves(start, policy_macs(keys, groups, start), limit, ({"move": "given", "keep": policy},), 0)
    search_s, search_cpu_s = time.perf_counter() - t0, time.process_time() - c0 + timer.cpu_s
    (work / "moves.json").write_text(json.dumps(moved.to_dict(), indent=1))  # kept should the comparison fail
    rows, files = {}, []
    for i, (label, policy) in enumerate((("dense fp32", space.dense()), ("uniform 0.5 + int8", uniform),
                                         ("uniform 0.5 + int8 (again)", uniform),
                                         ("latency-aware (measured moves)", moved.policy))):  # fmt: skip
        net = prune_policy(model, space, policy, example_input=x)
        found = list(layer_keys(net, x, policy.int8).values())
        qnet = quantize_speed(copy.deepcopy(net), space, policy, calib)
        rows[label] = {"policy": policy.to_dict(), "macs": sum(k.macs for k in found),
                       "macs_from_keys": policy_macs(keys, groups, policy),
                       "int8_layers": sum(policy.int8.values())}  # fmt: skip
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
    return {"model": "resnet18 224x224, random weights", "steer": "measured", "groups": len(space.groups),
            "moves": moved.to_dict(), "sliced_files": len(timer.files), "timer_batches": timer.batches,
            "setup_s": setup_s, "search_s": search_s, "search_cpu_s": search_cpu_s,
            "measure_s": time.perf_counter() - t1, "rounds": rounds, "interleaves": interleaves,
            "loadavg_before_after_measure": loads, "rows": rows}  # fmt: skip


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
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load = Path("/proc/loadavg").read_text().split()[:3]
    config = SpeedMovesConfig.from_dict(json.loads(args.config))
    out = speed_measured(rounds=args.rounds, interleaves=args.interleaves, probe_rounds=args.probe_rounds,
                         repeats=args.repeats, copies=args.copies, config=config, work=Path(args.work),
                         policy=json.loads(args.policy) if args.policy else None, steer=args.steer)  # fmt: skip
    out["loadavg_start_end"] = [load, Path("/proc/loadavg").read_text().split()[:3]]
    out["config"] = json.loads(args.config)
    with atomic_path(Path(args.json)) as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
