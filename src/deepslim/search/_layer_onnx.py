"""One layer as a tiny ONNX graph, written directly with ``onnx.helper`` (milliseconds; an exporter takes seconds).

Float: ``Conv`` (or ``Gemm`` / ``MatMul`` + ``Add``) with random weights. Int8: the QDQ form deepslim's integer
export writes and ONNX Runtime fuses into integer kernels (``QLinearConv``, ``QGemm``/``MatMulIntegerToFloat``):
``QuantizeLinear -> DequantizeLinear`` on the input, per-channel int8 weights and an int32 bias behind
``DequantizeLinear``, and ``QuantizeLinear -> DequantizeLinear`` on the output. ``qdq`` is the conversion pair alone,
timed so that a layer inside a chain of int8 layers (whose activations stay uint8) is not charged for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
X_SCALE = 0.05


def layer_graph(key: Any) -> onnx.ModelProto:
    """The ONNX model of a :class:`~deepslim.search.latency.LayerKey` (or of its ``qdq`` pair)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(key.in_shape))
    nodes: list[Any] = []
    inits: list[Any] = []
    if key.kind == "qdq":
        _qdq(nodes, inits, "input", "output", "a")
        return _model(nodes, inits, x, key.in_shape)
    cin = key.in_shape[1] if key.kind != "linear" else key.in_shape[-1]
    wshape = [key.out_channels, cin // key.groups, *key.kernel] if key.kind != "linear" else [key.out_channels, cin]
    w = rng.standard_normal(wshape).astype(np.float32) * 0.1
    b = rng.standard_normal(key.out_channels).astype(np.float32) * 0.1
    src, weight, bias = "input", "w", "b" if key.bias else ""
    if key.int8:
        _qdq(nodes, inits, "input", "xq", "x")
        src = "xq"
        wscale = np.maximum(np.abs(w.reshape(len(w), -1)).max(1), 1e-6) / 127
        codes = np.clip(np.round(w / wscale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(wscale.astype(np.float32), "w_s"),
                  numpy_helper.from_array(np.zeros(len(w), np.int8), "w_z")]  # fmt: skip
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0))
        if key.bias:
            bscale = (wscale * np.float32(X_SCALE)).astype(np.float32)  # input scale x weight scale: fusable
            inits += [numpy_helper.from_array(np.round(b / bscale).astype(np.int32), "b_q"),
                      numpy_helper.from_array(bscale, "b_s"),
                      numpy_helper.from_array(np.zeros(len(b), np.int32), "b_z")]  # fmt: skip
            nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        if key.bias:
            inits.append(numpy_helper.from_array(b, "b"))
    out = "y" if key.int8 else "output"
    if key.kind == "linear":
        _linear(nodes, inits, key, src, weight, bias, out)
        out_shape = [*key.in_shape[:-1], key.out_channels]
    else:
        pads = list(key.padding) * 2
        nodes.append(helper.make_node("Conv", [src, weight, *([bias] if bias else [])], [out],
                                      kernel_shape=list(key.kernel), strides=list(key.stride), pads=pads,
                                      dilations=list(key.dilation), group=key.groups))  # fmt: skip
        out_shape = [key.in_shape[0], key.out_channels, *_spatial(key)]
    if key.int8:
        _qdq(nodes, inits, "y", "output", "y")
    return _model(nodes, inits, x, tuple(out_shape))


def _linear(nodes: list[Any], inits: list[Any], key: Any, src: str, weight: str, bias: str, out: str) -> None:
    if len(key.in_shape) == 2:
        nodes.append(helper.make_node("Gemm", [src, weight, *([bias] if bias else [])], [out], transB=1))
        return
    nodes.append(helper.make_node("Transpose", [weight], ["wt"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", [src, "wt"], ["mm" if bias else out]))
    if bias:
        nodes.append(helper.make_node("Add", ["mm", bias], [out]))


def _qdq(nodes: list[Any], inits: list[Any], src: str, dst: str, tag: str) -> None:
    inits += [numpy_helper.from_array(np.array(X_SCALE, np.float32), f"{tag}_s"),
              numpy_helper.from_array(np.array(128, np.uint8), f"{tag}_z")]  # fmt: skip
    nodes.append(helper.make_node("QuantizeLinear", [src, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"]))
    nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [dst]))


def _spatial(key: Any) -> list[int]:
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
            zip(key.in_shape[2:], key.kernel, key.stride, key.padding, key.dilation, strict=True)]  # fmt: skip


def _model(nodes: list[Any], inits: list[Any], x: Any, out_shape: tuple[int, ...]) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))
    graph = helper.make_graph(nodes, "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
