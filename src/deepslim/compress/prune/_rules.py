"""Rules for the operators between layers: how each moves, merges, reshapes or blocks channel spaces.

Kept apart from the graph builder (:mod:`._graph`) so that each reads in one sitting; the builder mixes them in.
Every rule either follows the channels exactly or blocks them (``opaque``): an operator we do not understand can make
pruning refuse a group, never make it wrong.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from deepslim.compress._capture import (
    ATEN_BINARY,
    ATEN_PASS,
    ATEN_POOL,
    ATEN_REDUCE,
    ATEN_VIEW,
    aten_name,
    shape_of,
)

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


class OpRules:
    """Channel rules for functions, methods and ATen operators (mixed into the graph builder)."""

    graph: Any

    def block(self, layout: Layout | None, reason: str) -> None: ...
    def union(self, a: Space, b: Space) -> None: ...
    def fresh(self, node: fx.Node, reason: str, dim: int | None = None) -> Layout | None: ...
    def inputs(self, node: fx.Node) -> list[Layout]:
        raise NotImplementedError
    def opaque(self, node: fx.Node, why: str) -> Layout | None: ...

    def function(self, node: fx.Node) -> Layout | None:
        target, ins = node.target, self.inputs(node)
        method = target if node.op == "call_method" else None
        op = aten_name(target)
        if _shape(node) is None:  # sizes, tuples of chunks, …
            if ins and (method in ("split", "chunk", "unbind") or target in (torch.split, torch.chunk)
                        or op in ("split", "split_with_sizes", "chunk", "unbind")):  # fmt: skip
                for layout in ins:
                    self.block(layout, f"channels split by {node.name}")
            elif ins and _holds_tensors(node):  # max/min/sort/topk over a dim: values and indices, not followed
                for layout in ins:
                    self.block(layout, f"{node.name} returns several tensors")
            return None
        if not ins:
            return self.fresh(node, f"{node.name} creates a tensor")
        src = ins[0]
        if op in ATEN_POOL:
            spatial_ok = src.dim < src.ndim - ATEN_POOL[op] and _same_rank(node, src)
            return src if spatial_ok else self.opaque(node, f"{node.name} pools over channels")
        if target in _PASS_FUNCS or method in _PASS_METHODS or op in ATEN_PASS:
            return src if _same_rank(node, src) else self.opaque(node, f"{node.name} changes the rank")
        if target in _BINARY or method in _BINARY_METHODS or op in ATEN_BINARY:
            return self._binary(node, ins)
        if target is torch.cat or op == "cat":
            return self._cat(node, ins)
        if (target is torch.flatten or method == "flatten") and op is None:
            return self._flatten(node, src, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if op in ATEN_VIEW:
            return self._view(node, src)
        if method in ("transpose", "permute") or target in (torch.transpose, torch.permute) or op in ("transpose",
                                                                                                   "permute"):
            return self._move(node, src)
        if target in _REDUCE or method in _REDUCE_METHODS or op in ATEN_REDUCE:
            return self._reduce(node, src)
        if target is operator.getitem:
            return self._getitem(node, src)
        if op in ("slice", "select"):
            return self._slice(node, src, op)
        if target is torch.nn.functional.pad or op in ("pad", "constant_pad_nd"):
            pad = _arg(node, 1, "pad", ())
            if len(pad) // 2 <= src.ndim - 1 - src.dim:  # pads trailing (spatial) dimensions only
                return src
        return self.opaque(node, f"{node.name} ({getattr(target, '__name__', target)}) may mix channels")

    def _view(self, node: fx.Node, src: Layout) -> Layout | None:
        """A reshape keeps channels if the dimensions before them multiply to the same size on both sides and the
        channel dimension survives whole (possibly merged with the dimensions after it: ``unit`` grows)."""
        before, after = _dims(node.args[0]), _dims(node)
        before_size = math.prod(before[: src.dim])
        for e in range(len(after)):
            if math.prod(after[:e]) != before_size:
                continue
            merged = before[src.dim]
            for k in range(src.dim + 1, len(before) + 1):
                if merged == after[e]:
                    return Layout(e, len(after), src.segments, src.unit * (merged // before[src.dim]))
                if k < len(before):
                    merged *= before[k]
        return self.opaque(node, f"{node.name} ({aten_name(node.target)}) splits or mixes channels")

    def _slice(self, node: fx.Node, src: Layout, op: str) -> Layout | None:
        dim = _int(_arg(node, 1, "dim", 0)) % src.ndim
        if op == "select":
            if dim == src.dim:
                return self.opaque(node, f"{node.name} selects one channel")
            return Layout(src.dim - (dim < src.dim), src.ndim - 1, src.segments, src.unit)
        if dim == src.dim and _dims(node)[dim] != _dims(node.args[0])[dim]:
            return self.opaque(node, f"{node.name} slices channels")
        return src if _same_rank(node, src) else self.opaque(node, f"{node.name} changes the rank")

    def _binary(self, node: fx.Node, ins: list[Layout]) -> Layout | None:
        out_shape = _dims(node)
        if len(ins) == 1:
            return ins[0] if len(out_shape) == ins[0].ndim else self.opaque(node, "broadcast changes the rank")
        a, b = ins[0], ins[1]
        ndim = len(out_shape)
        a_dim, b_dim = a.dim + ndim - a.ndim, b.dim + ndim - b.ndim
        if a_dim == b_dim and a.unit == b.unit and [w for _, w in a.segments] == [w for _, w in b.segments]:
            for (sa, _), (sb, _) in zip(a.segments, b.segments, strict=True):
                self.union(self.graph.spaces[sa], self.graph.spaces[sb])
            return Layout(a_dim, ndim, a.segments, a.unit)
        shapes = _operand_shapes(node, 2)
        for one, other, shape in ((a, b, shapes[0]), (b, a, shapes[1])):
            # a per-sample scalar broadcast against the channels (e.g. x * gate), not a (C, 1, 1) tensor whose own
            # width-1 dimension merely happens to be the one its layout names
            if one.width == 1 and one.unit == 1 and _size_one_at(shape, other.dim + ndim - other.ndim, ndim):
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
        if node.target in ("transpose", torch.transpose) or aten_name(node.target) == "transpose":
            a, b = (_int(x) % src.ndim for x in args[:2])
            dim = b if src.dim == a else a if src.dim == b else src.dim
            return Layout(dim, src.ndim, src.segments, src.unit)
        order = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        perm = [_int(x) % src.ndim for x in order]
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
        return Layout(dim - removed, len(_dims(node)), src.segments, src.unit)


_shape = shape_of


def _holds_tensors(node: fx.Node) -> bool:
    """Whether a node without a shape of its own returns tensors (a tuple of them), not sizes or other values."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        meta = node.meta.get("val")
    return isinstance(meta, (tuple, list)) and any(_is_tensor_meta(m) for m in meta)


def _is_tensor_meta(value: Any) -> bool:
    """A tensor's metadata (fx's TensorMetadata or a fake tensor), not a size or another value."""
    return isinstance(getattr(value, "shape", None), (torch.Size, tuple))


def _dims(node: Any) -> tuple[int, ...]:
    """The static shape of a tensor node; a node without one stops the rule (the builder then refuses by name)."""
    shape = shape_of(node)
    if shape is None:
        raise ValueError(f"{getattr(node, 'name', node)} has no static shape")
    return shape


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise ValueError(f"expected a constant integer, got {value!r}")
    return value


def _operand_shapes(node: fx.Node, n: int) -> list[tuple[int, ...] | None]:
    """The static shapes of a node's ``n`` tensor operands in argument order (all None when they are not exactly
    ``n`` non-scalar tensors: the caller then cannot tell which shape is whose)."""
    found: list[tuple[int, ...]] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(s) if (s := _shape(a)) else None)
    return list(found) if len(found) == n else [None] * n


def _size_one_at(shape: tuple[int, ...] | None, out_dim: int, ndim: int) -> bool:
    """Whether a tensor of ``shape``, broadcast to ``ndim`` dimensions, has size 1 at ``out_dim`` (unknown: yes)."""
    if shape is None:
        return True
    d = out_dim - (ndim - len(shape))
    return d < 0 or shape[d] == 1


def _same_rank(node: fx.Node, src: Layout) -> bool:
    shape = _dims(node)
    return shape is not None and len(shape) == src.ndim


def _tensor_args(node: fx.Node, layouts: dict[fx.Node, Layout | None]) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a in layouts else None)
    return found


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)
