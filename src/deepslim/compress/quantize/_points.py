"""Activation quantization points between layers: the residual additions, concatenations and layer outputs that an
integer runtime quantizes, placed in the PyTorch model itself.

ONNX Runtime runs ``DequantizeLinear → Conv → QuantizeLinear`` as one QLinearConv only when the layer's output is
quantized, and a residual addition as QLinearAdd only when its inputs and output are. Without these points the
integer file runs most of a ResNet in float (3× slower than ``quantize_static`` on ResNet-18). deepslim therefore
quantizes them in the fake-quantized PyTorch model too, calibrated with the same data as the layers, so that the
model and its integer ONNX file compute the same thing and export needs no data of its own.

The model is traced with ``torch.fx``; an :class:`ActPoint` module is inserted after every activation that feeds a
residual addition or a concatenation (and after their results), and after every quantized layer whose output does
not otherwise reach a quantizer. The traced graph becomes the model's forward (its class is swapped for a subclass,
so deep copies, ``torch.export`` and later traces see the points). A point runs a custom operator
(``deepslim::fake_quant_u8``) that the ONNX exporter writes as a ``QuantizeLinear → DequantizeLinear`` pair.
Jacob et al., CVPR 2018, section 2.4 (additions and concatenations in integer arithmetic).
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from deepslim.compress.quantize._fakequant import affine_params, fake_quantize
from deepslim.compress.quantize.observers import Calibration, Observer

log = logging.getLogger(__name__)
POINTS_ATTR = "deepslim_points"  # the ModuleDict of points on the model


@torch.library.custom_op("deepslim::fake_quant_u8", mutates_args=())
def fake_quant_u8(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Unsigned 8-bit per-tensor fake quantization; exported to ONNX as QuantizeLinear → DequantizeLinear. The
    result is contiguous, in the real and the fake implementation alike (the exporter's decompositions trust the
    fake one's strides; a strided one broke a later ``view`` in Swin)."""
    return fake_quantize(x.contiguous(), scale, zero, 0, 255)


@fake_quant_u8.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _straight_through(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    return grad, None, None  # quantization-aware training passes gradients straight through


fake_quant_u8.register_autograd(_straight_through)


_EXPORTING = [False]


@contextlib.contextmanager
def exporting(model: nn.Module | None = None, *, native: bool = False) -> Iterator[None]:
    """Within the block, points run an operator the ONNX exporter writes as a QDQ pair: deepslim's custom operator
    (the dynamo exporter, with a symbolic batch), or with ``native`` PyTorch's own fake-quantization operator with
    the parameters of ``model``'s points as Python numbers (the TorchScript exporter knows it; the dynamo exporter's
    decompositions failed on Swin's attention with the custom operator). Elsewhere points run plain operators."""
    points = list(points_of(model)) if model is not None and native else []
    for p in points:
        p.export_params = (float(p.scale), int(p.zero))
    old, _EXPORTING[0] = _EXPORTING[0], True
    try:
        yield
    finally:
        _EXPORTING[0] = old
        for p in points:
            p.export_params = None


class ActPoint(nn.Module):
    """One quantized activation tensor: observes it while calibrating, then fake-quantizes it (u8, per tensor)."""

    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, method: Calibration = Calibration.MINMAX) -> None:
        super().__init__()
        # non-persistent: checkpoints and archives of the plain architecture load without them
        self.register_buffer("scale", torch.ones(()), persistent=False)
        self.register_buffer("zero", torch.zeros((), dtype=torch.int32), persistent=False)
        self.method = method
        self.observer: Observer | None = None
        self.enabled = False  # until calibrated
        self.export_params: tuple[float, int] | None = None  # (scale, zero point) while exporting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        if not self.enabled:
            return x
        if _EXPORTING[0] and self.export_params is not None:  # see exporting()
            return torch.fake_quantize_per_tensor_affine(x, *self.export_params, 0, 255)
        if _EXPORTING[0]:
            return fake_quant_u8(x, self.scale, self.zero)
        q = fake_quantize(x, self.scale, self.zero, 0, 255)
        return x + (q - x).detach() if x.requires_grad else q  # straight-through for quantization-aware training

    def freeze(self) -> None:
        if self.observer is not None and self.observer.count:
            lo, hi = self.observer.range()
            scale, zero = affine_params(torch.tensor(lo), torch.tensor(hi), 8, symmetric=False, signed=False)
            self.scale.copy_(scale)
            self.zero.copy_(zero)
            self.enabled = True
        self.observer = None

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}, zero={int(self.zero)}" if self.enabled else "uncalibrated"


_ADDS = {operator.add, operator.iadd, torch.add}
_CATS = {torch.cat, torch.concat, torch.concatenate}
_RELU_FNS = {F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh}
# ReLU6/hardtanh count as transparent: a point after the clip, calibrated there, has a range inside the clip's, so
# quantizing before the clip with it is the same (its codes saturate first); a point before the clip instead would
# be calibrated on the unclipped range (4x coarser steps on a MobileNet) and quantize twice
_TRANSPARENT_FNS = {F.relu, torch.relu, torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, torch.reshape,
                    F.relu6, F.hardtanh}  # fmt: skip
_TRANSPARENT_METHODS = {"relu", "view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
# batch norms count too: a point after one lands, in ONNX, after the convolution the exporter folds it into
_TRANSPARENT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Flatten,
                        nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d)  # fmt: skip


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from deepslim.compress.quantize.linear import QuantMixin

        return isinstance(m, (QuantMixin, ActPoint)) or super().is_leaf_module(m, qualname)


def insert_points_(model: nn.Module, example: torch.Tensor | tuple[Any, ...],
                   method: Calibration) -> list[ActPoint]:  # fmt: skip
    """Insert the quantization points into ``model`` (in place); returns them (uncalibrated). Models ``torch.fx``
    cannot trace get them from a ``torch.export`` capture, as forward hooks (:mod:`._hooked_points`); a model
    neither can capture keeps float additions (logged), and its export says which layers stay float."""
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:  # fx raises many types on untraceable code
        log.info("torch.fx cannot trace %s (%s): placing points from torch.export", type(model).__name__,
                 (str(exc).strip().splitlines() or [type(exc).__name__])[0])  # fmt: skip
        return _insert_hooked_(model, example, method)
    points = getattr(model, POINTS_ATTR, None) or nn.ModuleDict()  # quantized before: new points continue the names
    setattr(model, POINTS_ATTR, points)
    setattr(gm, POINTS_ATTR, points)  # the graph's owner checks the targets of new nodes
    _Placer(model, graph, points, method).place()
    if not points:
        delattr(model, POINTS_ATTR)
        return []
    graph.lint()
    gm = fx.GraphModule(model, graph)
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"forward": type(gm).forward, "__module__": cls.__module__,
                                                   "deepslim_traced_from": cls})  # fmt: skip
    return list(points.values())


def _as_point(m: nn.Module) -> ActPoint:
    assert isinstance(m, ActPoint)
    return m


def _free_name(points: nn.ModuleDict) -> str:
    n = len(points)
    while f"p{n}" in points:
        n += 1
    return f"p{n}"


def _insert_hooked_(model: nn.Module, example: torch.Tensor | tuple[Any, ...], method: Calibration) -> list[ActPoint]:
    from deepslim.compress.quantize._hooked_points import FEEDS_ATTR, PointHook, capture_plan

    xs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    try:
        plan, feeds = capture_plan(model, xs)
    except Exception as exc:  # torch.export raises many types
        log.warning("additions stay float: neither torch.fx nor torch.export captures %s (%s)", type(model).__name__,
                    (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])  # fmt: skip
        return []
    hooked = {id(m) for m in model.modules() if any(isinstance(h, PointHook) for h in m._forward_hooks.values())}
    plan = {name: v for name, v in plan.items() if id(model.get_submodule(name)) not in hooked}
    if not plan:
        return []
    points = getattr(model, POINTS_ATTR, None) or nn.ModuleDict()
    setattr(model, POINTS_ATTR, points)
    record: dict[str, list[str]] = getattr(model, FEEDS_ATTR, None) or {}
    new = []
    for module in plan:
        name = _free_name(points)
        points[name] = ActPoint(method)
        model.get_submodule(module).register_forward_hook(PointHook(points[name]))
        record[name] = feeds.get(module, [])
        new.append(_as_point(points[name]))
    setattr(model, FEEDS_ATTR, record)
    return new


class _Placer:
    """Decides where points go in an fx graph and inserts them."""

    def __init__(self, model: nn.Module, graph: fx.Graph, points: nn.ModuleDict, method: Calibration) -> None:
        self.modules = dict(model.named_modules())
        self.graph, self.points, self.method = graph, points, method
        self.quantized: set[fx.Node] = set()  # values that come from a quantized layer or point

    def place(self) -> None:
        from deepslim.compress.quantize.linear import QuantMixin

        for node in list(self.graph.nodes):
            mod = self.modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, QuantMixin):
                self.quantized.add(node)
            elif self._joins(node):
                self._quantize_join(node)
            elif self._transparent(node) and any(a in self.quantized for a in node.all_input_nodes):
                self.quantized.add(node)
        for node in list(self.graph.nodes):
            mod = self.modules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, QuantMixin) and mod.act_bits is not None:
                self._quantize_output(node)

    def _is_tensor(self, node: Any) -> bool:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point

    def _joins(self, node: fx.Node) -> bool:
        """An addition of two activations or a concatenation, fed by at least one quantized value."""
        if node.op == "call_function" and node.target in _ADDS or node.op == "call_method" and node.target == "add":
            args = node.args[:2]
        elif node.op == "call_function" and node.target in _CATS and isinstance(node.args[0], (list, tuple)):
            args = tuple(node.args[0])
        else:
            return False
        tensors = all(isinstance(a, fx.Node) and a.op != "get_attr" and self._is_tensor(a) for a in args)
        return tensors and len(args) >= 2 and any(a in self.quantized for a in args)

    def _transparent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), _TRANSPARENT_MODULES)
        if node.op == "call_function":
            return node.target in _TRANSPARENT_FNS
        return node.op == "call_method" and node.target in _TRANSPARENT_METHODS

    def _new_point(self, after: fx.Node, *, replace_uses: bool) -> fx.Node:
        name = f"p{len(self.points)}"
        while name in self.points:
            name = f"p{int(name[1:]) + 1}"
        self.points[name] = ActPoint(self.method)
        self.modules[f"{POINTS_ATTR}.{name}"] = self.points[name]
        with self.graph.inserting_after(after):
            p = self.graph.call_module(f"{POINTS_ATTR}.{name}", (after,))
        p.meta = dict(after.meta)
        if replace_uses:
            after.replace_all_uses_with(p, delete_user_cb=lambda user: user is not p)
        self.quantized.add(p)
        return p

    def _is_point(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.op == "call_module" and str(node.target).startswith(POINTS_ATTR)

    def _quantize_join(self, node: fx.Node) -> None:
        """Every input of the join quantized (one point per value, shared by all its users), and its result (after
        a ReLU that is its only user: quantizing before or after it is the same)."""
        for value in list(node.all_input_nodes):
            if not self._is_point(value):
                self._new_point(value, replace_uses=True)
        out = node
        users = list(node.users)
        if len(users) == 1 and self._is_relu(users[0]):
            out = users[0]
        if not any(u.op == "output" for u in out.users):
            self._new_point(out, replace_uses=True)
        else:
            self.quantized.add(out)

    def _is_relu(self, node: fx.Node) -> bool:
        return (node.op == "call_module" and isinstance(self.modules.get(node.target), (nn.ReLU, nn.Hardtanh))
                or node.op == "call_function" and node.target in _RELU_FNS
                or node.op == "call_method" and node.target in ("relu", "relu_"))  # fmt: skip

    def _quantize_output(self, node: fx.Node) -> None:
        """A quantized layer's output reaches a quantizer (a point or the next layer's input) through transparent
        operators; where it does not, a point at the end of that chain makes it an integer kernel's output."""
        from deepslim.compress.quantize.linear import QuantMixin

        end = node
        while True:
            users = list(end.users)
            if len(users) != 1:
                break
            user = users[0]
            mod = self.modules.get(user.target) if user.op == "call_module" else None
            if self._is_point(user) or isinstance(mod, QuantMixin) and mod.act_bits is not None:
                return
            if mod is not None and _kept_float(mod):  # an override keeps that layer, and so its input, in float
                return
            if not self._transparent(user):
                break
            end = user
        if not end.users or any(u.op == "output" for u in end.users) or not self._is_tensor(end):
            return  # the model's output stays float
        if all(self._is_point(u) for u in end.users):
            return
        self._new_point(end, replace_uses=True)


def _kept_float(m: nn.Module) -> bool:
    """A layer linear quantization could hold that is not quantized (an override skipped it)."""
    from deepslim.compress.quantize.linear import quantizable

    return quantizable(m)


def calibrate_points(points: list[ActPoint], method: Calibration) -> None:
    for p in points:
        p.observer = Observer(method, 8)


def share_layer_inputs_(model: nn.Module) -> int:
    """A quantized layer fed straight by a point takes the point's parameters (quantizing twice with the same
    parameters is quantizing once), so the integer graph needs one quantizer there. Returns the layers changed."""
    from deepslim.compress.quantize.linear import QuantMixin

    if not hasattr(model, POINTS_ATTR):
        return 0
    modules = dict(model.named_modules())
    from deepslim.compress.quantize._hooked_points import FEEDS_ATTR

    if hasattr(model, FEEDS_ATTR):  # points placed as hooks: the capture recorded which layers they feed
        return _share_recorded(model, getattr(model, FEEDS_ATTR), modules)
    graph = _Tracer().trace(model)
    changed = 0
    for node in graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, QuantMixin) and mod.act_bits == 8 and node.args:
            src = node.args[0]
            point = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
            if isinstance(point, ActPoint) and point.enabled:
                with torch.no_grad():
                    mod.act_scale.copy_(point.scale)
                    mod.act_zero.copy_(point.zero)
                changed += 1
    return changed


def _share_recorded(model: nn.Module, feeds: dict[str, list[str]], modules: dict[str, nn.Module]) -> int:
    from deepslim.compress.quantize.linear import QuantMixin

    points = getattr(model, POINTS_ATTR)
    changed = 0
    for name, layers in feeds.items():
        point = points[name] if name in points else None  # noqa: SIM401  (an nn.ModuleDict has no get)
        for layer in layers:
            mod = modules.get(layer)
            if isinstance(point, ActPoint) and point.enabled and isinstance(mod, QuantMixin) and mod.act_bits == 8:
                with torch.no_grad():
                    mod.act_scale.copy_(point.scale)
                    mod.act_zero.copy_(point.zero)
                changed += 1
    return changed


def remove_points_(model: nn.Module, points: list[ActPoint]) -> None:
    """Undo :func:`insert_points_` for ``points`` (the ones one call inserted): the model's own forward back when
    they are all its points (hooks removed), else those points pass their input through."""
    from deepslim.compress.quantize._hooked_points import FEEDS_ATTR, remove_hooks_

    if not points:
        return
    held = getattr(model, POINTS_ATTR, None)
    if remove_hooks_(model, list(points)) and held is not None:
        ids = {id(p) for p in points}
        feeds = getattr(model, FEEDS_ATTR, {})
        for name in [n for n, p in held.items() if id(p) in ids]:
            del held[name]
            feeds.pop(name, None)
        if not len(held):
            delattr(model, POINTS_ATTR)
            if hasattr(model, FEEDS_ATTR):
                delattr(model, FEEDS_ATTR)
        return
    cls = getattr(type(model), "deepslim_traced_from", None)
    if held is not None and cls is not None and {id(p) for p in held.values()} == {id(p) for p in points}:
        model.__class__ = cls
        delattr(model, POINTS_ATTR)
        return
    for p in points:
        p.enabled = False


def point_labels(model: nn.Module, points: list[ActPoint]) -> dict[str, nn.Module]:
    """``points`` by a readable label: "MODULE output" for a point hooked on a module, else its own name."""
    from deepslim.compress.quantize._hooked_points import PointHook

    ids = {id(p) for p in points}
    labels: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        for hook in m._forward_hooks.values():
            if isinstance(hook, PointHook) and id(hook.point) in ids:
                labels[f"{name} output"] = hook.point
    seen = {id(p) for p in labels.values()}
    held = getattr(model, POINTS_ATTR, None) or {}
    labels.update({f"{POINTS_ATTR}.{n}": p for n, p in held.items() if id(p) in ids and id(p) not in seen})
    return labels


def disable_points_(model: nn.Module) -> None:
    """Make every point pass its input through (for runtimes that take no quantizers in the float graph)."""
    for m in model.modules():
        if isinstance(m, ActPoint):
            m.enabled = False


def points_of(model: nn.Module) -> Iterable[ActPoint]:
    return (m for m in model.modules() if isinstance(m, ActPoint))
