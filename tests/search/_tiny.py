"""A tiny convolutional net trained on digits, and a fake deterministic latency table, for the search tests."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import nn

import deepslim as ds
from deepslim.search.latency import LatencyTable, LayerKey
from deepslim.search.space import SearchSpace


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )


@functools.cache
def digits():
    return ds.load_data("digits", seed=0, calib_size=128)


@functools.cache
def _trained_state():
    net = tiny_net()
    ds.fit(net, digits(), epochs=1, lr=1e-2, seed=0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def trained_net() -> nn.Module:
    net = tiny_net()
    net.load_state_dict(_trained_state())
    return net.eval()


def fake_ms(key: LayerKey) -> float:
    """Deterministic: 1 ms per million MACs, int8 at 0.4x, channel counts off the 4-block at 1.5x; a float<->int8
    conversion pair 2 ms per million elements."""
    if key.kind == "qdq":
        return 2e-6 * math.prod(key.in_shape)
    ms = key.macs / 1e6 * (0.4 if key.int8 else 1.0)
    return ms * (1.5 if key.out_channels % 4 else 1.0)


def fake_table() -> LatencyTable:
    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])


FAST = {"finetune_epochs": 0, "top_k": 1, "uniform_ratios": (1.0, 0.5)}  # search() settings of the tiny tests


def exhaustive_optimum(net: nn.Module, data, space: SearchSpace, ratio: float):
    """The oracle of the exhaustive-search tests: every policy of ``space`` judged alike (the fake table, no
    recovery), the latency limit ``ratio`` x dense, the policies within it, and the most accurate of those (fewer ms
    on a tie). Returns (limit, judged, feasible, expected)."""
    from deepslim.search.evaluate import Evaluator

    ev = Evaluator(net, data, space, fake_table())
    limit = ratio * ev.evaluate(space.dense(), recovery="none").latency_ms
    judged = [ev.evaluate(p) for p in space.all_policies()]
    feasible = [c for c in judged if c.latency_ms <= limit]
    return limit, judged, feasible, min(feasible, key=lambda c: (-c.accuracy, c.latency_ms))


def small_space(net: nn.Module) -> SearchSpace:
    """Channel counts 4 or 8 in both groups and the second convolution int8 or float: 8 policies."""
    full = SearchSpace.from_model(net, digits().example_input, keep_ratios=(1.0, 0.5), round_to=2)
    return SearchSpace(groups=full.groups, int8_layers=("3",), round_to=2)


def fake_split(path, shape, work):
    """A deterministic node splitter: the exported graph's nodes as written (not optimized), each keyed by its
    operator and the shapes of its weights."""
    import onnx

    graph = onnx.load(str(path)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    return [{"key": f"{n.op_type}:{[dims[i] for i in n.input if i in dims]}", "op": n.op_type, "file": "", "feeds": ""}
            for n in graph.node]  # fmt: skip


def fake_node_ms(key: str) -> float:
    """1 µs per weight element and 10 µs per node: a quantized layer's extra Q/DQ nodes make it slower here, unlike
    in the layer table's fake (int8 at 0.4x), so the two frames disagree."""
    import json

    shapes = json.loads(key.partition(":")[2])
    return 0.01 + 1e-3 * sum(math.prod(s) for s in shapes)


def fake_node_timer(nodes, work):
    return [fake_node_ms(n["key"]) for n in nodes]


def fake_export(model, path, example_input):
    """A fast stand-in for the ONNX export (seconds per model): each weighted layer's type and weight shape, as JSON."""
    import json

    layers = [[type(m).__name__, list(m.weight.shape)] for m in model.modules()
              if isinstance(getattr(m, "weight", None), torch.Tensor) and type(m).__name__ != "BatchNorm2d"]
    path.write_text(json.dumps(layers))


def fake_split_layers(path, shape, work):
    """The splitter of :func:`fake_export`'s files: a quantized layer (QConv2d, QLinear) is three nodes, the layer and
    a quantize/dequantize pair around it."""
    import json

    nodes = []
    for kind, dims in json.loads(Path(path).read_text()):
        nodes.append({"key": f"{kind}:{[dims]}", "op": kind, "file": "", "feeds": ""})
        if kind.startswith("Q"):
            nodes += [{"key": f"QDQ{i}:[]", "op": "QDQ", "file": "", "feeds": ""} for i in range(2)]
    return nodes


def fake_nodes(table: LatencyTable, exported: bool = False):
    """A node table of fakes: the real ONNX export split by :func:`fake_split` (``exported``), or :func:`fake_export`
    split by :func:`fake_split_layers`; node times by :func:`fake_node_ms`."""
    from deepslim.search.node_table import NodeTable

    if exported:
        return NodeTable(table, splitter=fake_split, timer=fake_node_timer)
    return NodeTable(table, splitter=fake_split_layers, timer=fake_node_timer, exporter=fake_export)


def params_ms(pairs) -> list[float]:
    """A deterministic end-to-end timer: 1 µs per parameter."""
    return [sum(p.numel() for p in m.parameters()) / 1e3 for m, _ in pairs]
