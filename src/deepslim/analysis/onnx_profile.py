"""Profiling an ``.onnx`` file: the same Profile, computed from the graph with ONNX shape inference.

Each node is a layer. MACs follow the PyTorch profiler's conventions (:mod:`deepslim.analysis._ops`): Conv,
ConvTranspose, Gemm and MatMul and their integer forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) carry
MACs; every other standard operator carries none. ONNX Runtime's own operators (``com.microsoft``) that its optimizer
and quantizer write are counted from their specs: the fused attention (Attention, QAttention: the Q/K/V projection,
QKᵀ and PV), FusedMatMul, QGemm, DynamicQuantizeMatMul and the like; the normalizations and activations it fuses carry
none. Operators that carry MACs the profiler cannot count (recurrent layers, Einsum, ONNX's own Attention, any other
``com.microsoft`` operator) and operators from custom domains are refused unless ``strict=False``.

Shapes come from ONNX shape inference, which stops at ``com.microsoft`` operators and at the Reshapes of an exported
transformer: every tensor it leaves without a concrete shape is then measured in one ONNX Runtime run of a copy of the
file at the given input shape. A MAC-carrying node whose shapes are still unknown is refused (``strict``) or counted
as zero with a warning, never silently.

:func:`time_onnx` measures instead of counting: ONNX Runtime's own profiler times every node it runs, and
:mod:`deepslim.analysis.blocks` maps the nodes back to the model's blocks and to attention / FFN / embeddings / other.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, cast

from deepslim.analysis._liveness import Step, peak_live_bytes
from deepslim.analysis.blocks import TimeProfile, label_nodes, node_times, run_times, time_profile
from deepslim.analysis.profile import LayerProfile, Profile
from deepslim.errors import ConfigError, ModelLoadError, UnsupportedOpError

_UNCOUNTED_MAC_OPS = {"Einsum", "LSTM", "GRU", "RNN", "Attention", "DeformConv"}  # standard operators
# ONNX Runtime's operators without MACs: normalizations, activations, element-wise and data movement
_CONTRIB_FREE = {"BiasAdd", "BiasDropout", "BiasGelu", "BiasSoftmax", "BiasSplitGelu", "BitmaskBiasDropout",
                 "BitmaskDropout", "DequantizeLinear", "EmbedLayerNormalization", "ExpandDims", "FastGelu", "GatherND",
                 "Gelu", "GemmaRotaryEmbedding", "GroupNorm", "MaxpoolWithMask", "MulInteger", "NhwcMaxPool", "Pad",
                 "QEmbedLayerNormalization", "QLinearAdd", "QLinearAveragePool", "QLinearConcat",
                 "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearMul", "QLinearReduceMean", "QLinearSigmoid",
                 "QLinearSoftmax", "QLinearWhere", "QuantizeLinear", "QuickGelu", "Range", "ReduceSumInteger",
                 "RemovePadding", "RestorePadding", "RotaryEmbedding", "SkipGroupNorm", "SkipLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "Trilu", "Unique"}  # fmt: skip
_SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size", "Constant", "Identity", "Transpose",
              "Slice", "Gather", "Split", "Concat", "Expand", "ConstantOfShape", "Range", "Cast", "CastLike",
              "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Tile", "Pad", "GatherElements",
              "GatherND", "ScatterND", "Where", "NonZero", "Dropout"}  # fmt: skip
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_DTYPE = {1: "fp32", 2: "int8", 3: "int8", 10: "fp16", 16: "bf16", 11: "fp64"}


def profile_onnx(path: str | os.PathLike[str], *, input_shape: tuple[int, ...] | None = None,
                 strict: bool = True) -> Profile:  # fmt: skip
    """Profile the graph in ``path``; ``input_shape`` fixes the first input's shape when it has symbolic dims."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model: {exc}") from exc
    if not model.graph.node:  # an empty file parses as an empty protobuf message
        raise ModelLoadError(f"{path} holds no ONNX graph (an empty or truncated file?)")
    inits = {t.name: t for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    notes = _fix_input_shapes(inputs, input_shape, path)
    info, measured = _shapes(model, inits, path)
    layers, steps, uncounted, unshaped = _layers(model.graph.node, info, inits)
    warnings = (*notes, *(measured if unshaped else ()))  # why ONNX Runtime could not measure them
    if uncounted or unshaped:
        parts = ([f"cannot count ONNX operator {_listed(uncounted)}"] if uncounted else []) + (
            [f"no shape known for {_listed(unshaped)}"] if unshaped else [])  # fmt: skip
        if strict:
            raise UnsupportedOpError("; ".join(parts) + "; pass strict=False (CLI: --allow-unknown-ops) to count it "
                                     "as zero MACs")  # fmt: skip
        warnings = (*warnings, *(f"counted as zero MACs: {p.removeprefix('cannot count ONNX operator ')}"
                                 for p in parts))  # fmt: skip
    in_sizes = {i.name: _nbytes(info, i.name) for i in inputs}
    peak = peak_live_bytes(steps, in_sizes, [o.name for o in model.graph.output])
    shapes = cast(tuple[tuple[int, ...], ...], tuple(tuple(info.get(i.name, ((), 1))[0]) for i in inputs))
    return Profile.from_layers(path.name, shapes, tuple(layers), peak, source="onnx", warnings=warnings)


def _listed(nodes: dict[str, str]) -> str:
    return ", ".join(f"{op} (node {n})" for op, n in nodes.items())


def _nbytes(info: dict[str, Any], name: str) -> int:
    shape, dtype = info.get(name, ((), 1))
    dims = _known(shape)
    return math.prod(dims) * _ITEMSIZE.get(dtype, 4) if dims is not None else 0


def _layers(nodes: Any, info: dict[str, Any], inits: dict[str, Any]
            ) -> tuple[list[LayerProfile], list[Step], dict[str, str], dict[str, str]]:  # fmt: skip
    """One layer and one liveness step per node; the operators that cannot be counted and the nodes whose shapes are
    unknown (operator -> first node, ``node: tensor`` for the latter)."""
    layers: list[LayerProfile] = []
    steps: list[Step] = []
    uncounted: dict[str, str] = {}
    unshaped: dict[str, str] = {}
    seen_weights: set[str] = set()
    for idx, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{idx}"
        op = f"{node.domain + '.' if node.domain else ''}{node.op_type}"
        try:
            macs = _node_macs(node, info)
        except _Unshaped as exc:
            unshaped.setdefault(op, f"{name}: tensor {exc}")
            macs = 0
        if macs is None:
            uncounted.setdefault(op, name)
            macs = 0
        weights = [i for i in node.input if i in inits and i not in seen_weights]
        seen_weights.update(weights)
        acts_in = [i for i in node.input if i and i not in inits]
        out_shape = info.get(node.output[0], ((), 1))[0] if node.output else ()
        free = node.op_type in _SHAPE_OPS and node.op_type not in ("Concat", "Pad", "Tile", "Gather")
        other = 0 if macs or node.op_type in _SHAPE_OPS else max([_numel(info, o) for o in node.output] + [0])
        weight_dtypes = [info[w][1] for w in weights]
        layers.append(LayerProfile(
            name=name, type=node.op_type, calls=1,
            params=(n_params := sum(math.prod(inits[w].dims) for w in weights if inits[w].data_type != 7)),
            nonzero_params=n_params,
            weight_bytes=sum(_nbytes(info, w) for w in weights), macs=macs, other_ops=other,
            input_bytes=0 if free else sum(_nbytes(info, i) for i in acts_in),
            output_bytes=0 if free else sum(_nbytes(info, o) for o in node.output if o),
            output_shape=_known(out_shape),
            dtype=_DTYPE.get(weight_dtypes[0], "fp32") if weight_dtypes else "fp32",
        ))  # fmt: skip
        steps.append(Step(reads=set(acts_in), writes={o: _nbytes(info, o) for o in node.output if o}))
    return layers, steps, uncounted, unshaped


def _shapes(model: Any, inits: dict[str, Any], path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Shape and element type of every tensor: ONNX shape inference, then one ONNX Runtime run for the tensors it
    leaves without concrete dims (a note when that run fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: ONNX shape inference failed: {exc}") from exc
    info = _value_infos(inferred.graph)
    for t in inits.values():
        info[t.name] = (tuple(t.dims), t.data_type)
    open_ = [o for n in model.graph.node for o in n.output if o and (o not in info or _known(info[o][0]) is None)]
    if not open_:
        return info, ()
    try:
        info.update(_run_shapes(model, open_))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return info, (f"ONNX Runtime could not run the file to measure {len(open_)} tensor shapes that ONNX shape "
                      f"inference left open ({reason})",)  # fmt: skip
    return info, ()


def _run_shapes(model: Any, names: list[str]) -> dict[str, tuple[tuple[int, ...], int]]:
    """The shapes of ``names`` in one ONNX Runtime run of a copy of ``model`` that outputs them (no graph
    optimizations, so every tensor is computed as written); inputs as :func:`time_onnx` makes them."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 4  # fatal only
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    values = sess.run(None, _default_feeds(sess, None, 1, Path("the file")))
    return {n: (tuple(v.shape), onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for n, v in zip(names, values,
                                                                                          strict=True)}  # fmt: skip


def _fix_input_shapes(inputs: list[Any], input_shape: tuple[int, ...] | None, path: Path) -> tuple[str, ...]:
    """Give every input concrete dims: ``input_shape`` for the first, and the same size to every dimension of another
    input that bears the same symbolic name (a mask's ``batch``); a free leading (batch) dim left becomes 1.

    deepslim exports every file with a free batch dimension, so batch 1 is the default a user means; any other
    symbolic dim (a sequence length, an image size) must be given.
    """
    notes = []
    named: dict[str, int] = {}
    for k, value in enumerate(inputs):
        dims = value.type.tensor_type.shape.dim
        if k == 0 and input_shape is not None:
            if len(input_shape) != len(dims):
                raise ConfigError(f"{path}: input {value.name!r} has {len(dims)} dimensions; "
                                  f"--input-shape gave {len(input_shape)}")  # fmt: skip
            named = {d.dim_param: int(size) for d, size in zip(dims, input_shape, strict=True) if d.dim_param}
            for d, size in zip(dims, input_shape, strict=True):
                d.ClearField("dim_param")
                d.dim_value = int(size)
        for d in dims:
            if d.dim_param in named:
                d.dim_value = named[d.dim_param]  # clears dim_param (one of the two)
        if len(dims) > 1 and not dims[0].dim_value:
            notes.append(f"input {value.name!r}: free batch dimension {dims[0].dim_param or '?'!r} profiled at 1")
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
        symbolic = [d.dim_param or "?" for d in dims if not d.dim_value]
        if symbolic:
            raise ConfigError(f"{path}: input {value.name!r} has symbolic dimensions ({', '.join(symbolic)}); "
                              "give its shape with input_shape (CLI: --input-shape)")  # fmt: skip
    return tuple(notes)


def _value_infos(graph: Any) -> dict[str, tuple[tuple[int | str, ...], int]]:
    out = {}
    for v in (*graph.input, *graph.value_info, *graph.output):
        t = v.type.tensor_type
        if not t.HasField("shape"):  # a type without a shape says nothing about the shape (a scalar has one)
            continue
        out[v.name] = (tuple(d.dim_value if d.dim_value else (d.dim_param or "?") for d in t.shape.dim), t.elem_type)
    return out


def _known(shape: tuple[int | str, ...]) -> tuple[int, ...] | None:
    """The shape when every dimension is a number, else None (a symbolic dimension is a string)."""
    dims = tuple(d for d in shape if isinstance(d, int))
    return dims if len(dims) == len(shape) else None


def _numel(info: dict[str, Any], name: str) -> int:
    shape = info.get(name, ((), 1))[0]
    return math.prod(shape) if all(isinstance(d, int) for d in shape) else 0


class _Unshaped(Exception):
    """A tensor that a node's MAC count needs has no known shape (its name is the message)."""


def _dims(info: dict[str, Any], name: str) -> tuple[int, ...]:
    dims = _known(info[name][0]) if name in info else None
    if dims is None:
        raise _Unshaped(name)
    return dims


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _given(node: Any, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def _conv(w: int) -> Any:
    """Conv-like nodes, weight input ``w`` (M, C/group, k...): MACs = output elements x C/group x kernel (the input's
    elements for a transposed convolution, whose weight is (C, M/group, k...)); NHWC forms produce as many."""

    def count(node: Any, info: dict[str, Any]) -> int:
        weight = _dims(info, node.input[w])
        per_output = weight[1] * math.prod(weight[2:])
        side = node.input[0] if node.op_type == "ConvTranspose" else node.output[0]
        return math.prod(_dims(info, side)) * per_output

    return count


def _product(node: Any, info: dict[str, Any]) -> int:
    """A matrix product with A first, as numpy.matmul: MACs = output elements x A's last dimension."""
    k = _dims(info, node.input[0])[-1]
    return math.prod(_dims(info, node.output[0])) * k


def _gemm(node: Any, info: dict[str, Any]) -> int:
    a = _dims(info, node.input[0])
    return math.prod(_dims(info, node.output[0])) * (a[0] if _attr(node, "transA", 0) else a[-1])


def _fused_matmul(node: Any, info: dict[str, Any]) -> int:
    """FusedMatMul / TransposeMatMul: transBatchA moves A's first dimension next to its last (A becomes
    (a1, ..., a0, an)), then transA swaps the last two, so the summed dimension is an, a0 or a(n-1)."""
    a = _dims(info, node.input[0])
    trans, batch = _attr(node, "transA", 0), _attr(node, "transBatchA", 0) and len(a) > 2
    k = a[-1] if not trans else a[0] if batch else a[-2] if len(a) > 1 else a[0]
    return math.prod(_dims(info, node.output[0])) * k


def _matmul_nbits(node: Any, info: dict[str, Any]) -> int:
    return math.prod(_dims(info, node.output[0])) * int(_attr(node, "K", 0))


def _attention(node: Any, info: dict[str, Any]) -> int | None:
    """Attention / QAttention: input (B, S, D) times the packed Q/K/V weight (D, q + k + v), then QKᵀ (B·S·S·q) and
    PV (B·S·S·v), as the PyTorch profiler counts attention. With a past state the key length is not S: refused."""
    if _given(node, 8 if node.op_type == "QAttention" else 4):
        return None
    batch, seq, width = _dims(info, node.input[0])
    packed = _dims(info, node.input[1])[1]
    q, _, v = _attr(node, "qkv_hidden_sizes", None) or [packed // 3] * 3
    return batch * seq * width * packed + batch * seq * seq * (q + v)


def _multi_head_attention(node: Any, info: dict[str, Any]) -> int | None:
    """MultiHeadAttention on projected (B, S, q) queries and (B, L, ·) keys and values: QKᵀ and PV, B·S·L·(q + v).
    Packed Q/K/V, 4-D keys and past states are refused."""
    if not (_given(node, 1) and _given(node, 2)) or any(_given(node, i) for i in (6, 7)):
        return None
    query, key, value = (_dims(info, node.input[i]) for i in range(3))
    if not len(query) == len(key) == len(value) == 3:
        return None
    return query[0] * query[1] * key[1] * (query[2] + value[2])


_STANDARD = {"Conv": _conv(1), "ConvInteger": _conv(1), "QLinearConv": _conv(3), "ConvTranspose": _conv(1),
             "MatMul": _product, "MatMulInteger": _product, "QLinearMatMul": _product, "Gemm": _gemm}  # fmt: skip
_CONTRIB = {"Attention": _attention, "QAttention": _attention, "MultiHeadAttention": _multi_head_attention,
            "FusedMatMul": _fused_matmul, "TransposeMatMul": _fused_matmul, "FusedGemm": _gemm, "QGemm": _gemm,
            "DynamicQuantizeMatMul": _product, "MatMulIntegerToFloat": _product, "MatMulInteger16": _product,
            "GemmFastGelu": _product, "MatMulNBits": _matmul_nbits, "FusedConv": _conv(1), "NhwcConv": _conv(1),
            "NhwcFusedConv": _conv(1), "QLinearConv": _conv(3)}  # fmt: skip


def _node_macs(node: Any, info: dict[str, Any]) -> int | None:
    """MACs of one node, 0 for operators without MACs, None for ones that have MACs the profiler cannot count;
    raises _Unshaped when a shape the count needs is unknown."""
    op, domain = node.op_type, node.domain or ""
    if domain in ("", "ai.onnx"):
        return None if op in _UNCOUNTED_MAC_OPS else _STANDARD[op](node, info) if op in _STANDARD else 0
    if domain == "com.microsoft":
        return 0 if op in _CONTRIB_FREE else _CONTRIB[op](node, info) if op in _CONTRIB else None
    return None


_FEED_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}  # fmt: skip


def time_onnx(path: str | os.PathLike[str], *, feeds: dict[str, Any] | None = None,
              input_shape: tuple[int, ...] | None = None, batch_size: int = 1, runs: int = 20, warmup: int = 5,
              threads: int = 1) -> TimeProfile:  # fmt: skip
    """Per-node times of ``path`` measured by ONNX Runtime's profiler (graph optimizations on, as deployed), the
    median of ``runs`` runs after ``warmup``; ``.by_block()`` / ``.by_group()`` say where the time goes.

    ``feeds`` (input name -> array) are the inputs; by default every free batch dimension is ``batch_size``, the
    first input's shape is ``input_shape`` when given, floating-point inputs are seeded random normals and integer
    inputs are ones (a valid token id and a full attention mask).
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {str(path)!r} does not exist")
    if runs < 1 or warmup < 0 or threads < 1 or batch_size < 1:
        raise ConfigError(f"time_onnx needs runs >= 1, warmup >= 0, threads >= 1 and batch_size >= 1; got runs={runs}, "
                          f"warmup={warmup}, threads={threads}, batch_size={batch_size}")  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(work) / "ort")
        opts.optimized_model_filepath = str(Path(work) / "executed.onnx")
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT warns that a saved optimized graph is specific to this machine
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc
        feeds = feeds if feeds is not None else _default_feeds(sess, input_shape, batch_size, path)
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
        executed = onnx.load(str(Path(work) / "executed.onnx"), load_external_data=False).graph
    original = onnx.load(str(path), load_external_data=False).graph
    labels = label_nodes(executed, original)
    whole = sorted(run_times(events, skip=warmup))
    return time_profile(path.name, node_times(events, skip=warmup), labels, run_us=whole[len(whole) // 2],
                        runs=runs, threads=threads)  # fmt: skip


def _default_feeds(sess: Any, input_shape: tuple[int, ...] | None, batch_size: int, path: Path) -> dict[str, Any]:
    """Inputs for a timing run: see :func:`time_onnx`."""
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for k, value in enumerate(sess.get_inputs()):
        dims = list(input_shape) if k == 0 and input_shape is not None else list(value.shape)
        if dims and not isinstance(dims[0], int):
            dims[0] = batch_size
        if not all(isinstance(d, int) for d in dims):
            raise ConfigError(f"{path}: input {value.name!r} has symbolic dimensions {value.shape}; give its shape "
                              "with input_shape (CLI: --input-shape) or pass feeds")  # fmt: skip
        dtype = _FEED_DTYPES.get(value.type)
        if dtype is None:
            raise ConfigError(f"{path}: input {value.name!r} of type {value.type} has no default; pass feeds")
        kind = np.dtype(dtype).kind
        feeds[value.name] = rng.standard_normal(dims).astype(dtype) if kind == "f" else np.ones(dims, dtype=dtype)
    return feeds
