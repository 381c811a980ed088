"""Integer ONNX export: a linearly quantized model as a QDQ graph that ONNX Runtime runs on integer kernels.

The formats are the ones ONNX Runtime's fast CPU paths take: unsigned 8-bit activations (asymmetric, per tensor)
and signed 8-bit weights (symmetric, per output channel), int32 biases at scale ``s_x · s_w``. ONNX Runtime fuses
``DequantizeLinear → Conv/Gemm → QuantizeLinear`` into QLinearConv / QGemm, so every quantized layer's *output*
must be quantized too. deepslim places those output quantizers where they change nothing:

- a layer whose output reaches the next quantized layer only through ReLU, Clip, max pooling, reshapes or
  identities gets that layer's input quantizer right at its output (quantizing before a ReLU or a max pool is the
  same as after, since both commute with a monotone quantizer that represents 0 exactly) — the integer graph then
  computes what deepslim's fake-quantized PyTorch model computes;
- other quantization points that integer kernels need (the inputs and output of a residual addition) are
  calibrated on the calibration data with the model's own calibration method, by running the float graph in ONNX
  Runtime. The PyTorch simulation does not quantize additions; the export's parity check reports the difference.

The weights are the model's own integer codes; nothing is re-quantized.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
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


def quantized_layers(model: nn.Module) -> dict[str, LayerQuant]:
    from deepslim.compress.quantize.linear import QuantMixin

    found = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):
            codes, scale, zero, _axis = m.weight_codes()
            act = m.act_bits is not None
            found[name] = LayerQuant(name, codes, scale.reshape(-1), zero.reshape(-1),
                                     float(m.act_scale) if act else None, int(m.act_zero) if act else None,
                                     m.bits, m.act_bits)  # fmt: skip
    return found


def float_copy(model: nn.Module) -> nn.Module:
    """The model with every quantized layer back in its float class, holding its dequantized weights."""
    from deepslim.compress.quantize.linear import QUANTIZABLE, QuantMixin

    plain = {v: k for k, v in QUANTIZABLE.items()}
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, QuantMixin):
            w = m.quantized_weight().detach()
            m.__class__ = plain[type(m)]
            m.weight = nn.Parameter(w, requires_grad=False)
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


def write_qdq(fp32_path: Path, dest: Path, layers: dict[str, LayerQuant], calib: Iterable[Any] | None,
              calibration: Any) -> list[str]:  # fmt: skip
    """Rewrite the float ONNX model at ``fp32_path`` into a QDQ model at ``dest``; returns layers left in float."""
    import onnx

    g = _Graph(onnx.load(str(fp32_path)))
    if g.model.opset_import[0].version < 13:
        raise ExportError("per-channel QDQ needs ONNX opset >= 13")
    layer_node, left = _layer_nodes(g, layers)
    points = _quantization_points(g, layers, layer_node, lambda ts: _measure(fp32_path, ts, calib, calibration))
    _drop_identity_relus(g, points)
    _rewrite(g, layers, layer_node, points)
    onnx.save(g.model, str(dest))
    return left


def _layer_nodes(g: _Graph, layers: dict[str, LayerQuant]) -> tuple[dict[str, Any], list[str]]:
    """Each quantized layer's Conv/Gemm node, found by its weight initializer; and the layers that stay float."""
    layer_node: dict[str, Any] = {}
    left = []
    for name in layers:
        wname = f"{name}.weight"
        nodes = [n for n in g.consumers.get(wname, []) if n.op_type in INTEGER_OPS]
        if wname not in g.inits or len(nodes) != 1 or nodes[0].input[1] != wname:
            left.append(f"{name} (its weight is not a Conv/Gemm initializer in the exported graph)")
        elif nodes[0].op_type == "Gemm" and (_attr(nodes[0], "transB", 0) != 1 or _attr(nodes[0], "transA", 0) != 0):
            left.append(f"{name} (Gemm without transB)")
        elif nodes[0].op_type == "MatMul":
            left.append(f"{name} (MatMul weights are stored transposed)")
        else:
            layer_node[name] = nodes[0]
    return layer_node, left


def _quantization_points(g: _Graph, layers: dict[str, LayerQuant], layer_node: dict[str, Any],
                         measure: Any) -> dict[str, tuple[float, int]]:  # fmt: skip
    """(scale, zero point) of every tensor to quantize: layer inputs (the model's own parameters), layer outputs
    and residual additions (the next point down a transparent chain, or measured)."""
    points: dict[str, tuple[float, int] | None] = {}
    act_layers = {n: node for n, node in layer_node.items() if layers[n].act_scale is not None}
    for name, node in act_layers.items():
        points[node.input[0]] = (layers[name].act_scale, layers[name].act_zero)
    wanted = [node.output[0] for node in act_layers.values()]
    for node in g.model.graph.node:  # residual additions between quantized tensors: inputs and output
        if node.op_type == "Add" and all(t not in g.inits for t in node.input):
            feeds = [g.producer.get(t) for t in node.input]
            if any(f is not None and (f in act_layers.values() or f.op_type in ("Add", "Relu")) for f in feeds):
                users = g.consumers.get(node.output[0], [])
                if len(users) == 1 and users[0].op_type == "Relu":  # quantize after the ReLU; it is then dropped
                    wanted.append(users[0].output[0])
                wanted += [*node.input, node.output[0]]
    follows: dict[str, str] = {}  # tensor -> the tensor whose (measured) parameters it takes
    for t in wanted:
        if t in points or t in g.outputs:
            continue
        # the next quantization point down a chain of transparent single-consumer ops gives the parameters
        # (quantizing before a ReLU or a max pool is exact); where there is none, measure the tensor
        nxt, chain_ok = t, True
        while nxt not in points:
            users = g.consumers.get(nxt, [])
            if len(users) != 1 or users[0].op_type not in TRANSPARENT or nxt in g.outputs:
                chain_ok = False
                break
            nxt = users[0].output[0]
        points[t] = points[nxt] if chain_ok else None
        if chain_ok and nxt != t and points[nxt] is None:
            follows[t] = nxt
    unknown = [t for t, p in points.items() if p is None and t not in follows]
    measured = measure(unknown) if unknown else {}
    for t in unknown:
        points[t] = measured.get(t)
    for t, src in follows.items():
        points[t] = points.get(src)
    return {t: p for t, p in points.items() if p is not None}


def _drop_identity_relus(g: _Graph, points: dict[str, tuple[float, int]]) -> None:
    """A ReLU between two identical quantizers with zero point 0 is the identity (codes never go below zero): drop
    it and the second quantizer, as ONNX Runtime's own quantizer does."""
    for node in list(g.model.graph.node):
        if node.op_type != "Relu" or node.output[0] in g.outputs:
            continue
        src, dst = node.input[0], node.output[0]
        if points.get(src) is not None and points.get(src) == points.get(dst) and points[src][1] == 0:
            for user in g.consumers.get(dst, []):
                for i, t in enumerate(user.input):
                    if t == dst:
                        user.input[i] = src
            g.model.graph.node.remove(node)
            del points[dst]


def _rewrite(g: _Graph, layers: dict[str, LayerQuant], layer_node: dict[str, Any],
             points: dict[str, tuple[float, int]]) -> None:  # fmt: skip
    """Q/DQ pairs on activations, DQ on the integer weights and int32 biases, in topological order."""
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
    for name, node in layer_node.items():
        lq = layers[name]
        per_channel = lq.scale.numel() > 1
        w_scale, w_zero = lq.scale.numpy().astype(np.float32), lq.zero.numpy().astype(np.int8)
        if not per_channel:
            w_scale, w_zero = w_scale.reshape(()), w_zero.reshape(())
        wname = node.input[1]
        graph.initializer.remove(g.inits[wname])
        node.input[1] = dequantize(wname, lq.codes.numpy().astype(np.int8), w_scale, w_zero,
                                   **({"axis": 0} if per_channel else {}))  # fmt: skip
        x_point = points.get(node.input[0])
        if len(node.input) > 2 and node.input[2] in g.inits and x_point is not None:
            bname = node.input[2]
            bias = numpy_helper.to_array(g.inits[bname]).astype(np.float64)
            b_scale = np.broadcast_to((x_point[0] * lq.scale.double().numpy()).astype(np.float32), bias.shape).copy()
            b_codes = np.round(bias / b_scale).astype(np.int32)
            graph.initializer.remove(g.inits[bname])
            node.input[2] = dequantize(bname, b_codes, b_scale, np.zeros_like(b_codes), axis=0)
    for node in graph.node:  # consumers read the dequantized tensors
        for i, t in enumerate(node.input):
            if t in renamed:
                node.input[i] = renamed[t]
    graph.initializer.extend(new_inits)
    ordered = _toposort(list(graph.node) + new_nodes, {i.name for i in graph.initializer} |
                        {i.name for i in graph.input})  # fmt: skip
    del graph.node[:]
    graph.node.extend(ordered)


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


def _measure(fp32_path: Path, tensors: list[str], calib: Iterable[Any] | None,
             calibration: Any) -> dict[str, tuple[float, int]]:  # fmt: skip
    """u8 affine parameters for ``tensors`` of the float graph, observed on ``calib`` (empty without data)."""
    if calib is None:
        return {}
    import onnx

    from deepslim.compress.quantize._fakequant import affine_params
    from deepslim.compress.quantize.observers import Observer
    from deepslim.export.onnx import ort_session

    model = onnx.load(str(fp32_path))
    known = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    probe = fp32_path.with_name(fp32_path.stem + "-probe.onnx")
    onnx.save(model, str(probe))
    sess = ort_session(probe, threads=None)
    in_name = sess.get_inputs()[0].name
    observers = {t: Observer(calibration, 8) for t in tensors}
    for batch in calib:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for row in x.numpy():  # the exported graph has the example's batch size (1)
            values = sess.run(tensors, {in_name: row[None]})
            for t, v in zip(tensors, values, strict=True):
                observers[t].update(torch.from_numpy(v))
    out = {}
    for t, obs in observers.items():
        if obs.count:
            lo, hi = obs.range()
            scale, zero = affine_params(torch.tensor(lo), torch.tensor(hi), 8, symmetric=False, signed=False)
            out[t] = (float(scale), int(zero))
    probe.unlink(missing_ok=True)
    return out
