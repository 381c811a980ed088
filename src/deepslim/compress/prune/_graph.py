"""The channel dependency graph: which layers must lose the same channels together.

The model is captured with torch.fx, or torch.export when fx cannot trace it (:mod:`._capture`), with shapes on every
node; layers are recognized by their layer kind (:mod:`deepslim.models.adapters`), not their exact class. Every tensor
value gets a *layout*: which dimension holds channels and which *channel spaces* fill it (a concatenation holds several,
side by side; a flatten spreads each channel over ``unit`` consecutive features). A layer that makes channels (a
convolution's or linear layer's output, an embedding's columns, an attention module's heads) opens a new space;
operations that tie channels together — residual additions, depthwise convolutions, normalization — merge spaces (union-
find). A merged space is a *group*: removing channel i removes it from every member ("conv1 out ⇒ bn1 ⇒ layer1.0.conv1
in ⇒ …").

Anything the graph cannot prove safe blocks the spaces it touches — reshapes that mix channels, channel slicing or
padding, unknown operators, the model's inputs and outputs — so pruning can shrink a model but never break it. Layers
whose weight is also read elsewhere (tied, shared, parametrized) or that run twice are left whole and named; and
``prune_channels_`` still runs the pruned model and undoes the surgery if it fails.
Idea after Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023; this implementation is our own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from deepslim.compress._capture import Capture, aten_name, capture, owner_of
from deepslim.compress.prune._rules import Layout, OpRules, Space, _same_rank, _shape, _tensor_args
from deepslim.errors import UnsupportedModelError
from deepslim.models.adapters import Axis, Role, is_user_kind, layer_kind, weight_of, weight_parametrizations
from deepslim.models.transformer import SelfAttention

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
                 nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.MaxPool1d, nn.AvgPool1d, nn.Upsample, nn.ELU, nn.Mish, nn.Softplus)  # fmt: skip


@dataclass
class DependencyGraph:
    model: nn.Module
    spaces: list[Space] = field(default_factory=list)
    consumers: list[tuple[str, Layout]] = field(default_factory=list)  # modules whose input channels follow a layout
    norms: list[tuple[str, Layout]] = field(default_factory=list)  # batch/layer norms along a layout
    producer_space: dict[str, int] = field(default_factory=dict)
    unknown_layers: list[str] = field(default_factory=list)  # layers with weights the graph cannot follow
    capture: str = "torch.fx"  # how the graph was captured
    left_whole: dict[str, str] = field(default_factory=dict)  # layer -> why its channels stay

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
    """Capture ``model`` (torch.fx, else torch.export) and group its channels.

    Raises UnsupportedModelError when no capture works. Layers the captured graph does not show as layers, layers
    whose weight is used elsewhere too (tied, shared, parametrized) and layers called more than once are left whole:
    every group they touch is blocked, and ``graph.left_whole`` says why.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    cap = capture(model, args, leaf=lambda m: isinstance(m, SelfAttention) or is_user_kind(m))
    builder = _Builder(DependencyGraph(model, capture=cap.how), dict(model.named_modules()), cap)
    for node in cap.graph.nodes:
        try:
            builder.visit(node)
        except Exception as exc:  # a node the rules did not foresee: refuse, naming it, rather than guess
            raise UnsupportedModelError(
                f"the dependency graph cannot follow {node.name} ({node.target}) of the {cap.how} graph: {exc}; add "
                "the layers around it to ignore=(...) or prune with MagnitudePruneConfig"
            ) from exc
    builder.finish()
    return builder.graph


def _constant_dim(shape: tuple[int, ...]) -> int:
    """The dimension of a constant that can line up with channels: its last one of size > 1 (trailing size-1
    dimensions only broadcast), so a per-channel (C, 1, 1) scale meets a (N, C, H, W) map's channels."""
    return max((i for i, s in enumerate(shape) if s > 1), default=len(shape) - 1)


class _Builder(OpRules):
    def __init__(self, graph: DependencyGraph, modules: dict[str, nn.Module], cap: Capture):
        self.graph, self.modules, self.cap = graph, modules, cap
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.layer_uses: set[tuple[fx.Node, fx.Node]] = set()  # (parameter node, layer node) reading it as a layer
        self.calls: dict[str, int] = {}  # layer -> times it ran

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
        if node in self.cap.params or node.op == "get_attr":
            shape = _shape(node)
            dim = _constant_dim(shape) if shape else None
            self.layouts[node] = self.fresh(node, "used as a tensor constant", dim=dim)
        elif node.op == "placeholder":
            self.layouts[node] = self.fresh(node, "model input")
        elif node.op == "output":
            for arg in _tensor_args(node, self.layouts):
                self.block(self.layouts[arg], "reaches the model output")
        elif node.op == "call_module":
            self.layouts[node] = self.module(node, str(node.target), self.modules[str(node.target)], node.args[0])
        elif (layer := self.layer_op(node)) is not None:
            self.layouts[node] = self.module(node, *layer)
        else:
            self.layouts[node] = self.function(node)

    def layer_op(self, node: fx.Node) -> tuple[str, nn.Module, Any] | None:
        """(name, module, input node) when ``node`` is an ATen operator of a layer reading that layer's parameter."""
        op = aten_name(node.target)
        for arg in node.args:
            fqn = self.cap.params.get(arg) if isinstance(arg, fx.Node) else None
            m = self.modules.get(owner_of(fqn)) if fqn else None
            if fqn is None or m is None:
                continue
            kind = layer_kind(m)
            if kind is not None and op is not None and op in kind.ops and not weight_parametrizations(m):
                self.layer_uses.update((a, node) for a in node.args if isinstance(a, fx.Node) and a in self.cap.params)
                return owner_of(fqn), m, node.args[kind.input_arg] if len(node.args) > kind.input_arg else None
        return None

    def finish(self) -> None:
        """Leave whole the layers whose parameters something else reads, that run twice, or the graph never saw."""
        pinned: dict[str, str] = {}
        for pnode, fqn in self.cap.params.items():
            owner = owner_of(fqn)
            foreign = [u for u in pnode.users if (pnode, u) not in self.layer_uses and u.op != "call_module"]
            if foreign and owner in self.modules and "lifted_tensor" not in fqn:
                used = f"its {fqn.rpartition('.')[2]} is read directly by {foreign[0].name}"
                pinned.setdefault(owner, used if layer_kind(self.modules[owner]) else used + "; channels it meets stay")
        for name, m in self.modules.items():
            if weight_parametrizations(m):
                pinned[name] = (f"its weight is computed by {', '.join(weight_parametrizations(m))}; remove the "
                                "parametrization (torch.nn.utils.parametrize.remove_parametrizations) to prune it")
        pinned.update({n: f"it runs {k} times in one forward" for n, k in self.calls.items() if k > 1})
        pinned.update({n: f"its weight is shared with {other}" for n, other in _shared_weights(self.modules).items()})
        called = tuple(n + "." for n in self.calls)
        for name, m in self.modules.items():
            direct = any(True for _ in m.parameters(recurse=False))
            if direct and name not in self.calls and not name.startswith(called) and name not in pinned:
                kind = layer_kind(m)
                what = f"{kind.name} not seen as a layer" if kind else "parameters the graph cannot follow"
                pinned[name] = f"{what} in the {self.cap.how} graph"
        for name, why in pinned.items():
            self._pin(name, why)
        self.graph.left_whole = {n: w for n, w in pinned.items() if n}

    def _pin(self, name: str, why: str) -> None:
        reason = f"{name}: {why}"
        for s in self.graph.spaces:
            if name in (*s.producers, *s.depthwise, *s.heads):
                root = s.find()
                root.blocked = root.blocked or reason
        for layer, layout in (*self.graph.consumers, *self.graph.norms):
            if layer == name:
                self.block(layout, reason)

    def inputs(self, node: fx.Node) -> list[Layout]:
        found = [self.layouts[a] for a in _tensor_args(node, self.layouts)]
        return [layout for layout in found if layout is not None]

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

    def module(self, node: fx.Node, name: str, m: nn.Module, arg: Any) -> Layout | None:
        self.calls[name] = self.calls.get(name, 0) + 1
        kind = layer_kind(m)
        src = self.layouts.get(arg) if isinstance(arg, fx.Node) else None
        if kind is not None and kind.in_dim is None and kind.role is Role.PRODUCER:  # an embedding table's columns
            shape = _shape(node) or ()
            return self._produce(name, int(weight_of(m).shape[kind.out_dim]), len(shape), len(shape) - 1)
        if src is None:
            return self.opaque(node, f"{name} ({type(m).__name__}) has no traced tensor input")
        if kind is not None:
            src = self.at_dim(arg, src, kind.channel_dim(m, src.ndim))
            if src.dim == kind.channel_dim(m, src.ndim):
                found = self._norm(name, m, src) if kind.role is Role.NORM else self._layer(node, name, m, kind, src)
                if found is not None:
                    return found
            return self.opaque(node, f"{name} ({type(m).__name__}) reads channels the graph cannot line up")
        if isinstance(m, SelfAttention):
            src = self.at_dim(arg, src, -1)
            if src.dim == src.ndim - 1:
                return self._attention(name, m, src)
        if isinstance(m, _PASS_MODULES) and _same_rank(node, src):
            return src
        if isinstance(m, nn.Flatten):
            return self._flatten(node, src, m.start_dim, m.end_dim)
        if any(True for _ in m.parameters()):
            self.graph.unknown_layers.append(f"{name} ({type(m).__name__})")
        return self.opaque(node, f"{name} ({type(m).__name__}) is not understood by the dependency graph")

    def _layer(self, node: fx.Node, name: str, m: nn.Module, kind: Any, src: Layout) -> Layout | None:
        out_shape = _shape(node)
        if out_shape is None:
            return None
        out_dim, width = kind.channel_dim(m, len(out_shape)), int(weight_of(m).shape[kind.out_dim])
        groups = getattr(m, "groups", 1)
        if kind.axis is Axis.CONV and src.unit != 1:
            return None
        if groups == 1:
            self.graph.consumers.append((name, src))
            self._read(src, f"{name} in")
            return self._produce(name, width, len(out_shape), out_dim)
        if groups == width == src.width and len(src.segments) == 1:
            self.graph.spaces[src.segments[0][0]].depthwise.append(name)
            return src
        self.block(src, f"input of grouped convolution {name}")
        out = self._produce(name, width, len(out_shape), out_dim)
        self.graph.spaces[out.segments[0][0]].groups = groups
        return out

    def _norm(self, name: str, m: nn.Module, src: Layout) -> Layout | None:
        per_channel = (len(getattr(m, "normalized_shape", (0,))) == 1
                       and getattr(m, "num_groups", src.width) == src.width)  # fmt: skip
        if src.unit != 1 or not per_channel:
            return None
        self.graph.norms.append((name, src))
        self._read(src, name)
        return src

    def _attention(self, name: str, m: SelfAttention, src: Layout) -> Layout:
        inputs = ("qkv",) if hasattr(m, "qkv") else ("query", "key", "value")
        for sub in inputs:
            self.graph.consumers.append((f"{name}.{sub}", src))
        self._read(src, f"{name} in")
        heads = self.new_space(m.num_heads, f"{name} heads")
        heads.heads.append(name)
        return self._produce(f"{name}.proj", m.proj.out_features, src.ndim, src.ndim - 1)

    def _produce(self, name: str, width: int, ndim: int, dim: int) -> Layout:
        space = self.new_space(width, f"{name} out")
        space.producers.append(name)
        self.graph.producer_space[name] = space.id
        return Layout(dim, ndim, ((space.id, width),))

    def _read(self, layout: Layout, label: str) -> None:
        for sid, _ in layout.segments:
            self.graph.spaces[sid].readers.append(label)
def _shared_weights(modules: dict[str, nn.Module]) -> dict[str, str]:
    """Layers holding a parameter object that another layer holds too (tied embeddings): layer -> the others."""
    holders: dict[int, list[str]] = {}
    for name, m in modules.items():
        for p in m.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name)
    return {n: ", ".join(o for o in names if o != n) for names in holders.values() if len(names) > 1 for n in names}


