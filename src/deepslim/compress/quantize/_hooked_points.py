"""Activation quantization points on models ``torch.fx`` cannot trace (most Hugging Face models): placed from a
``torch.export`` capture and attached as forward hooks.

:mod:`deepslim.compress.quantize._points` rewrites an fx graph into the model's forward. A model with Python control
flow, ``**kwargs`` forwards or output dataclasses does not fx-trace, and its residual additions used to stay float
(HF ResNet: 4 of 7 layers on integer kernels). Here ``torch.export`` (non-strict: the real Python forward on fake
tensors) records the ATen graph, and each node's ``nn_module_stack`` says which module computed it. The placement
rules are the fx ones — every input and the result of an addition or concatenation fed by a quantized value, and
the output of a quantized layer whose value reaches no quantizer — applied where a value is a module's output: the
point then runs as a forward hook on that module (its output, for every user, as the fx rewrite does). A join whose
inputs or result are not module outputs (computed inline, the model's input) stays float, whole; so does a value of
a module called more than once or returning more than one tensor.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode

log = logging.getLogger(__name__)
FEEDS_ATTR = "deepslim_point_feeds"  # point name -> quantized layers it feeds directly (for sharing parameters)

_JOINS = {"add", "add_", "cat", "concat", "concatenate"}
# ATen operators a quantizer moves across (the fx placer's transparent operators, as ATen records them)
_TRANSPARENT = {"relu", "relu_", "max_pool1d", "max_pool2d", "max_pool2d_with_indices", "view", "reshape",
                "_unsafe_view", "flatten", "squeeze", "unsqueeze", "contiguous", "clone", "alias", "detach",
                "dropout", "batch_norm", "_native_batch_norm_legit_no_training", "hardtanh", "hardtanh_",
                "relu6"}  # fmt: skip
_RELUS = {"relu", "relu_", "hardtanh", "hardtanh_", "relu6"}


class PointHook:
    """A forward hook that quantizes its module's (tensor) output with ``point``; deep copies carry it with the
    model (the copy's hook holds the copy's point)."""

    def __init__(self, point: nn.Module) -> None:
        self.point = point

    def __call__(self, module: nn.Module, args: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return self.point(out)
        return None


def _op(node: fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:
        return "getitem"
    packet = getattr(node.target, "overloadpacket", None)
    return getattr(packet, "__name__", None)


def _scopes(node: fx.Node) -> list[str]:
    """The modules (by name, outermost first) whose forward computed ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    return [str(v[0]) for v in stack.values() if v and v[0]]


def _probe(model: nn.Module, example: tuple[Any, ...]) -> set[str]:
    """The modules called exactly once, returning one tensor, on ``example`` (the ones a hook can quantize)."""
    calls: dict[str, int] = {}
    tensor: dict[str, bool] = {}

    def count(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            tensor[name] = isinstance(out, torch.Tensor)

        return hook

    with hooked(model.named_modules(), forward=count), inference_mode(model), torch.no_grad():
        model(*example)
    return {n for n, c in calls.items() if c == 1 and tensor.get(n) and n}


class HookedPlacer:
    """Plans points on an ATen graph: ``plan`` maps a module name to the point after it."""

    def __init__(self, model: nn.Module, graph: fx.Graph, hookable: set[str]) -> None:
        from deepslim.compress.quantize.linear import QuantMixin, quantizable

        self.modules = dict(model.named_modules())
        self.graph, self.hookable = graph, hookable
        self.qlayers = {n for n, m in self.modules.items() if isinstance(m, QuantMixin) and m.act_bits is not None}
        self.float_layers = {n for n, m in self.modules.items() if quantizable(m)}  # kept float by an override
        self.quantized: set[fx.Node] = set()
        self.plan: dict[str, fx.Node] = {}  # module -> the value its point quantizes

    def _layer(self, node: fx.Node, names: set[str]) -> str | None:
        return next((s for s in reversed(_scopes(node)) if s in names), None)

    def owner(self, node: fx.Node) -> str | None:
        """The innermost module whose output ``node`` is (it leaves that module's scope), if a hook can reach it."""
        if not isinstance(node, fx.Node) or node.op != "call_function":
            return None
        outside = [set(_scopes(u)) if u.op != "output" else set() for u in node.users]
        for scope in reversed(_scopes(node)):
            if any(scope not in s for s in outside):
                return scope if scope in self.hookable else None
        return None

    def _is_tensor(self, node: Any) -> bool:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        return isinstance(val, torch.Tensor) and val.is_floating_point()

    def place(self) -> dict[str, fx.Node]:
        for node in self.graph.nodes:
            op = _op(node)
            if op is None:
                continue
            layer = self._layer(node, self.qlayers)
            if layer is not None:
                if self.owner(node) == layer or any(layer not in _scopes(u) for u in node.users):
                    self.quantized.add(node)
            elif op in _JOINS:
                self._join(node, op)
            elif op in _TRANSPARENT | {"getitem"} and any(a in self.quantized for a in node.all_input_nodes):
                self.quantized.add(node)
        for node in self.graph.nodes:
            layer = self._layer(node, self.qlayers) if _op(node) else None
            if layer is not None and any(layer not in _scopes(u) for u in node.users):
                self._output(node)
        return self.plan

    def _point(self, value: fx.Node) -> bool:
        owner = self.owner(value)
        if owner is None:
            return False
        self.plan.setdefault(owner, value)
        self.quantized.add(value)
        return True

    def _join(self, node: fx.Node, op: str) -> None:
        first: Any = node.args[0] if node.args else None
        if op in ("cat", "concat", "concatenate"):
            raw: list[Any] = list(first) if isinstance(first, (list, tuple)) else []
        else:
            raw = list(node.args[:2])
        args = [a for a in raw if isinstance(a, fx.Node) and self._is_tensor(a)]
        if len(args) < 2 or len(args) != len(raw):
            return
        if not any(a in self.quantized for a in args):
            return
        out = node
        users = list(node.users)
        if len(users) == 1 and _op(users[0]) in _RELUS:
            out = users[0]
        at_output = any(u.op == "output" for u in out.users)
        if not all(self.owner(a) is not None or a in self._pointed() for a in args):
            return  # an input a hook cannot reach: the join stays float, whole
        if not at_output and self.owner(out) is None:
            return
        for a in args:
            self._point(a)
        if at_output:
            self.quantized.add(out)
        else:
            self._point(out)

    def _pointed(self) -> set[fx.Node]:
        return set(self.plan.values())

    def _output(self, node: fx.Node) -> None:
        """The fx placer's rule: a quantized layer's output that reaches no quantizer through transparent operators
        gets a point at the end of that chain."""
        end = node
        while True:
            if end in self._pointed():
                return
            users = list(end.users)
            if len(users) != 1:
                break
            user = users[0]
            if self._layer(user, self.qlayers) is not None and self._layer(end, self.qlayers) != self._layer(
                    user, self.qlayers):  # fmt: skip
                return  # the next quantized layer's input quantizer
            if self._layer(user, self.float_layers) is not None:
                return  # an override keeps that layer, and so its input, in float
            if _op(user) not in _TRANSPARENT | {"getitem"}:
                break
            end = user
        if not end.users or any(u.op == "output" for u in end.users) or not self._is_tensor(end):
            return
        self._point(end)

    def feeds(self) -> dict[str, list[str]]:
        """Module name with a point -> quantized layers that read its value directly."""
        out: dict[str, list[str]] = {}
        for module, value in self.plan.items():
            for user in value.users:
                layer = self._layer(user, self.qlayers)
                if layer is not None and layer not in _scopes(value):
                    out.setdefault(module, []).append(layer)
        return out


def capture_plan(model: nn.Module, example: tuple[Any, ...]) -> tuple[dict[str, fx.Node], dict[str, list[str]]]:
    """(module -> the value its point quantizes, module -> layers fed directly) from a ``torch.export`` capture."""
    with inference_mode(model), torch.no_grad():
        program = torch.export.export(model, tuple(example), strict=False)
    placer = HookedPlacer(model, program.graph, _probe(model, example))
    plan = placer.place()
    return plan, placer.feeds()


def remove_hooks_(model: nn.Module, points: list[nn.Module]) -> int:
    """Detach the hooks running ``points``; returns how many."""
    ids = {id(p) for p in points}
    removed = 0
    for m in model.modules():
        for key, hook in list(m._forward_hooks.items()):
            if isinstance(hook, PointHook) and id(hook.point) in ids:
                del m._forward_hooks[key]
                removed += 1
    return removed
