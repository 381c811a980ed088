"""Capturing a model's graph for the dependency graph: torch.fx first, torch.export (non-strict) when fx fails.

torch.fx traces the zoo at module level: layers stay ``call_module`` nodes, and registered layer kinds and attention
modules are leaves, so heads can be removed whole. Most models people bring (Hugging Face ones among them) do not
fx-trace — Python control flow on shapes, ``**kwargs`` forwards, output dataclasses — but ``torch.export`` in non-strict
mode runs the real Python forward on fake tensors and records ATen operators; each layer then appears as its operator
(``aten.conv2d``, ``aten.linear``, GPT-2's ``aten.addmm``) reading a parameter whose fully qualified name says which
module owns it. Both captures carry shapes on every node, which is all the graph builder needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from deepslim._modes import inference_mode
from deepslim.errors import UnsupportedModelError


@dataclass
class Capture:
    graph: fx.Graph
    how: str  # "torch.fx" | "torch.export"
    params: dict[fx.Node, str] = field(default_factory=dict)  # nodes that are parameters or buffers -> their FQN
    notes: tuple[str, ...] = ()  # why earlier captures failed


def capture(model: nn.Module, args: tuple[Any, ...], leaf: Callable[[nn.Module], bool]) -> Capture:
    """The first capture that works; UnsupportedModelError naming every failure otherwise."""
    failures: list[str] = []
    for how, fn in (("torch.fx", _fx), ("torch.export", _export)):
        try:
            with inference_mode(model), torch.no_grad():
                found = fn(model, args, leaf)
            found.notes = tuple(failures)
            return found
        except Exception as exc:  # any capture failure means: try the next one
            failures.append(f"{how}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}")
    raise UnsupportedModelError(
        f"cannot capture the graph of {type(model).__name__} ({'; '.join(failures)}). Structured pruning needs a "
        "graph (no Python control flow on tensor values); unstructured pruning (MagnitudePruneConfig) works on any "
        "model"
    )


def _fx(model: nn.Module, args: tuple[Any, ...], leaf: Callable[[nn.Module], bool]) -> Capture:
    params = list(inspect.signature(model.forward).parameters.values())[len(args) :]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return leaf(m) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, Tracer().trace(model, concrete_args=concrete or None))
    ShapeProp(gm).propagate(*args)
    found = {n: str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    return Capture(gm.graph, "torch.fx", found)


def _export(model: nn.Module, args: tuple[Any, ...], leaf: Callable[[nn.Module], bool]) -> Capture:
    ep = torch.export.export(model, args, strict=False)
    sig = ep.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    found = {n: names[n.name] for n in ep.graph.nodes if n.op == "placeholder" and n.name in names}
    return Capture(ep.graph, "torch.export", found)


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-valued node (None for anything else)."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None:
        meta = node.meta.get("val")
    shape = getattr(meta, "shape", None)  # TensorMetadata (a named tuple) or a fake tensor; None for lists of them
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):  # symbolic sizes
        return None


def owner_of(fqn: str) -> str:
    """The module owning a parameter: ``a.b.weight`` -> ``a.b``; a parametrized weight's pieces belong to the layer."""
    if ".parametrizations." in fqn:
        return fqn.split(".parametrizations.")[0]
    return fqn.rpartition(".")[0]


def aten_name(target: Any) -> str | None:
    """``aten.conv2d.padding`` -> ``conv2d``; None for anything that is not an ATen operator."""
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) if packet is not None else None


# ATen operators by what they do to channels (see _graph._Builder.function)
ATEN_PASS = {"relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardtanh", "hardtanh_", "hardswish",
             "hardswish_", "hardsigmoid", "leaky_relu", "elu", "mish", "softplus", "dropout", "dropout_", "clone",
             "contiguous", "alias", "detach", "detach_", "to", "_to_copy", "type_as", "clamp", "clamp_", "neg",
             "lift_fresh_copy", "pow", "erf", "exp", "sqrt", "abs", "expand", "feature_dropout", "relu6"}  # fmt: skip
ATEN_POOL = {"max_pool1d": 1, "avg_pool1d": 1, "adaptive_avg_pool1d": 1, "adaptive_max_pool1d": 1,
             "max_pool2d": 2, "avg_pool2d": 2, "adaptive_avg_pool2d": 2, "adaptive_max_pool2d": 2,
             "max_pool3d": 3, "avg_pool3d": 3, "adaptive_avg_pool3d": 3, "upsample_bilinear2d": 2,
             "upsample_nearest2d": 2}  # fmt: skip
ATEN_BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "rsub"}
ATEN_REDUCE = {"mean", "sum", "amax"}
ATEN_VIEW = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "unflatten"}
