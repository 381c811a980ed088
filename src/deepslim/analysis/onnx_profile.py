"""Profiling an ``.onnx`` file: the same Profile, computed from the graph with ONNX shape inference.

Each node is a layer. MACs follow the PyTorch profiler's conventions (:mod:`deepslim.analysis._ops`): Conv,
ConvTranspose, Gemm and MatMul and their integer forms (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) carry
MACs; every other standard operator carries none. Operators that carry MACs the profiler cannot count yet (recurrent
layers, Einsum, fused attention) and operators from custom domains are refused unless ``strict=False``.

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

# op type -> index of the weight input, for convolution-like and matrix-product nodes
_CONV = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}  # (A, B) inputs
_UNCOUNTED_MAC_OPS = {"Einsum", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "DeformConv"}
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
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    notes = _fix_input_shapes(inputs, input_shape, path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: ONNX shape inference failed: {exc}") from exc
    info = _value_infos(inferred.graph)
    for t in inits.values():
        info[t.name] = (tuple(t.dims), t.data_type)

    def nbytes(name: str) -> int:
        shape, dtype = info.get(name, ((), 1))
        dims = _known(shape)
        return math.prod(dims) * _ITEMSIZE.get(dtype, 4) if dims is not None else 0

    layers: list[LayerProfile] = []
    steps: list[Step] = []
    unknown: dict[str, str] = {}
    seen_weights: set[str] = set()
    for idx, node in enumerate(inferred.graph.node):
        name = node.name or f"{node.op_type}_{idx}"
        macs = _node_macs(node, info)
        if macs is None:
            unknown.setdefault(f"{node.domain + '.' if node.domain else ''}{node.op_type}", name)
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
            weight_bytes=sum(nbytes(w) for w in weights), macs=macs, other_ops=other,
            input_bytes=0 if free else sum(nbytes(i) for i in acts_in),
            output_bytes=0 if free else sum(nbytes(o) for o in node.output if o),
            output_shape=_known(out_shape),
            dtype=_DTYPE.get(weight_dtypes[0], "fp32") if weight_dtypes else "fp32",
        ))  # fmt: skip
        steps.append(Step(reads=set(acts_in), writes={o: nbytes(o) for o in node.output if o}))
    warnings: tuple[str, ...] = notes
    if unknown:
        listed = ", ".join(f"{op} (node {n})" for op, n in unknown.items())
        if strict:
            raise UnsupportedOpError(f"cannot count ONNX operator {listed}; pass strict=False "
                                     "(CLI: --allow-unknown-ops) to count it as zero MACs")  # fmt: skip
        warnings = (*notes, f"counted as zero MACs: {listed}")
    in_sizes = {i.name: nbytes(i.name) for i in inputs}
    peak = peak_live_bytes(steps, in_sizes, [o.name for o in inferred.graph.output])
    # a symbolic input dimension stays as its name, as ONNX writes it
    shapes = cast(tuple[tuple[int, ...], ...], tuple(tuple(info[i.name][0]) for i in inputs))
    return Profile.from_layers(path.name, shapes, tuple(layers), peak, source="onnx", warnings=warnings)


def _fix_input_shapes(inputs: list[Any], input_shape: tuple[int, ...] | None, path: Path) -> tuple[str, ...]:
    """Give every input concrete dims: ``input_shape`` for the first; a free leading (batch) dim becomes 1.

    deepslim exports every file with a free batch dimension, so batch 1 is the default a user means; any other
    symbolic dim (a sequence length, an image size) must be given.
    """
    notes = []
    for k, value in enumerate(inputs):
        dims = value.type.tensor_type.shape.dim
        if k == 0 and input_shape is not None:
            if len(input_shape) != len(dims):
                raise ConfigError(f"{path}: input {value.name!r} has {len(dims)} dimensions; "
                                  f"--input-shape gave {len(input_shape)}")  # fmt: skip
            for d, size in zip(dims, input_shape, strict=True):
                d.ClearField("dim_param")
                d.dim_value = int(size)
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
        out[v.name] = (tuple(d.dim_value if d.dim_value else (d.dim_param or "?") for d in t.shape.dim), t.elem_type)
    return out


def _known(shape: tuple[int | str, ...]) -> tuple[int, ...] | None:
    """The shape when every dimension is a number, else None (a symbolic dimension is a string)."""
    dims = tuple(d for d in shape if isinstance(d, int))
    return dims if len(dims) == len(shape) else None


def _numel(info: dict[str, Any], name: str) -> int:
    shape = info.get(name, ((), 1))[0]
    return math.prod(shape) if all(isinstance(d, int) for d in shape) else 0


def _node_macs(node: Any, info: dict[str, Any]) -> int | None:
    """MACs of one node, 0 for operators without MACs, None for ones that have MACs the profiler cannot count."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx", "com.microsoft") or op in _UNCOUNTED_MAC_OPS:
        return None
    if op in _CONV:
        w_shape = info[node.input[_CONV[op]]][0]
        kernel = math.prod(w_shape[2:])
        if op == "ConvTranspose":
            return _numel(info, node.input[0]) * w_shape[1] * kernel
        return _numel(info, node.output[0]) * w_shape[1] * kernel
    if op in _MATMUL:
        a_shape = info[node.input[_MATMUL[op][0]]][0]
        if op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            k = a_shape[0] if trans_a else a_shape[1]
            return _numel(info, node.output[0]) * k
        return _numel(info, node.output[0]) * a_shape[-1]
    return 0


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
