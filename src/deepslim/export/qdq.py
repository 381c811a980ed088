"""Integer ONNX export: a linearly quantized model as a QDQ graph that ONNX Runtime runs on integer kernels.

The formats are the ones ONNX Runtime's fast CPU paths take: unsigned 8-bit activations (asymmetric, per tensor)
and signed 8-bit weights (symmetric, per output channel), int32 biases at scale ``s_x · s_w``. ONNX Runtime fuses
``DequantizeLinear → Conv/Gemm/MatMul → QuantizeLinear`` into QLinearConv / QGemm / QLinearMatMul and
``DequantizeLinear → Add → QuantizeLinear`` into QLinearAdd. The graph quantizes exactly what deepslim's
fake-quantized PyTorch model quantizes, so the two compute the same thing:

- each quantized layer's input, with the layer's own parameters;
- the model's quantization points (residual additions, concatenations, layer outputs; see
  :mod:`deepslim.compress.quantize._points`), which the exporter writes as QuantizeLinear → DequantizeLinear pairs;
- a layer's output where it reaches one of those quantizers through ReLU, Clip, max pooling or reshapes only:
  quantizing before a ReLU or a max pool is the same as after, since both commute with a monotone quantizer that
  represents 0 exactly. A ReLU between two identical quantizers with zero point 0 is then dropped.

Layers are found by their weights' *values*, not names: the exporter may rename an initializer, store a ``Linear``
on 3-D inputs transposed for a MatMul, or fold a following batch norm into a convolution's weight under the same
name (the folded weight is the quantized one times a per-channel factor: the codes stay, the scales take the
factor). The weights are the model's own integer codes; nothing is re-quantized.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim.errors import ExportError

# ops a quantizer can move across (they commute with it, and 0 stays 0)
TRANSPARENT = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"}
INTEGER_OPS = {"Conv", "Gemm", "MatMul"}
# ops a quantizer reaches a float layer across when ONNX Runtime decides to quantize the layer's weights itself
PROPAGATED = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


@dataclass(frozen=True)
class LayerQuant:
    name: str
    codes: torch.Tensor  # int32 codes of the weight
    scale: torch.Tensor  # per channel (or one)
    zero: torch.Tensor
    act_scale: float | None
    act_zero: int | None
    bits: int
    act_bits: int | None
    weight: np.ndarray | None = None  # the dequantized weight the forward uses (to find the layer in the graph)


def quantized_layers(model: nn.Module) -> dict[str, LayerQuant]:
    from deepslim.compress.quantize.linear import QuantMixin

    found = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):
            codes, scale, zero, _axis = m.weight_codes()
            weight = m.quantized_weight().detach().float()
            if m.weight_axis == 1:  # stored (in, out) as HF Conv1D: described in nn.Linear's (out, in) layout
                codes, weight = codes.t().contiguous(), weight.t().contiguous()
            act = m.act_bits is not None
            found[name] = LayerQuant(name, codes, scale.reshape(-1), zero.reshape(-1),
                                     float(m.act_scale) if act else None, int(m.act_zero) if act else None,
                                     m.bits, m.act_bits, weight.numpy())  # fmt: skip
    return found


def float_copy(model: nn.Module, *, keep_points: bool = False) -> nn.Module:
    """The model with every quantized layer back in its float class, holding its dequantized weights.

    ``keep_points`` keeps the quantization points between layers (the ONNX exporter writes them as QDQ pairs);
    without it they pass their input through.
    """
    from deepslim.compress.quantize import disable_points_
    from deepslim.compress.quantize.linear import QuantMixin, float_class

    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, QuantMixin):
            w = m.quantized_weight().detach()
            m.__class__ = float_class(type(m))
            m.weight = nn.Parameter(w, requires_grad=False)
    if not keep_points:
        disable_points_(out)
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class _Graph:
    """An ONNX model with the indexes the rewrite needs."""

    model: Any
    inits: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[Any]] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.inits = {i.name: i for i in graph.initializer}
        for node in graph.node:
            for t in node.input:
                self.consumers.setdefault(t, []).append(node)
            for t in node.output:
                self.producer[t] = node
        self.outputs = {o.name for o in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is an initializer or a Constant (or a Cast of one)."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(_attr(node, "value"))
        if node is not None and node.op_type == "Cast":
            inner = self.constant(node.input[0])
            return None if inner is None else inner.astype(np.uint8 if _attr(node, "to") == 2 else np.float32)
        return None


@dataclass(frozen=True)
class _Match:
    """Where a quantized layer's weight is in the graph: the initializer, how it is stored, its nodes."""

    init: str
    nodes: tuple[Any, ...]
    channel_axis: int  # the output-channel axis of the stored weight (1 when stored transposed for MatMul)
    factor: np.ndarray | None  # per output channel, when the exporter folded a batch norm into the weight


def write_qdq(fp32_path: Path, dest: Path, layers: dict[str, LayerQuant]) -> list[str]:
    """Rewrite the float ONNX model at ``fp32_path`` into a QDQ model at ``dest``; returns layers left in float."""
    import onnx

    g = _Graph(onnx.load(str(fp32_path)))
    if g.model.opset_import[0].version < 13:
        raise ExportError("per-channel QDQ needs ONNX opset >= 13")
    matches, left = _match_layers(g, layers)
    existing = _absorb_pairs(g, layers, matches)
    g = _Graph(g.model)
    points = _quantization_points(g, layers, matches, existing)
    _drop_identity_relus(g, points)
    _rewrite(g, layers, matches, points)
    onnx.save(g.model, str(dest))
    return left


def requantized_floats(path: Path) -> list[str]:
    """Float Conv/Gemm layers of the QDQ file at ``path`` that ONNX Runtime will run as per-tensor int8 anyway.

    Its ``WeightBiasQuantization`` optimization (ONNX Runtime 1.22 and later; every optimization level above none)
    quantizes the float weight of a Conv, ConvTranspose or Gemm whose input comes from a DequantizeLinear with one
    scale and whose output reaches a QuantizeLinear along a path without branches (through Relu or Clip; ONNX
    Runtime first moves a quantizer up across max pooling, reshapes and transposes, so through those too): the
    layer then runs on an integer kernel with symmetric per-tensor int8 weights, coarser than the per-channel
    int8 the layer would have had quantized. That happens to a float layer that reads a quantized tensor shared with
    an int8 layer (a residual stream) and feeds an int8 layer. Names are the layers' weights without ``.weight``."""
    import onnx

    g = _Graph(onnx.load(str(path)))
    found = []
    for node in g.model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            continue
        src = g.producer.get(node.input[0])
        weight = g.inits.get(node.input[1])
        if src is None or src.op_type != "DequantizeLinear" or weight is None or weight.data_type != 1:
            continue
        scale = g.constant(src.input[1]) if len(src.input) > 1 else None
        if scale is None or scale.size != 1:
            continue
        out = node
        while len(out.output) == 1 and len(users := g.consumers.get(out.output[0], [])) == 1 \
                and out.output[0] not in g.outputs:  # fmt: skip
            out = users[0]
            if out.op_type == "QuantizeLinear":
                found.append(node.input[1].removesuffix(".weight"))
                break
            if out.op_type not in PROPAGATED:
                break
    return found


def _match_layers(g: _Graph, layers: dict[str, LayerQuant]) -> tuple[dict[str, _Match], list[str]]:
    """Each quantized layer's weight initializer and Conv/Gemm/MatMul nodes; and the layers that stay float."""
    candidates: dict[str, list[Any]] = {}
    for node in g.model.graph.node:
        if node.op_type in INTEGER_OPS and len(node.input) > 1 and node.input[1] in g.inits:
            candidates.setdefault(node.input[1], []).append(node)
    arrays = {name: g.constant(name) for name in candidates}
    matches, left = {}, []
    for name, lq in layers.items():
        found = None
        order = sorted(candidates, key=lambda n: n != f"{name}.weight")  # the layer's own name first
        for init in order:
            arr = arrays[init]
            found = _relation(lq.weight, arr, candidates[init]) if arr is not None else None
            if found is not None:
                matches[name] = _Match(init, tuple(candidates[init]), *found)
                break
        if found is None:
            left.append(f"{name} (its weight is not a Conv/Gemm/MatMul initializer in the exported graph)")
    return matches, left


def _relation(w: np.ndarray | None, arr: np.ndarray, nodes: list[Any]) -> tuple[int, np.ndarray | None] | None:
    """(output-channel axis, per-channel factor or None) when ``arr`` stores the layer weight ``w``."""
    if w is None:
        return None
    ops = {n.op_type for n in nodes}
    if len(ops) != 1:
        return None
    op = ops.pop()
    trans = [_attr(n, "transB", 0) for n in nodes] if op == "Gemm" else []
    if op == "MatMul" or op == "Gemm" and set(trans) == {0}:
        stored, axis = (w.T, 1) if w.ndim == 2 else (None, 1)
    elif op == "Gemm" and (set(trans) != {1} or any(_attr(n, "transA", 0) for n in nodes)):
        return None
    else:
        stored, axis = w, 0
    if stored is None or stored.shape != arr.shape:
        return None
    tol = 1e-5 * max(float(np.abs(stored).max()), 1e-12)
    if np.allclose(arr, stored, rtol=1e-5, atol=tol):
        return axis, None
    if op != "Conv":
        return None
    flat_w, flat_a = stored.reshape(len(stored), -1).astype(np.float64), arr.reshape(len(arr), -1).astype(np.float64)
    norm = (flat_w * flat_w).sum(1)
    factor = np.where(norm > 0, (flat_w * flat_a).sum(1) / np.maximum(norm, 1e-300), 0.0)
    if np.allclose(flat_a, factor[:, None] * flat_w, rtol=1e-4, atol=1e-5 * max(float(np.abs(flat_a).max()), 1e-12)):
        return axis, factor  # a batch norm folded in by the exporter
    return None


def _absorb_pairs(g: _Graph, layers: dict[str, LayerQuant], matches: dict[str, _Match]) -> dict[str, tuple]:
    """The model's quantization points, written by the exporter as QuantizeLinear → DequantizeLinear pairs, taken
    out of the graph as (scale, zero point) of the tensor they quantize (the rewrite puts them back)."""
    layer_input = {node.input[0]: layers[name] for name, m in matches.items() for node in m.nodes}
    found: dict[str, tuple[float, int]] = {}
    graph = g.model.graph
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        scale, zero = g.constant(q.input[1]), g.constant(q.input[2])
        dqs = g.consumers.get(q.output[0], [])
        if scale is None or zero is None or scale.size != 1 or not dqs or any(
                d.op_type != "DequantizeLinear" or d.output[0] in g.outputs for d in dqs):  # fmt: skip
            continue
        params = (float(scale.reshape(())), int(zero.reshape(())))
        t = q.input[0]
        clash = [lq for d in dqs for lq in [layer_input.get(d.output[0])] if lq is not None and lq.act_scale
                 is not None and (lq.act_scale, lq.act_zero) != params]  # fmt: skip
        if clash or found.get(t, params) != params:
            continue  # quantized twice with different parameters: keep the pair as it is
        found[t] = params
        for d in dqs:
            for user in g.consumers.get(d.output[0], []):
                for i, name in enumerate(user.input):
                    if name == d.output[0]:
                        user.input[i] = t
            graph.node.remove(d)
        graph.node.remove(q)
    return found


def _quantization_points(g: _Graph, layers: dict[str, LayerQuant], matches: dict[str, _Match],
                         existing: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:  # fmt: skip
    """(scale, zero point) of every tensor to quantize: the model's points, layer inputs (the layers' own
    parameters) and layer outputs (the next quantizer down a chain of transparent operators, if any)."""
    points: dict[str, tuple[float, int]] = dict(existing)
    outputs = []
    for name, m in matches.items():
        lq = layers[name]
        if lq.act_scale is None or lq.act_zero is None:
            continue
        for node in m.nodes:
            points[node.input[0]] = (lq.act_scale, lq.act_zero)
            outputs.append(node.output[0])
    for t in outputs:
        nxt = t
        while nxt not in points and nxt not in g.outputs:
            users = g.consumers.get(nxt, [])
            if len(users) != 1 or users[0].op_type not in TRANSPARENT:
                break
            nxt = users[0].output[0]
        if nxt in points and nxt not in g.outputs:
            points[t] = points[nxt]
    return points


def _drop_identity_relus(g: _Graph, points: dict[str, tuple[float, int]]) -> None:
    """A ReLU between two identical quantizers with zero point 0, or a Clip whose bounds hold the quantizer's whole
    range (ReLU6 before a quantizer calibrated after it), is the identity: drop it and the second quantizer, as ONNX
    Runtime's own quantizer does."""
    for node in list(g.model.graph.node):
        if node.op_type not in ("Relu", "Clip") or node.output[0] in g.outputs:
            continue
        src, dst = node.input[0], node.output[0]
        if points.get(src) is not None and points.get(src) == points.get(dst) and _inside(g, node, points[src]):
            for user in g.consumers.get(dst, []):
                for i, t in enumerate(user.input):
                    if t == dst:
                        user.input[i] = src
            g.model.graph.node.remove(node)
            del points[dst]


def _inside(g: _Graph, node: Any, point: tuple[float, int]) -> bool:
    """Whether every value the quantizer ``point`` represents passes ``node`` (a Relu or a Clip) unchanged."""
    scale, zero = point
    lo, hi = (0 - zero) * scale, (255 - zero) * scale
    if node.op_type == "Relu":
        return zero == 0
    bounds = [g.constant(t) if t else None for t in list(node.input[1:3]) + [""] * (3 - len(node.input))]
    low = float(bounds[0].reshape(())) if bounds[0] is not None else -np.inf
    high = float(bounds[1].reshape(())) if bounds[1] is not None else np.inf
    return low <= lo + 1e-6 * scale and hi <= high + 1e-6 * max(abs(high), 1.0)


def _weight_codes(lq: LayerQuant, m: _Match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 codes in the stored layout, scale, zero point) of a layer's weight, with a folded factor applied."""
    codes = lq.codes.numpy().astype(np.int8)
    scale = lq.scale.numpy().astype(np.float64)
    if m.factor is not None:  # scale' = scale·|f|, codes' = sign(f)·codes (the codes are symmetric: zero is 0)
        scale = np.broadcast_to(scale, m.factor.shape) * np.abs(m.factor)
        codes = (codes * np.sign(m.factor).reshape(-1, *[1] * (codes.ndim - 1))).astype(np.int8)
        scale = np.where(scale > 0, scale, 1.0)
    if m.channel_axis == 1:
        codes = np.ascontiguousarray(codes.T)
    zero = np.zeros(scale.shape, np.int8)
    if scale.size == 1:
        return codes, scale.reshape(()).astype(np.float32), zero.reshape(())
    return codes, scale.astype(np.float32), zero


def _rewrite(g: _Graph, layers: dict[str, LayerQuant], matches: dict[str, _Match],
             points: dict[str, tuple[float, int]]) -> None:  # fmt: skip
    """Q/DQ pairs on activations, DQ on the integer weights and int32 biases, in topological order. Initializers
    are never removed while a node reads them: shared ones (tied weights, identical biases) stay valid."""
    from onnx import helper, numpy_helper

    graph = g.model.graph
    new_nodes, new_inits = [], []

    def dequantize(base: str, values: np.ndarray, scale: np.ndarray, zero: np.ndarray, **attrs: Any) -> str:
        new_inits.extend([numpy_helper.from_array(values, f"{base}__q"),
                          numpy_helper.from_array(scale, f"{base}__scale"),
                          numpy_helper.from_array(zero, f"{base}__zero")])  # fmt: skip
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}__q", f"{base}__scale", f"{base}__zero"],
                                          [f"{base}__dq"], name=f"{base}__DQ", **attrs))  # fmt: skip
        return f"{base}__dq"

    renamed: dict[str, str] = {}
    for t, (scale, zero) in points.items():
        s_name, z_name = f"{t}__scale", f"{t}__zero"
        new_inits += [numpy_helper.from_array(np.array(scale, np.float32), s_name),
                      numpy_helper.from_array(np.array(zero, np.uint8), z_name)]  # fmt: skip
        new_nodes += [helper.make_node("QuantizeLinear", [t, s_name, z_name], [f"{t}__q"], name=f"{t}__Q"),
                      helper.make_node("DequantizeLinear", [f"{t}__q", s_name, z_name], [f"{t}__dq"],
                                       name=f"{t}__DQ")]  # fmt: skip
        renamed[t] = f"{t}__dq"
    for name, m in matches.items():
        lq = layers[name]
        codes, w_scale, w_zero = _weight_codes(lq, m)
        attrs = {"axis": m.channel_axis} if w_scale.ndim else {}
        w_dq = dequantize(f"{name}.weight", codes, w_scale, w_zero, **attrs)
        for node in m.nodes:
            node.input[1] = w_dq
            x_point = points.get(node.input[0])
            stored = g.constant(node.input[2]) if len(node.input) > 2 else None
            if x_point is not None and stored is not None:
                bias = stored.astype(np.float64)
                b_scale = np.broadcast_to((x_point[0] * w_scale.astype(np.float64)).astype(np.float32),
                                          bias.shape).copy()  # fmt: skip
                b_codes = np.round(bias / b_scale).astype(np.int32)
                node.input[2] = dequantize(f"{node.name or name}.bias", b_codes, b_scale, np.zeros_like(b_codes),
                                           axis=0)  # fmt: skip
    for node in graph.node:  # consumers read the dequantized tensors
        for i, t in enumerate(node.input):
            if t in renamed:
                node.input[i] = renamed[t]
    graph.initializer.extend(new_inits)
    ordered = _toposort(list(graph.node) + new_nodes, {i.name for i in graph.initializer} |
                        {i.name for i in graph.input})  # fmt: skip
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)


def _drop_unused_initializers(graph: Any) -> None:
    used = {t for node in graph.node for t in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _toposort(nodes: list[Any], available: set[str]) -> list[Any]:
    ready = set(available) | {""}
    pending, out = list(nodes), []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(t in ready for t in node.input):
                out.append(node)
                ready.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise ExportError(f"QDQ rewrite produced a graph with a cycle or a missing input at {rest[0].name}")
        pending = rest
    return out
