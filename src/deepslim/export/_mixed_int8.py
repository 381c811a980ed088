"""Mixed precision for the fused int8 encoder: which projections stay fp32, chosen by measured sensitivity, and the
outlier channels of the feed-forward output projections split off into a small fp32 path.

ONNX Runtime's dynamic int8 quantizes each MatMul's input per tensor at run time: one wide channel sets the step
for all the others. In BERT-style encoders the input of the feed-forward output projection (a GELU output) has one
or two such channels per layer (all-MiniLM-L6-v2, 220 sentences: layer 0's widest channel reaches 24.7 while the
median channel's maximum is 1.5), so every other channel is rounded to a 16× coarser grid than it needs.
:func:`split_outliers` computes those few channels in fp32 — their columns of the up projection, their GELU and
their rows of the down projection, added back before the residual — and leaves the int8 MatMuls one channel
narrower: the same fp32 function, a much finer int8 grid, four small nodes per layer instead of a whole fp32 MatMul
(LLM.int8()'s decomposition, Dettmers et al., NeurIPS 2022, with the outlier channels fixed at export time).

Projections kept in fp32 are named by their PyTorch module (``…layer.0.output.dense``; the fused attention's
query/key/value projections by ``…layer.0.attention.self``), so a chosen set is plain config that round-trips
through JSON (:class:`FusedInt8Config`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from deepslim.config import Config, coerce_enum
from deepslim.errors import ConfigError

_QUANTIZABLE = ("MatMul", "Attention")


class FloatSelection(Enum):
    """Which projection :func:`~deepslim.export.export_fused_int8`'s search keeps in fp32 next. The values are the
    strings of sessions 4–7's ``select`` (old JSON configs load unchanged)."""

    GAIN_PER_WEIGHT = "sensitivity"  # the largest measured cosine gain per fp32 weight element (one trial file each)
    FFN_OUTPUTS = "ffn_first"  # the feed-forward output projections (GELU readers), first layer first, unmeasured


@dataclass(frozen=True, kw_only=True)
class FusedInt8Config(Config):
    """What stays fp32 in :func:`~deepslim.export.export_fused_int8`'s file.

    ``float_layers``: module names (or ``re:`` patterns) of projections kept fp32, bit for bit the fp32 graph's.
    ``min_cosine`` > 0 adds more, in the order ``select`` gives, until the mean cosine to PyTorch on the check
    inputs reaches it (at most ``max_float`` in all; an ExportError if it never does): ``GAIN_PER_WEIGHT``
    (``"sensitivity"``) measures, for every projection, the cosine with only it in fp32 and takes the largest gain
    per fp32 weight first (a projection's fp32 cost grows with its weight); ``FFN_OUTPUTS`` (``"ffn_first"``): the
    feed-forward output projections, first layer first (sessions 4–5). ``split_outliers``: this many widest input
    channels of every feed-forward output projection go to a small fp32 path (:func:`split_outliers`; 0: off);
    ``split_inputs``: this many widest input channels of every feed-forward up projection (LayerNorm outputs)
    likewise (:func:`split_inputs`). ``smooth``: SmoothQuant alpha of the output projections (0: off; it lowered
    fidelity on all-MiniLM-L6-v2).
    """

    float_layers: tuple[str, ...] = ()
    min_cosine: float = 0.0
    max_float: int = 6
    select: FloatSelection = FloatSelection.GAIN_PER_WEIGHT
    split_outliers: int = 0
    split_inputs: int = 0
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.float_layers, str) or not all(isinstance(p, str) for p in self.float_layers):
            raise ConfigError("float_layers must be a list of module names or 're:' patterns, "
                              f"got {self.float_layers!r}")  # fmt: skip
        object.__setattr__(self, "float_layers", tuple(self.float_layers))
        if not self.min_cosine >= 0.0:  # above 1 is allowed and unreachable: the export then says so
            raise ConfigError(f"min_cosine must be >= 0 (0: no search), got {self.min_cosine}")
        for what in ("max_float", "split_outliers", "split_inputs"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{what} must be a whole number >= 0, got {value!r}")
        coerce_enum(self, "select", FloatSelection)  # the member or its value (the string JSON and sessions 4-7 use)
        if not 0.0 <= self.smooth <= 1.0:
            raise ConfigError(f"smooth (SmoothQuant alpha) must be in [0, 1], got {self.smooth}")
        if self.smooth and (self.split_outliers or self.split_inputs):
            raise ConfigError("smooth cannot be combined with split_outliers/split_inputs (the smoothing Mul hides the "
                              "feed-forward blocks the splits look for): use one or the other")  # fmt: skip
        for p in self.float_layers:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as exc:
                    raise ConfigError(f"float_layers pattern {p!r} is not a valid regular expression: {exc}") from None


def _module_of(node_name: str) -> str:
    """'/model/encoder/layer.0/output/dense/MatMul' -> 'model.encoder.layer.0.output.dense' (TorchScript's scope)."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else node_name


def layer_nodes(fused: Path) -> dict[str, str]:
    """The quantizable nodes of a fused graph by PyTorch module name, in graph order: each MatMul with a constant
    weight by its module, each fused Attention by its self-attention module (the parent of the output projection
    that reads it, + ``.self``), the fused embeddings (whose tables ONNX Runtime's quantizer also makes int8) by
    the embeddings module. Nodes of the outlier path are not listed (they always stay fp32)."""
    import onnx

    graph = onnx.load(str(fused), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.name)
    out: dict[str, str] = {}
    for n in graph.node:
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits and "_outlier" not in n.name:
            out[_module_of(n.name)] = n.name
        elif n.op_type == "Attention":
            reader = next((r for r in readers.get(n.output[0], []) if r.endswith("/MatMul")), None)
            parent = _module_of(reader).rsplit(".", 2)[0] if reader else ""
            out[f"{parent}.self" if parent else n.name] = n.name
        elif n.op_type == "EmbedLayerNormalization" and len(n.input) > 2:  # ORT quantizes its tables too
            table = n.input[2]
            out[table.rsplit(".", 2)[0] if table.endswith(".word_embeddings.weight") else n.name] = n.name
    return out


def resolve(patterns: tuple[str, ...], layers: dict[str, str]) -> list[str]:
    """Module names matching ``patterns`` (exact or ``re:``), in graph order; a pattern matching nothing is a
    ConfigError that lists the names there are."""
    from deepslim.config import matches

    for p in patterns:
        if not any(matches(p, name) for name in layers):
            raise ConfigError(f"float_layers entry {p!r} matches no quantizable projection; there are: "
                              f"{', '.join(layers)}")  # fmt: skip
    return [name for name in layers if any(matches(p, name) for p in patterns)]


def _weight_size(graph: Any, node_name: str) -> int:
    inits = {i.name: i for i in graph.initializer}
    node = next(n for n in graph.node if n.name == node_name)
    if node.op_type == "EmbedLayerNormalization":
        return 1  # table lookups: fp32 costs no time
    return int(np.prod(inits[node.input[1]].dims)) if node.input[1] in inits else 1


def weight_sizes(fused: Path, layers: dict[str, str]) -> dict[str, int]:
    """Elements of each projection's weight: what keeping it fp32 costs, roughly, in time (1 for the embeddings'
    lookup tables, which cost none)."""
    import onnx

    graph = onnx.load(str(fused), load_external_data=False).graph
    return {name: _weight_size(graph, node) for name, node in layers.items()}


def channel_max(model_path: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named tensors of a graph over ``feeds``: the graph is run once more
    with them as extra outputs."""
    import onnx

    model = onnx.load(str(model_path))
    for n in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    probe = model_path.with_name(model_path.stem + "-probe.onnx")
    onnx.save(model, str(probe))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(probe), opts, providers=["CPUExecutionProvider"])
    amax = {n: np.zeros(0, dtype=np.float32) for n in names}
    for feed in feeds:
        for n, value in zip(names, sess.run(names, feed), strict=True):
            m = np.abs(value).reshape(-1, value.shape[-1]).max(0)
            amax[n] = m if amax[n].size == 0 else np.maximum(amax[n], m)
    return amax


def widest(amax: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` channels of largest max |x|, ascending (ties: the lower index)."""
    return np.sort(np.argsort(-amax, kind="stable")[:k])


def splice(graph: Any, *, before: dict[str, list[Any]] | None = None,
           after: dict[str, list[Any]] | None = None) -> None:  # fmt: skip
    """Insert new nodes into ``graph`` right before / after the node of each name, keeping the rest in order."""
    before, after = before or {}, after or {}
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(node.name, []))
        nodes.append(node)
        nodes.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(nodes)


def _gelu_readers(graph: Any) -> list[tuple[Any, Any, Any]]:
    """(up projection MatMul, BiasGelu, down projection MatMul) of every feed-forward block of a fused graph."""
    inits = {i.name for i in graph.initializer}
    by_out = {o: n for n in graph.node for o in n.output}
    found = []
    for down in graph.node:
        act = by_out.get(down.input[0]) if down.op_type == "MatMul" and "_outlier_" not in down.name else None
        if act is None or act.op_type != "BiasGelu" or down.input[1] not in inits:
            continue
        up = by_out.get(act.input[0])
        if up is not None and up.op_type == "MatMul" and up.input[1] in inits and act.input[1] in inits:
            found.append((up, act, down))
    return found


Channels = dict[str, list[int]]  # chosen channels by PyTorch module name (the quantized model's, given to the export)


def split_outliers(fused: Path, out: Path, feeds: list[dict[str, np.ndarray]], k: int,
                   given: Channels | None = None) -> Channels:  # fmt: skip
    """Write ``fused`` to ``out`` with the ``k`` widest input channels of every feed-forward output projection
    (max |GELU output| over ``feeds``) computed in fp32 beside it: their up-projection columns and bias, their GELU
    and their down-projection rows become nodes named ``…_outlier_*`` whose sum is added to the narrowed int8
    projection's output. The fp32 function is unchanged (up to summation order). ``given``: the channels by down
    projection module instead (the ones a dynamic-quantized PyTorch model chose; blocks not named stay whole).
    Returns the channels split, by the down projection's module name."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused))
    graph = model.graph
    triples = _gelu_readers(graph)
    if given is not None:
        triples = [t for t in triples if _module_of(t[2].name) in given]
    if (k <= 0 and given is None) or not triples:
        onnx.save(model, str(out))
        return {}
    inits = {i.name: i for i in graph.initializer}
    stats = channel_max(fused, [act.output[0] for _, act, _ in triples], feeds) if given is None else {}
    added: dict[str, list[Any]] = {}
    split: dict[str, list[int]] = {}
    for up, act, down in triples:
        w1, b1 = numpy_helper.to_array(inits[up.input[1]]), numpy_helper.to_array(inits[act.input[1]])
        w2 = numpy_helper.to_array(inits[down.input[1]])
        if k >= w1.shape[1]:
            raise ConfigError(f"split_outliers={k} must be below the feed-forward width {w1.shape[1]}")
        channels = widest(stats[act.output[0]], k) if given is None else np.array(given[_module_of(down.name)])
        rest = np.setdiff1d(np.arange(w1.shape[1]), channels)
        tag = down.name
        for name, value in ((f"{tag}_split_w1", w1[:, rest]), (f"{tag}_split_b1", b1[rest]),
                            (f"{tag}_split_w2", w2[rest]), (f"{tag}_outlier_w1", w1[:, channels]),
                            (f"{tag}_outlier_b1", b1[channels]), (f"{tag}_outlier_w2", w2[channels])):  # fmt: skip
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        up.input[1], act.input[1], down.input[1] = f"{tag}_split_w1", f"{tag}_split_b1", f"{tag}_split_w2"
        result = down.output[0]
        down.output[0] = f"{result}_int8_part"
        added[down.name] = [
            helper.make_node("MatMul", [up.input[0], f"{tag}_outlier_w1"], [f"{tag}_outlier_h"],
                             name=f"{tag}_outlier_up"),  # fmt: skip
            helper.make_node("BiasGelu", [f"{tag}_outlier_h", f"{tag}_outlier_b1"], [f"{tag}_outlier_g"],
                             name=f"{tag}_outlier_gelu", domain=act.domain),  # fmt: skip
            helper.make_node("MatMul", [f"{tag}_outlier_g", f"{tag}_outlier_w2"], [f"{tag}_outlier_y"],
                             name=f"{tag}_outlier_down"),  # fmt: skip
            helper.make_node("Add", [down.output[0], f"{tag}_outlier_y"], [result], name=f"{tag}_outlier_add"),
        ]
        split[_module_of(down.name)] = [int(c) for c in channels]
    splice(graph, after=added)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(out))
    return split


def outlier_nodes(path: Path) -> list[str]:
    """The nodes of the fp32 outlier path (they must stay fp32: the quantizer is told to leave them)."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if "_outlier_" in n.name]


def split_inputs(fused: Path, out: Path, feeds: list[dict[str, np.ndarray]], k: int,
                 given: Channels | None = None) -> Channels:  # fmt: skip
    """Write ``fused`` to ``out`` with the ``k`` widest input channels of every feed-forward up projection (its
    input is a LayerNorm output; in BERT one channel is far wider than the rest) taken out of the int8 MatMul: the
    input is multiplied by a 0/1 mask, and those channels times their weight rows are added back in fp32 (a
    ``Gather`` and a k-row ``MatMul``) before the GELU. The fp32 function is unchanged. ``given``: the channels by
    up projection module instead (blocks not named stay whole). Returns the channels by the up projection's module
    name."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused))
    graph = model.graph
    ups = [up for up, _, _ in _gelu_readers(graph)]
    if given is not None:
        ups = [up for up in ups if _module_of(up.name) in given]
    if (k <= 0 and given is None) or not ups:
        onnx.save(model, str(out))
        return {}
    inits = {i.name: i for i in graph.initializer}
    stats = channel_max(fused, [up.input[0] for up in ups], feeds) if given is None else {}
    added: dict[str, list[Any]] = {}
    masks: dict[str, list[Any]] = {}
    split: dict[str, list[int]] = {}
    for up in ups:
        w = numpy_helper.to_array(inits[up.input[1]])
        if k >= w.shape[0]:
            raise ConfigError(f"split_inputs={k} must be below the hidden width {w.shape[0]}")
        channels = widest(stats[up.input[0]], k) if given is None else np.array(given[_module_of(up.name)])
        mask = np.ones(w.shape[0], dtype=np.float32)
        mask[channels] = 0.0
        tag, x, result = up.name, up.input[0], up.output[0]
        for name, value in ((f"{tag}_outlier_mask", mask), (f"{tag}_outlier_idx", channels.astype(np.int64)),
                            (f"{tag}_outlier_rows", np.ascontiguousarray(w[channels], dtype=np.float32))):  # fmt: skip
            graph.initializer.append(numpy_helper.from_array(value, name))
        up.input[0], up.output[0] = f"{tag}_outlier_masked", f"{result}_int8_part"
        masking = helper.make_node("Mul", [x, f"{tag}_outlier_mask"], [up.input[0]], name=f"{tag}_outlier_in_mask")
        added[up.name] = [
            helper.make_node("Gather", [x, f"{tag}_outlier_idx"], [f"{tag}_outlier_x"], name=f"{tag}_outlier_gather",
                             axis=-1),  # fmt: skip
            helper.make_node("MatMul", [f"{tag}_outlier_x", f"{tag}_outlier_rows"], [f"{tag}_outlier_part"],
                             name=f"{tag}_outlier_rank"),  # fmt: skip
            helper.make_node("Add", [up.output[0], f"{tag}_outlier_part"], [result], name=f"{tag}_outlier_in_add"),
        ]
        masks[up.name] = [masking]
        split[_module_of(up.name)] = [int(c) for c in channels]
    splice(graph, before=masks, after=added)
    onnx.save(model, str(out))
    return split


def scale_inputs(fused: Path, out: Path, given: dict[str, list[float]]) -> Channels:
    """Write ``fused`` to ``out`` with the input of every feed-forward up projection named in ``given`` (by module:
    one factor s per input channel) divided by s in a ``Mul`` before the MatMul, and the weight's rows multiplied by
    s: the same product in float, a narrower dynamic int8 range where s > 1 (what a dynamic-quantized PyTorch model
    chose with ``scale_inputs``). Returns the channels with s != 1, by the up projection's module name."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fused))
    graph = model.graph
    ups = [up for up, _, _ in _gelu_readers(graph) if _module_of(up.name) in given]
    inits = {i.name: i for i in graph.initializer}
    before: dict[str, list[Any]] = {}
    done: Channels = {}
    for up in ups:
        s = np.asarray(given[_module_of(up.name)], dtype=np.float32)
        w = numpy_helper.to_array(inits[up.input[1]])
        if s.shape != (w.shape[0],):
            raise ConfigError(f"{_module_of(up.name)}: {len(s)} input scales for a {w.shape[0]}-wide input")
        inits[up.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), up.input[1]))
        graph.initializer.append(numpy_helper.from_array((np.float32(1) / s).astype(np.float32), f"{up.name}_in_scale"))
        before[up.name] = [helper.make_node("Mul", [up.input[0], f"{up.name}_in_scale"], [f"{up.name}_in_scaled"],
                                            name=f"{up.name}_in_scale")]  # fmt: skip
        up.input[0] = f"{up.name}_in_scaled"
        done[_module_of(up.name)] = [int(c) for c in np.flatnonzero(s != 1)]
    splice(graph, before=before)
    onnx.save(model, str(out))
    return done
