"""Elastic depth: whole residual blocks removed, so their nodes leave the graph the runtime runs.

A residual block computes ``y = act(x + f(x))``; skipping it passes ``x`` on unchanged, which leaves a valid network
of the same shapes. Trained residual networks tolerate it: removing single blocks from a trained ResNet costs little
accuracy (Veit et al., "Residual Networks Behave Like Ensembles of Relatively Shallow Networks", NeurIPS 2016), and
elastic depth — a network that runs with its last blocks of each stage skipped — is one of Once-for-All's three
dimensions (Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment", ICLR 2020).
Why it matters here: at a small input and batch 1 a network's time is mostly per-node cost, which channel pruning
does not remove — ResNet-20 at 28² went no lower than 0.51× of dense with the fewest channels and every layer int8
(BENCHMARKS.md, session 6); dropping a block removes its nodes.

A block is *droppable* when replacing it by ``nn.Identity`` leaves a valid network: it is a child of an
``nn.Sequential`` (which calls it with one tensor), it runs once, its output has its input's shape, its output is a
residual addition of its own input (``x + f(x)``, maybe followed by an element-wise activation: torch.fx shows it),
and its weights are not shared with the rest of the model. So ResNet's basic blocks with identity shortcuts and
MobileNetV2's stride-1 inverted residuals with as many channels out as in are droppable; a block that changes shape
(stride 2, a projection shortcut) is not. Drop blocks before pruning channels: the channel groups are those of the
dropped model's dependency graph.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.config import Config
from deepslim.errors import ConfigError

log = logging.getLogger(__name__)

_ADDS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity,
                 nn.Dropout)  # fmt: skip
_PASS_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, F.mish,
                   F.dropout}  # fmt: skip
_PASS_METHODS = {"relu", "relu_"}
_IMPORTANCE_BATCHES = 4  # calibration batches that rank blocks for ``count``


@dataclass(frozen=True, kw_only=True)
class BlockDropConfig(Config):
    """Replace residual blocks by ``nn.Identity``: the ``blocks`` named (module names, e.g. ``layer1.2``), then the
    ``count`` droppable blocks of least importance among the rest — the least relative change ``|y - x| / |x|``
    they make to their input on the calibration data (or the example input); a block that barely changes its input
    costs least to skip. Naming a block that is not droppable is a ``ConfigError`` that lists the droppable ones.

    Nested droppable blocks (a residual block made of residual blocks): a named block inside another named one goes
    with it (only the outer one is returned); ``count`` picks blocks that neither contain nor lie inside a named
    block or one another, so that it always drops ``count`` more blocks than those named."""

    blocks: tuple[str, ...] = ()
    count: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.blocks, str) or not all(isinstance(b, str) and b for b in self.blocks):
            raise ConfigError(f"blocks is a list of module names, got {self.blocks!r}")
        object.__setattr__(self, "blocks", tuple(dict.fromkeys(self.blocks)))
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ConfigError(f"count must be an integer >= 0, got {self.count!r}")


def examine_blocks(model: nn.Module, example_input: Any) -> dict[str, str | None]:
    """Every child of an ``nn.Sequential`` in ``model``, in model order, mapped to None when it is droppable, else
    to why not (one short phrase)."""
    shapes = _io_shapes(model, example_input)
    found: dict[str, str | None] = {}
    for name, block in _candidates(model):
        calls = shapes.get(name, [])
        if len(calls) != 1:
            found[name] = "it does not run" if not calls else f"it runs {len(calls)} times"
        elif calls[0][0] is None or calls[0][0] != calls[0][1]:
            found[name] = f"its output {calls[0][1]} is not its input's shape {calls[0][0]}"
        else:
            found[name] = _shared(model, name, block) or _residual_reason(block)
    return found


def droppable_blocks(model: nn.Module, example_input: Any) -> list[str]:
    """The names of the blocks of ``model`` that :class:`BlockDropConfig` may drop (see the module docstring)."""
    return [name for name, why in examine_blocks(model, example_input).items() if why is None]


def drop_blocks_(model: nn.Module, config: BlockDropConfig, example_input: Any,
                 calib_data: Iterable[Any] | None = None) -> list[str]:  # fmt: skip
    """Drop ``config``'s blocks from ``model`` in place; returns the names dropped, in model order."""
    found = examine_blocks(model, example_input)
    droppable = [n for n, why in found.items() if why is None]
    for name in config.blocks:
        if name not in droppable:
            why = f" ({found[name]})" if name in found else " (no child of an nn.Sequential has that name)"
            raise ConfigError(f"block {name!r} is not droppable{why}; droppable blocks: "
                              f"{', '.join(droppable) or 'none'}")  # fmt: skip
    rest = [n for n in droppable if not _overlaps(n, config.blocks)]
    if config.count > len(rest):
        raise ConfigError(f"count {config.count} asks for more blocks than the {len(rest)} droppable ones left: "
                          f"{', '.join(rest) or 'none'}")  # fmt: skip
    chosen = set(config.blocks)
    if config.count:
        scores = _importance(model, rest, example_input, calib_data)
        picked: list[str] = []
        for name in sorted(rest, key=lambda n: (scores[n], rest.index(n))):
            if len(picked) < config.count and not _overlaps(name, picked):
                picked.append(name)
        if len(picked) < config.count:
            raise ConfigError(f"count {config.count} asks for more blocks than the {len(picked)} droppable ones left "
                              f"that do not contain one another: {', '.join(picked)}")  # fmt: skip
        chosen |= set(picked)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    dropped = sorted((n for n in chosen if not inside(n, chosen - {n})), key=order.__getitem__)
    for name in dropped:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    log.info("dropped %d block(s): %s", len(dropped), ", ".join(dropped) or "none")
    return dropped


def inside(name: str, blocks: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``blocks`` or lies inside one of them."""
    return any(name == b or name.startswith(b + ".") for b in blocks)


def _overlaps(name: str, blocks: Iterable[str]) -> bool:
    """Whether block ``name`` is one of ``blocks``, lies inside one or contains one."""
    return any(name == b or name.startswith(b + ".") or b.startswith(name + ".") for b in blocks)


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"{name}.{child}" if name else child, block) for name, seq in model.named_modules()
            if isinstance(seq, nn.Sequential) for child, block in seq.named_children()]  # fmt: skip


Shape = tuple[int, ...]


def _io_shapes(model: nn.Module, example_input: Any) -> dict[str, list[tuple[Shape | None, Shape | None]]]:
    """(input shape, output shape) of every call of every candidate block in one inference run (None: the block
    took or gave something other than one tensor)."""
    calls: dict[str, list[tuple[Shape | None, Shape | None]]] = {}

    def hook(name: str) -> Any:
        def record(_: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            one = len(args) == 1 and isinstance(args[0], torch.Tensor)
            shape_in = tuple(args[0].shape) if one else None
            calls.setdefault(name, []).append((shape_in, tuple(out.shape) if isinstance(out, torch.Tensor) else None))

        return record

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with hooked(_candidates(model), forward=hook), inference_mode(model), torch.no_grad():
        model(*args)
    return calls


def _shared(model: nn.Module, name: str, block: nn.Module) -> str | None:
    """Why ``block``'s weights cannot leave with it (read elsewhere in the model too), or None."""
    own = {id(p) for p in block.parameters()}
    for other, module in model.named_modules():
        if not inside(other, [name]) and any(id(p) in own for p in module.parameters(recurse=False)):
            return f"its weights are shared with {other}"
    return None


def _residual_reason(block: nn.Module) -> str | None:
    """None when ``block``'s output is ``act(x + f(x))`` of its own input ``x`` (torch.fx), else why not."""
    try:
        graph = fx.symbolic_trace(block).graph
    except Exception as exc:  # noqa: BLE001  (any tracing failure: the block is not proven droppable)
        return f"torch.fx cannot trace it ({type(exc).__name__})"
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return "it takes more than one input"
    modules = dict(block.named_modules())
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    node = out
    while isinstance(node, fx.Node) and _passes(node, modules):
        node = node.args[0]
    if not (isinstance(node, fx.Node) and _is_add(node)):
        return "its output is not a residual addition"
    if not any(_is_input(a, inputs[0], modules) for a in node.args[:2]):
        return "its residual addition does not add its own input"
    return None


def _passes(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An element-wise operation of one tensor (an activation, dropout, identity) the residual sum may go through."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _PASS_MODULES) or _empty(modules.get(str(node.target)))
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _empty(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Sequential) and len(module) == 0


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return len(node.args) == 2 and "alpha" not in node.kwargs
    return node.op == "call_method" and node.target in _ADD_METHODS and len(node.args) == 2 and not node.kwargs


def _is_input(arg: Any, x: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``arg`` is the block's input ``x``, maybe through identity modules (an empty shortcut)."""
    while isinstance(arg, fx.Node) and arg is not x and arg.op == "call_module":
        module = modules.get(str(arg.target))
        if not (isinstance(module, nn.Identity) or _empty(module)):
            return False
        arg = arg.args[0]
    return arg is x


def _importance(model: nn.Module, names: list[str], example_input: Any,
                calib_data: Iterable[Any] | None) -> dict[str, float]:  # fmt: skip
    """Each block's mean relative change of its input, ``|y - x| / |x|``, over a few calibration batches (or the
    example input)."""
    sums = dict.fromkeys(names, 0.0)

    def hook(name: str) -> Any:
        def record(_: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            x = args[0].float()
            sums[name] += float((out.float() - x).norm() / x.norm().clamp_min(1e-12))

        return record

    batches: list[Any] = []
    for batch in calib_data or ():
        batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if len(batches) == _IMPORTANCE_BATCHES:
            break
    batches = batches or [example_input]
    with hooked([(n, model.get_submodule(n)) for n in names], forward=hook), inference_mode(model), torch.no_grad():
        for x in batches:
            if isinstance(x, Mapping):  # a tokenized batch
                model(**x)
            else:
                model(*(x if isinstance(x, tuple) else (x,)))
    return {n: s / len(batches) for n, s in sums.items()}
