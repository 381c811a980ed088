"""The channel dependency graph: which layers must lose the same channels together.

The model is traced with torch.fx and its shapes propagated. Every tensor value gets a *layout*: which dimension holds
channels and which *channel spaces* fill it (a concatenation holds several, side by side; a flatten spreads each
channel over ``unit`` consecutive features). A layer that makes channels (a convolution's or linear layer's output, an
embedding's columns, an attention module's heads) opens a new space; operations that tie channels together — residual
additions, depthwise convolutions, normalization — merge spaces (union-find). A merged space is a *group*: removing
channel i removes it from every member ("conv1 out ⇒ bn1 ⇒ layer1.0.conv1 in ⇒ …").

Anything the graph cannot prove safe blocks the spaces it touches — reshapes that mix channels, channel slicing or
padding, unknown operators, the model's inputs and outputs — so pruning can shrink a model but never break it.
Idea after Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023; this implementation is our own.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from deepslim._modes import inference_mode
from deepslim.errors import UnsupportedModelError
from deepslim.models.transformer import SelfAttention

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
                 nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.MaxPool1d, nn.AvgPool1d, nn.Upsample, nn.ELU, nn.Mish, nn.Softplus)  # fmt: skip
_PASS_FUNCS = {torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.nn.functional.relu, torch.nn.functional.relu6,
               torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.hardswish,
               torch.nn.functional.dropout, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
               torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_max_pool2d,
               torch.nn.functional.interpolate, torch.nn.functional.hardtanh, torch.nn.functional.leaky_relu,
               torch.clone, torch.nn.functional.sigmoid, torch.nn.functional.tanh}  # fmt: skip
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to", "type_as",
                 "sigmoid_", "clamp", "clamp_", "expand"}  # fmt: skip
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, torch.add,
           torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCE = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}


class Space:
    """A set of channels that are removed together; ``find()`` gives the group's representative."""

    def __init__(self, sid: int, width: int, origin: str):
        self.id, self.width, self.origin = sid, width, origin
        self.parent: Space = self
        self.blocked: str | None = None
        self.groups = 1  # channels must be removed equally from each of this many contiguous blocks
        self.producers: list[str] = []  # modules whose output channels (rows) these are
        self.depthwise: list[str] = []  # depthwise convolutions filtering these channels one by one
        self.heads: list[str] = []  # attention modules whose heads these are (width = number of heads)
        self.readers: list[str] = []  # consumers and norms reading these channels (for display)

    def find(self) -> Space:
        root = self
        while root.parent is not root:
            root = root.parent
        self.parent = root
        return root


@dataclass(frozen=True)
class Layout:
    """Where channels live in a tensor: dimension ``dim`` holds ``segments`` of (space id, width), ``unit`` each."""

    dim: int
    ndim: int
    segments: tuple[tuple[int, int], ...]
    unit: int = 1

    @property
    def width(self) -> int:
        return sum(w for _, w in self.segments)


@dataclass
class DependencyGraph:
    model: nn.Module
    spaces: list[Space] = field(default_factory=list)
    consumers: list[tuple[str, Layout]] = field(default_factory=list)  # modules whose input channels follow a layout
    norms: list[tuple[str, Layout]] = field(default_factory=list)  # batch/layer norms along a layout
    producer_space: dict[str, int] = field(default_factory=dict)
    unknown_layers: list[str] = field(default_factory=list)  # layers with weights the graph cannot follow

    def groups(self) -> Iterator[Space]:
        """Representatives of every group, in the order the model first produces them."""
        seen = set()
        for s in self.spaces:
            root = s.find()
            if root.id not in seen:
                seen.add(root.id)
                yield root

    def members(self, root: Space) -> list[Space]:
        return [s for s in self.spaces if s.find() is root]

    def describe(self, root: Space) -> str:
        """One group as text: ``conv1 out ⇒ bn1 ⇒ layer1.0.conv1 in (64 channels)``."""
        parts: list[str] = []
        for s in self.members(root):
            parts += [f"{p} out" for p in s.producers] + [f"{d} (depthwise)" for d in s.depthwise]
            parts += [f"{h} heads" for h in s.heads] + s.readers
        unit = "heads" if root.heads else "channels"
        status = f"; not prunable: {root.blocked}" if root.blocked else ""
        return f"{' ⇒ '.join(dict.fromkeys(parts)) or root.origin} ({root.width} {unit}{status})"


def build_graph(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...]) -> DependencyGraph:
    """Trace ``model`` and group its channels. Raises UnsupportedModelError if torch.fx cannot trace it."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    params = list(inspect.signature(model.forward).parameters.values())[len(args) :]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model, concrete_args=concrete or None))
    except Exception as exc:
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(model).__name__}: {str(exc).splitlines()[0]}. Structured pruning needs a "
            "traceable forward (no Python control flow on tensor values or shapes); unstructured pruning "
            "(MagnitudePruneConfig) works on any model"
        ) from exc
    with inference_mode(model), torch.no_grad():
        ShapeProp(gm).propagate(*args)
    builder = _Builder(DependencyGraph(model), dict(model.named_modules()))
    for node in gm.graph.nodes:
        builder.visit(node)
    return builder.graph


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SelfAttention) or super().is_leaf_module(m, qualname)


class _Builder:
    def __init__(self, graph: DependencyGraph, modules: dict[str, nn.Module]):
        self.graph, self.modules = graph, modules
        self.layouts: dict[fx.Node, Layout | None] = {}

    # -- spaces -----------------------------------------------------------------------------------------------
    def new_space(self, width: int, origin: str, blocked: str | None = None) -> Space:
        space = Space(len(self.graph.spaces), width, origin)
        space.blocked = blocked
        self.graph.spaces.append(space)
        return space

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for sid, _ in layout.segments:
            root = self.graph.spaces[sid].find()
            root.blocked = root.blocked or reason

    def union(self, a: Space, b: Space) -> None:
        ra, rb = a.find(), b.find()
        if ra is rb:
            return
        rb.parent = ra
        ra.blocked = ra.blocked or rb.blocked
        if ra.groups != rb.groups:
            ra.groups = math.lcm(ra.groups, rb.groups)
        if ra.heads or rb.heads:
            ra.blocked = ra.blocked or "attention heads coupled with channels"

    def fresh(self, node: fx.Node, reason: str, dim: int | None = None) -> Layout | None:
        """A blocked layout for a tensor we cannot follow (None for non-tensors)."""
        shape = _shape(node)
        if shape is None:
            return None
        ndim = len(shape)
        d = (1 if ndim >= 2 else 0) if dim is None else dim
        if ndim == 0:
            return None
        space = self.new_space(int(shape[d]), f"{node.name}", blocked=reason)
        return Layout(d, ndim, ((space.id, int(shape[d])),))

    # -- nodes ------------------------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.layouts[node] = self.fresh(node, "model input")
        elif node.op == "get_attr":
            shape = _shape(node)
            self.layouts[node] = self.fresh(node, "used as a tensor constant", dim=len(shape) - 1 if shape else None)
        elif node.op == "output":
            for arg in _tensor_args(node, self.layouts):
                self.block(self.layouts[arg], "reaches the model output")
        elif node.op == "call_module":
            self.layouts[node] = self.module(node, self.modules[node.target])
        else:
            self.layouts[node] = self.function(node)

    def inputs(self, node: fx.Node) -> list[Layout]:
        return [self.layouts[a] for a in _tensor_args(node, self.layouts) if self.layouts[a] is not None]

    def opaque(self, node: fx.Node, why: str) -> Layout | None:
        for layout in self.inputs(node):
            self.block(layout, why)
        return self.fresh(node, why)

    def at_dim(self, arg: fx.Node, src: Layout, dim: int) -> Layout:
        """``src`` read with channels in ``dim``: a tensor whose spaces are all blocked can be read along any dim."""
        dim %= src.ndim
        if src.dim == dim or not all(self.graph.spaces[sid].find().blocked for sid, _ in src.segments):
            return src
        return self.fresh(arg, "model input", dim=dim) or src

    def module(self, node: fx.Node, m: nn.Module) -> Layout | None:
        name = str(node.target)
        src = self.layouts.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if src is None:
            return self.opaque(node, f"{name} ({type(m).__name__}) has no traced tensor input")
        last = isinstance(m, (nn.Linear, nn.LayerNorm, SelfAttention))
        src = self.at_dim(node.args[0], src, -1 if last else 1)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and src.dim == 1 and src.unit == 1:
            if m.groups == 1:
                self.graph.consumers.append((name, src))
                self._read(src, f"{name} in")
                return self._produce(name, m.out_channels, src.ndim, 1)
            if m.groups == m.in_channels == m.out_channels and len(src.segments) == 1:
                space = self.graph.spaces[src.segments[0][0]]
                space.depthwise.append(name)
                return src
            self.block(src, f"input of grouped convolution {name}")
            out = self._produce(name, m.out_channels, src.ndim, 1)
            self.graph.spaces[out.segments[0][0]].groups = m.groups
            return out
        if isinstance(m, nn.Linear) and src.dim == src.ndim - 1:
            self.graph.consumers.append((name, src))
            self._read(src, f"{name} in")
            return self._produce(name, m.out_features, src.ndim, src.ndim - 1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and src.dim == 1 and src.unit == 1:
            self.graph.norms.append((name, src))
            self._read(src, name)
            return src
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1 and src.dim == src.ndim - 1 and src.unit == 1:
            self.graph.norms.append((name, src))
            self._read(src, name)
            return src
        if isinstance(m, nn.Embedding):
            return self._produce(name, m.embedding_dim, len(_shape(node) or ()), len(_shape(node) or ()) - 1)
        if isinstance(m, SelfAttention) and src.dim == src.ndim - 1:
            inputs = ("qkv",) if hasattr(m, "qkv") else ("query", "key", "value")
            for sub in inputs:
                self.graph.consumers.append((f"{name}.{sub}", src))
            self._read(src, f"{name} in")
            heads = self.new_space(m.num_heads, f"{name} heads")
            heads.heads.append(name)
            return self._produce(f"{name}.proj", m.proj.out_features, src.ndim, src.ndim - 1)
        if isinstance(m, _PASS_MODULES) and _same_rank(node, src):
            return src
        if isinstance(m, nn.Flatten):
            return self._flatten(node, src, m.start_dim, m.end_dim)
        if any(True for _ in m.parameters()):
            self.graph.unknown_layers.append(f"{name} ({type(m).__name__})")
        return self.opaque(node, f"{name} ({type(m).__name__}) is not understood by the dependency graph")

    def _produce(self, name: str, width: int, ndim: int, dim: int) -> Layout:
        space = self.new_space(width, f"{name} out")
        space.producers.append(name)
        self.graph.producer_space[name] = space.id
        return Layout(dim, ndim, ((space.id, width),))

    def _read(self, layout: Layout, label: str) -> None:
        for sid, _ in layout.segments:
            self.graph.spaces[sid].readers.append(label)

    def function(self, node: fx.Node) -> Layout | None:
        target, ins = node.target, self.inputs(node)
        method = target if node.op == "call_method" else None
        if _shape(node) is None:  # sizes, tuples of chunks, …
            if ins and (method in ("split", "chunk", "unbind") or target in (torch.split, torch.chunk)):
                for layout in ins:
                    self.block(layout, f"channels split by {node.name}")
            return None
        if not ins:
            return self.fresh(node, f"{node.name} creates a tensor")
        src = ins[0]
        if target in _PASS_FUNCS or method in _PASS_METHODS:
            return src if _same_rank(node, src) else self.opaque(node, f"{node.name} changes the rank")
        if target in _BINARY or method in _BINARY_METHODS:
            return self._binary(node, ins)
        if target is torch.cat:
            return self._cat(node, ins)
        if target is torch.flatten or method == "flatten":
            start = _arg(node, 1, "start_dim", 0)
            end = _arg(node, 2, "end_dim", -1)
            return self._flatten(node, src, start, end)
        if method in ("transpose", "permute") or target in (torch.transpose, torch.permute):
            return self._move(node, src)
        if target in _REDUCE or method in _REDUCE_METHODS:
            return self._reduce(node, src)
        if target is operator.getitem:
            return self._getitem(node, src)
        if target is torch.nn.functional.pad:
            pad = _arg(node, 1, "pad", ())
            if len(pad) // 2 <= src.ndim - 1 - src.dim:  # pads trailing (spatial) dimensions only
                return src
        return self.opaque(node, f"{node.name} ({getattr(target, '__name__', target)}) may mix channels")

    def _binary(self, node: fx.Node, ins: list[Layout]) -> Layout | None:
        out_shape = _shape(node)
        if len(ins) == 1:
            return ins[0] if len(out_shape) == ins[0].ndim else self.opaque(node, "broadcast changes the rank")
        a, b = ins[0], ins[1]
        ndim = len(out_shape)
        a_dim, b_dim = a.dim + ndim - a.ndim, b.dim + ndim - b.ndim
        if a_dim == b_dim and a.unit == b.unit and [w for _, w in a.segments] == [w for _, w in b.segments]:
            for (sa, _), (sb, _) in zip(a.segments, b.segments, strict=True):
                self.union(self.graph.spaces[sa], self.graph.spaces[sb])
            return Layout(a_dim, ndim, a.segments, a.unit)
        for one, other in ((a, b), (b, a)):  # a per-sample scalar broadcast against the channels (e.g. x * gate)
            if one.width == 1 and one.unit == 1:
                self.block(one, f"broadcast in {node.name}")
                return Layout(other.dim + ndim - other.ndim, ndim, other.segments, other.unit)
        return self.opaque(node, f"{node.name} combines tensors whose channels do not line up")

    def _cat(self, node: fx.Node, ins: list[Layout]) -> Layout | None:
        dim = _arg(node, 1, "dim", 0)
        dim = dim % ins[0].ndim
        if all(layout.dim == dim and layout.unit == ins[0].unit for layout in ins):
            segments = tuple(seg for layout in ins for seg in layout.segments)
            return Layout(dim, ins[0].ndim, segments, ins[0].unit)
        if all(layout.dim != dim for layout in ins):
            return self._binary(node, ins[:2]) if len(ins) == 2 else self.opaque(node, "cat of many along tokens")
        return self.opaque(node, f"{node.name} concatenates channels with other dimensions")

    def _flatten(self, node: fx.Node, src: Layout, start: int, end: int) -> Layout | None:
        shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if shape is None:
            return self.opaque(node, "flatten of an unknown shape")
        ndim = len(shape)
        start, end = start % ndim, end % ndim
        if src.dim < start:
            return Layout(src.dim, ndim - (end - start), src.segments, src.unit)
        if src.dim > end:
            return Layout(src.dim - (end - start), ndim - (end - start), src.segments, src.unit)
        if src.dim == start:
            inner = math.prod(int(s) for s in shape[start + 1 : end + 1])
            return Layout(start, ndim - (end - start), src.segments, src.unit * inner)
        return self.opaque(node, f"{node.name} flattens channels inside another dimension")

    def _move(self, node: fx.Node, src: Layout) -> Layout | None:
        args = [a for a in node.args[1:]]
        if node.target in ("transpose", torch.transpose):
            a, b = (int(x) % src.ndim for x in args[:2])
            dim = b if src.dim == a else a if src.dim == b else src.dim
            return Layout(dim, src.ndim, src.segments, src.unit)
        perm = [int(x) % src.ndim for x in (args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)]
        return Layout(perm.index(src.dim), src.ndim, src.segments, src.unit)

    def _reduce(self, node: fx.Node, src: Layout) -> Layout | None:
        dims = _arg(node, 1, "dim", None)
        keep = _arg(node, 2, "keepdim", False)
        if dims is None:
            return self.opaque(node, "reduction over all dimensions")
        dims = {int(d) % src.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if src.dim in dims:
            return self.opaque(node, f"{node.name} reduces over channels")
        if keep:
            return src
        return Layout(src.dim - sum(d < src.dim for d in dims), src.ndim - len(dims), src.segments, src.unit)

    def _getitem(self, node: fx.Node, src: Layout) -> Layout | None:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is Ellipsis or i is None or isinstance(i, fx.Node) for i in index):
            return self.opaque(node, f"{node.name} uses advanced indexing")
        dim, removed = src.dim, 0
        for pos, item in enumerate(index):
            if pos == src.dim:
                if item != slice(None):
                    return self.opaque(node, f"{node.name} selects channels")
            elif isinstance(item, int) and pos < src.dim:
                removed += 1
        return Layout(dim - removed, len(_shape(node)), src.segments, src.unit)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _same_rank(node: fx.Node, src: Layout) -> bool:
    shape = _shape(node)
    return shape is not None and len(shape) == src.ndim


def _tensor_args(node: fx.Node, layouts: dict[fx.Node, Layout | None]) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a in layouts else None)
    return found


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)
