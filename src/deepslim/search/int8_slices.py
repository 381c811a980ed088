"""A policy's integer ONNX file cut out of the dense model's, in milliseconds instead of a whole export.

Why: steering a latency-aware policy by measured end-to-end latency needs one file per candidate policy, and the
toolkit's integer export (:func:`deepslim.export.export_onnx`: trace, QDQ rewrite, parity check) took ~10 s per
ResNet-18 file at 224² on a quiet core here (session 6: 3 candidates and the group analysis in 45 s; at load 9 a
single-group step round of 24 exports did not finish in 7 minutes). Speed does not depend on which channels are kept
or on the weights' values, only on the graph and its shapes; so the dense model is quantized and exported once, and
a policy's file keeps the first ``k`` channels of each group: each weight's int8 codes, its per-channel scales and
zero points and the int32 bias cut along the group's axis — the same nodes, the same quantizers, the policy's
shapes. Which layers' outputs and inputs a group sets is read from the dependency graph's description of the group
(``"conv1 out ⇒ bn1 ⇒ conv2 in (64 channels)"``). A layer the policy keeps float can be written with its weights
dequantized and its input read before its quantize-dequantize pair (``floats``), as the toolkit's mixed export
drops that layer's input quantizer: ONNX Runtime then runs that convolution in float (with the weights alone
dequantized it fused them back into an integer convolution — session 16). Where that pair had absorbed the ReLU
after the layer before (see :func:`_rectify`) the float layer reads that layer's output through a Relu, and the pair
nothing reads any more is dropped; a pair another node reads too (a residual addition's input) stays the layer's
input, as in the toolkit's export (ONNX Runtime then quantizes the float weight itself, per tensor, into a
QLinearConv: in both files such a "float" layer runs in int8 — ResNet-18's layer3.1.conv1 at uniform 0.5, session
16: 0.069-0.075 ms against 0.098-0.101 ms as the per-channel int8 node, profiled). ONNX Runtime's optimized
graph of such a probe then has the op counts of the toolkit's export of the same policy
(``tests/search/test_int8_slices.py``: fused activations included) — the weights are the int8 codes dequantized,
so the numbers only approximate the float layer's.

The files are for timing: the activations' quantization parameters are the dense model's, so the outputs are not
the pruned model's (use ``prune_`` and ``export_onnx`` for a model to ship). The toolkit's export of the same policy
has the same nodes and shapes (``tests/search/test_int8_slices.py`` checks them), and ONNX Runtime's optimized graphs
of the two are node for node the same (QLinearConv, QLinearAdd, …; only the flatten's ``allowzero`` differs): timed
side by side in one process, ResNet-18's cut and toolkit files of the same policy ran within 0.6 % of each other
(session 12; the activations' scales and zero points, which differ, do not change the integer kernels' work).

:meth:`Int8Slicer.group_profile` profiles a policy's file (ONNX Runtime's per-node times) and gives each group's
time per MAC over the layers it sets, the steering signal of :func:`deepslim.search.speed_moves.speed_moves`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepslim._io import atomic_path
from deepslim.errors import ConfigError, ExportError, UnsupportedModelError
from deepslim.search.latency import LayerKey, layer_keys
from deepslim.search.space import Policy, SearchSpace

WEIGHTED = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class GroupLayers:
    """The layers whose output channels (``outs``) and input channels (``ins``) one channel group sets."""

    outs: frozenset[str]
    ins: frozenset[str]


def group_layers(space: SearchSpace) -> dict[str, GroupLayers]:
    """Per group of ``space``, its layers, read from the group's description (``"a out ⇒ bn ⇒ b in (64 channels)"``);
    an UnsupportedModelError for a depthwise group (its convolutions' ``group`` attribute would change too)."""
    found = {}
    for g in space.groups:
        parts = g.description.rpartition(" (")[0].split(" ⇒ ")
        if any(p.endswith(" (depthwise)") for p in parts):
            raise UnsupportedModelError(f"group {g.name} passes a depthwise convolution: int8 slices cover plain "
                                        f"and residual groups only (export each policy with export_onnx)")  # fmt: skip
        outs = frozenset(p[: -len(" out")] for p in parts if p.endswith(" out"))
        ins = frozenset(p[: -len(" in")] for p in parts if p.endswith(" in"))
        if not outs:
            raise ConfigError(f"group {g.name}'s description names no producing layer: {g.description!r}")
        found[g.name] = GroupLayers(outs, ins)
    return found


def policy_layer_keys(keys: Mapping[str, LayerKey], groups: Mapping[str, GroupLayers],
                      policy: Policy) -> dict[str, LayerKey]:  # fmt: skip
    """The dense model's layer keys (:func:`deepslim.search.latency.layer_keys`) with ``policy``'s channel counts
    and precisions, without pruning anything: a policy's MACs in microseconds."""
    out = {}
    for name, key in keys.items():
        cout = key.out_channels
        cin = key.in_shape[-1] if key.kind == "linear" else key.in_shape[1]
        for g, layers in groups.items():
            cout = policy.keep[g] if name in layers.outs else cout
            cin = policy.keep[g] if name in layers.ins else cin
        shape = (*key.in_shape[:-1], cin) if key.kind == "linear" else (key.in_shape[0], cin, *key.in_shape[2:])
        out[name] = replace(key, in_shape=shape, out_channels=cout, int8=bool(policy.int8.get(name, False)))
    return out


def policy_macs(keys: Mapping[str, LayerKey], groups: Mapping[str, GroupLayers], policy: Policy) -> int:
    """``policy``'s multiply-accumulates (convolutions and linear layers) from the dense model's layer keys."""
    return sum(k.macs for k in policy_layer_keys(keys, groups, policy).values())


@dataclass(frozen=True)
class _Weighted:
    node: int  # index of the Conv/Gemm/MatMul node
    weight: tuple[str, str, str]  # (int8 codes, scale, zero point) initializers of its weight's DequantizeLinear
    dq: int  # index of that DequantizeLinear node
    out_axis: int
    bias: tuple[str, ...]  # (int32 codes, scale, zero point) of a quantized bias, or (float bias,), or ()


class Int8Slicer:
    """Writes a policy's timing file from the dense model's integer ONNX file (see the module docstring).

    ``dense_file``: :func:`deepslim.export.export_onnx` of ``quantized``, the dense model with every layer of
    ``space.int8_layers`` quantized (``quantize_``), whose layers are found in the file by their int8 codes."""

    def __init__(self, dense_file: str | Path, quantized: nn.Module, space: SearchSpace) -> None:
        import onnx

        from deepslim.export.qdq import quantized_layers

        self.space, self.groups = space, group_layers(space)
        self.model = onnx.load(str(dense_file))
        codes = {n: lq.codes.detach().numpy().astype(np.int8) for n, lq in quantized_layers(quantized).items()}
        self.layers = _find_layers(self.model, codes)
        missing = sorted({n for g in self.groups.values() for n in g.outs | g.ins} - set(self.layers))
        if missing:
            raise ExportError(f"layer {missing[0]} is not an int8 layer of the dense file: quantize every layer of "
                              f"the space before exporting the dense model")  # fmt: skip

    def write(self, policy: Policy, path: str | Path, *, floats: Iterable[str] = ()) -> Path:
        """``policy``'s channel counts cut out of the dense file, written atomically at ``path``; ``floats``: layers
        written with dequantized float weights (a precision probe)."""
        import onnx
        from onnx import numpy_helper

        floats = set(floats)
        bad = [g for g in self.groups if g not in policy.keep] + sorted(floats - set(self.layers))
        if bad:
            raise ConfigError(f"{bad[0]!r} is not chosen by the policy / not an int8 layer of the dense file")
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        del model.graph.value_info[:]  # shapes change: ONNX Runtime infers them again
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for name, w in self.layers.items():
            cout, cin = self._counts(name, policy)
            codes = arrays[w.weight[0]]
            in_axis = 1 if w.out_axis == 0 else 0
            arrays[w.weight[0]] = np.take(np.take(codes, range(cout), w.out_axis), range(cin), in_axis)
            for t in (*w.weight[1:], *w.bias):
                if arrays[t].ndim == 1 and arrays[t].shape[0] == codes.shape[w.out_axis]:
                    arrays[t] = arrays[t][:cout]
            if name in floats:
                _dequantize(model, w, arrays)
        _rectify(model.graph, sorted(self.layers[n].node for n in floats), arrays)
        _drop_unused(model.graph)
        _flatten_any_width(model.graph, arrays)
        keep = {i for n in model.graph.node for i in n.input}
        del model.graph.initializer[:]
        model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items() if n in keep)
        dest = Path(path)
        with atomic_path(dest) as tmp:
            onnx.save(model, str(tmp))
        return dest

    def node_names(self) -> dict[str, str]:
        """Each int8 layer's weighted node (its name in the dense file, which the policy files keep)."""
        return {name: self.model.graph.node[w.node].name for name, w in self.layers.items()}

    def group_profile(self, policy: Policy, path: str | Path, keys: Mapping[str, LayerKey], *,
                      input_shape: tuple[int, ...], runs: int = 20) -> dict[str, float]:  # fmt: skip
        """``policy``'s file written at ``path`` and profiled in ONNX Runtime (one thread, the median of ``runs``
        runs per node): each group's ms per MAC (:func:`group_time_per_mac`; ``keys``: :func:`int8_layer_keys`)."""
        from deepslim.analysis.onnx_profile import time_onnx

        self.write(policy, path, floats=[n for n, q in policy.int8.items() if not q])
        nodes = time_onnx(path, input_shape=tuple(input_shape), runs=runs, warmup=3).nodes
        layer_ms = layer_times([(n.name, n.time_us / 1e3) for n in nodes], self.node_names())
        return group_time_per_mac(layer_ms, keys, self.groups, policy)

    def _counts(self, name: str, policy: Policy) -> tuple[int, int]:
        w = self.layers[name]
        init = {t.name: tuple(t.dims) for t in self.model.graph.initializer}
        shape = init[w.weight[0]]
        cout, cin = shape[w.out_axis], shape[1 if w.out_axis == 0 else 0]
        for g, layers in self.groups.items():
            cout = policy.keep[g] if name in layers.outs else cout
            cin = policy.keep[g] if name in layers.ins else cin
        return cout, cin


def layer_times(node_ms: Iterable[tuple[str, float]], nodes: Mapping[str, str]) -> dict[str, float]:
    """Per layer, the ms of the executed nodes that stand for its node (``nodes``: layer -> node name): ONNX
    Runtime names a fused node after the one it replaces (``node_Conv_48`` runs as ``node_Conv_48_token_1``), so
    a node counts for the layer whose node name is its own or the longest prefix of it followed by ``_``."""
    by_node = {node: layer for layer, node in nodes.items()}
    out: dict[str, float] = {}
    for name, ms in node_ms:
        hits = [n for n in by_node if name == n or name.startswith(n + "_")]
        if hits:
            layer = by_node[max(hits, key=len)]
            out[layer] = out.get(layer, 0.0) + ms
    return out


def group_time_per_mac(layer_ms: Mapping[str, float], keys: Mapping[str, LayerKey], groups: Mapping[str, GroupLayers],
                       policy: Policy) -> dict[str, float]:  # fmt: skip
    """Per group, the measured ms per MAC of the layers it sets (output and input channels) at ``policy``: a
    layer's time grows with both its channel counts, so one step of a group changes each of its layers' MACs and
    (in proportion) time by the same share, and the group's marginal time per MAC is its layers' time over their
    MACs. ``keys``: the dense model's (:func:`int8_layer_keys`); layers without a time count as none."""
    at = policy_layer_keys(keys, groups, policy)
    out = {}
    for g, layers in groups.items():
        names = sorted((layers.outs | layers.ins) & set(layer_ms))
        macs = sum(at[n].macs for n in names)
        out[g] = sum(layer_ms[n] for n in names) / macs if macs else 0.0
    return out


def _find_layers(model: Any, codes: Mapping[str, np.ndarray]) -> dict[str, _Weighted]:
    """Each quantized layer's weighted node in the file, found by its int8 codes (as stored or transposed)."""
    from onnx import numpy_helper

    graph = model.graph
    arrays = {t.name: t for t in graph.initializer}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    by_value: dict[tuple[tuple[int, ...], bytes], list[tuple[str, int]]] = {}
    for name, c in codes.items():
        by_value.setdefault((c.shape, c.tobytes()), []).append((name, 0))
        if c.ndim == 2:
            by_value.setdefault((c.T.shape, np.ascontiguousarray(c.T).tobytes()), []).append((name, 1))
    found = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in producer:
            continue
        dq = producer[node.input[1]]
        src = graph.node[dq]
        if src.op_type != "DequantizeLinear" or src.input[0] not in arrays:
            continue
        hits = by_value.get(_value_key(numpy_helper.to_array(arrays[src.input[0]])))
        if not hits:
            continue
        if len({n for n, _ in hits}) > 1:
            raise ExportError(f"layers {hits[0][0]} and {hits[1][0]} have identical int8 weight codes, so their nodes "
                              f"in the dense file cannot be told apart (layers are found by their codes): make their "
                              f"weights differ, e.g. retrain or re-initialize one")  # fmt: skip
        hit = hits[-1]  # a symmetric matrix matches both ways: transposed, as before
        bias: tuple[str, ...] = ()
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            bias = tuple(graph.node[producer[b]].input) if b in producer else (b,)
        found[hit[0]] = _Weighted(i, (src.input[0], src.input[1], src.input[2]), dq, hit[1], bias)
    return found


def _value_key(a: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return tuple(a.shape), np.ascontiguousarray(a.astype(np.int8)).tobytes()


def _dequantize(model: Any, w: _Weighted, arrays: dict[str, np.ndarray]) -> None:
    """The layer's weight (and bias) as float initializers in place of their DequantizeLinear nodes."""
    node = model.graph.node[w.node]
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer.get(node.input[0])
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    shared = dq is not None and any(dq.output[0] in n.input for k, n in enumerate(model.graph.node) if k != w.node)
    if q is not None and q.op_type == "QuantizeLinear" and not shared:
        # the float input, not its quantize-dequantize pair: ONNX Runtime would fuse the pair, the float weight and
        # the next quantizer back into an integer convolution (session 16: the probe ran in int8); the toolkit's
        # mixed export drops the layer's input quantizer too. A pair another node reads (a residual addition's
        # input) is a quantization point of the toolkit's export as well, and its float layer reads it there
        node.input[0] = q.input[0]
    codes, scale, zero = (arrays[t] for t in w.weight)
    shape = [1] * codes.ndim
    shape[w.out_axis] = -1
    wname = f"{w.weight[0]}__float"
    arrays[wname] = ((codes.astype(np.float32) - zero.astype(np.float32).reshape(shape))
                     * scale.astype(np.float32).reshape(shape))  # fmt: skip
    model.graph.initializer.add(name=wname)  # registers the name; the array is written with the others
    node.input[1] = wname
    if len(w.bias) == 3:
        bq, bs, bz = (arrays[t] for t in w.bias)
        bname = f"{w.bias[0]}__float"
        arrays[bname] = ((bq.astype(np.float32) - bz.astype(np.float32)) * bs.astype(np.float32)).astype(np.float32)
        model.graph.initializer.add(name=bname)
        node.input[2] = bname


def _flatten_any_width(graph: Any, arrays: dict[str, np.ndarray]) -> None:
    """A ``Reshape`` to ``[-1, K]`` (a flatten after global pooling: the exporter writes the dense width ``K``) as
    ``[0, -1]`` (``allowzero`` off): the same flatten at any width."""
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in arrays:
            shape = arrays[node.input[1]]
            if shape.shape == (2,) and shape[0] == -1 and shape[1] > 0:
                arrays[node.input[1]] = np.array([0, -1], dtype=shape.dtype)
                for a in node.attribute:
                    if a.name == "allowzero":
                        a.i = 0  # 0 copies the input's batch dimension


def _rectify(graph: Any, nodes: list[int], arrays: Mapping[str, np.ndarray]) -> None:
    """A float probe's layer (a node at an index of ``nodes``, reading past its input's quantize-dequantize pair)
    reads the ReLU of a weighted layer's output where the pair it bypasses had absorbed that ReLU. The integer
    export folds a ReLU after a layer into the layer's output quantizer (:mod:`deepslim.export.qdq`: a ReLU
    between two identical quantizers of zero point 0 is dropped), so the int8 file's ``Conv → QuantizeLinear``
    with an unsigned zero point 0 clips at 0 where the float model had ``Conv → Relu``; the toolkit's mixed export
    keeps that ReLU before the float layer (ONNX Runtime fuses it: FusedConv(activation=Relu)). The pair's input
    produced by anything else (a reshape, a pooling, an addition with its own quantizer) is read as it is. The one
    case this reads differently from the toolkit: a layer with no ReLU after it whose calibrated output had no
    negative value (zero point 0 too) — the probe then adds a fused ReLU the toolkit's export does not have."""
    from onnx import helper

    producer = {o: n for n in graph.node for o in n.output}
    made: dict[str, Any] = {}  # the rectified tensor's source -> its Relu node
    for node in (graph.node[i] for i in nodes):
        src = producer.get(node.input[0])
        if src is None or src.op_type not in WEIGHTED:
            continue
        zeros = [arrays.get(q.input[2]) if len(q.input) > 2 else None for q in graph.node
                 if q.op_type == "QuantizeLinear" and q.input[0] == node.input[0]]  # fmt: skip
        if not any(z is not None and z.dtype == np.uint8 and not z.any() for z in zeros):
            continue
        if node.input[0] not in made:
            made[node.input[0]] = helper.make_node("Relu", [node.input[0]], [f"{node.input[0]}__relu"],
                                                   name=f"{src.name}__relu")  # fmt: skip
        node.input[0] = made[node.input[0]].output[0]
    if made:  # each Relu right after its source's node: the graph stays in topological order
        order = []
        for n in graph.node:
            order.append(n)
            order.extend(made[o] for o in n.output if o in made)
        copies = [type(n)() for n in order]
        for c, n in zip(copies, order, strict=True):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)


def _drop_unused(graph: Any) -> None:
    """Remove nodes none of whose outputs is read, until none is left (a float probe's weight dequantization, and
    the quantize-dequantize pair its input no longer passes: ONNX Runtime keeps and runs a pair nothing reads)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def int8_layer_keys(model: nn.Module, example_input: Any, space: SearchSpace) -> dict[str, LayerKey]:
    """The dense model's layer keys with every int8 layer of ``space`` int8 (the start of :func:`policy_macs`)."""
    return layer_keys(model, example_input, dict.fromkeys(space.int8_layers, True))
