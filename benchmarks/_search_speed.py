"""The speed side of issue 14 alone: at the same MACs as uniform pruning + int8, a latency-aware policy.

ResNet-18 at 224², random weights (speed does not depend on them; accuracy is not judged here). The baseline keeps
half of every channel group (every count a multiple of 16, this CPU's NCHWc block) with every layer int8. The
latency-aware policy starts there and moves channels between groups — one group one step up the 16-channel grid,
another one step down — when the per-layer latency table predicts a faster model at no more MACs, then keeps float
the layers the table predicts faster in float. Dense fp32, the uniform policy and the latency-aware policy are then
exported and timed end to end in one interleaved run (``LatencyTable.measure``), which decides.

Session 11: ``steer="measured"`` steers by measured end-to-end latency instead (``benchmarks/speed_side.py``).
"""

from __future__ import annotations

import copy
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
        from speed_side import speed_measured

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
