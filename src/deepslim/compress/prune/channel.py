"""Structured channel pruning that physically removes channels, filters, hidden units and attention heads.

Filter pruning by norm: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017 (l1); batch-norm scaling
factors: Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017 (bn_scale);
first-order Taylor expansion of the loss: Molchanov et al., "Importance Estimation for Neural Network Pruning",
CVPR 2019 (taylor). Coupled layers are pruned as groups from the dependency graph (:mod:`._graph`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from deepslim._modes import inference_mode
from deepslim.compress.prune import _surgery
from deepslim.compress.prune._graph import DependencyGraph, Layout, Space, build_graph
from deepslim.config import Config, Overrides, coerce_enum, freeze_overrides, lookup, matches, unmatched
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.adapters import LayerKind, layer_kind, weight_of
from deepslim.models.transformer import SelfAttention

log = logging.getLogger(__name__)


class Importance(Enum):
    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"


@dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig(Config):
    """Remove ``ratio`` of the channels of every prunable group (filters, hidden units, attention heads).

    ``ignore`` names layers (or ``re:`` patterns) whose channels stay; ``overrides`` maps layers to their own ratio
    or ``None`` (keep). ``round_to`` keeps channel counts multiples of it (vector-unit friendly).
    """

    ratio: float
    importance: Importance = Importance.L1
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    overrides: Overrides[float | None] = ()

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        coerce_enum(self, "importance", Importance)
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to}")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, _check_ratio))


def _check_ratio(what: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class GroupPlan:
    description: str
    width: int
    keep: int
    unit: str  # "channels" | "heads"
    owners: tuple[str, ...] = ()  # the layers whose outputs (or heads) these channels are
    kept: tuple[int, ...] = ()  # indices kept

    def __str__(self) -> str:
        return f"{self.width} -> {self.keep} {self.unit}: {self.description}"

    def whole(self) -> GroupPlan:
        return replace(self, keep=self.width, kept=tuple(range(self.width)))


@dataclass(frozen=True)
class ChannelPruneResult:
    """What was removed (``groups``), which groups stayed whole and why (``blocked``), which layers the graph left
    whole and why (``skipped``: not seen as layers, tied or parametrized weights, groups whose removal failed the
    check that the pruned model still runs), and how the graph was captured (``capture``)."""

    groups: tuple[GroupPlan, ...]
    blocked: tuple[str, ...] = field(default=())
    skipped: tuple[str, ...] = field(default=())
    capture: str = "torch.fx"

    def __str__(self) -> str:
        lines = [str(g) for g in self.groups if g.keep < g.width]
        return "\n".join(lines + [f"kept: {b}" for b in self.blocked] + [f"left whole: {s}" for s in self.skipped])


def misaligned_layers(model: nn.Module, multiple: int = 8) -> list[str]:
    """Convolutions and linear layers whose output channel count is not a multiple of ``multiple``.

    CPU kernels block channels by the SIMD width (ONNX Runtime's NCHWc layout uses blocks of 8 or 16); layers off
    that grid fall back to slower paths — measured here up to 3× slower at the same MACs (BENCHMARKS.md).
    """
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if width % multiple:
            found.append(f"{name} ({width})")
    return found


def dependency_groups(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The model's channel groups, one line each: what is removed together, and what cannot be removed and why."""
    graph = build_graph(model, example_input)
    return [graph.describe(root) for root in graph.groups() if _owners(graph, root)]


def plan_channel_pruning(model: nn.Module, config: ChannelPruneConfig, example_input: torch.Tensor,
                         calib_data: Iterable[Any] | None = None) -> ChannelPruneResult:  # fmt: skip
    """What ``prune_`` would remove, group by group, without changing the model."""
    return _plan(model, config, example_input, calib_data)[1]


def prune_channels_(model: nn.Module, config: ChannelPruneConfig, example_input: torch.Tensor,
                    calib_data: Iterable[Any] | None = None) -> ChannelPruneResult:  # fmt: skip
    """Remove channels in place; the pruned model is checked to run with the same output shapes, else undone.

    A group whose removal alone breaks the model is left whole (named in ``skipped``) and the others are removed; if
    the model still fails, it is restored exactly and UnsupportedModelError names the failure — never a broken model.
    """
    expected = _output_shapes(model, example_input)
    (graph, keep), result = _plan(model, config, example_input, calib_data)
    modules = dict(model.named_modules())
    saved = _snapshot(modules.values())
    failure = _try_apply(model, graph, modules, keep, example_input, expected)
    if failure is None:
        return result
    bad = {}
    for gid in keep:
        _restore(saved)
        why = _try_apply(model, graph, modules, {gid: keep[gid]}, example_input, expected)
        if why is not None:
            bad[gid] = why
    _restore(saved)
    rest = {g: k for g, k in keep.items() if g not in bad}
    if bad and rest and _try_apply(model, graph, modules, rest, example_input, expected) is None:
        dropped = [f"{graph.describe(graph.spaces[g])}: removing its channels broke the model ({w})"
                   for g, w in bad.items()]  # fmt: skip
        kept_plans = tuple(p if not _plan_in(p, graph, bad) else p.whole() for p in result.groups)
        return replace(result, groups=kept_plans, skipped=result.skipped + tuple(dropped))
    _restore(saved)
    culprit = graph.describe(graph.spaces[next(iter(bad))]) if bad else "the combination of all groups"
    raise UnsupportedModelError(
        f"channel pruning would break {type(model).__name__} ({failure}) at {culprit}; the model is unchanged. "
        "Add the group's layers to ignore=(...) to keep their channels"
    )


def _plan_in(plan: GroupPlan, graph: DependencyGraph, gids: Mapping[int, Any]) -> bool:
    return any(graph.producer_space.get(o) is not None and graph.spaces[graph.producer_space[o]].find().id in gids
               for o in plan.owners)  # fmt: skip


def _try_apply(model: nn.Module, graph: DependencyGraph, modules: dict[str, nn.Module], keep: dict[int, torch.Tensor],
               x: Any, expected: list[tuple[int, ...]]) -> str | None:  # fmt: skip
    """Apply ``keep`` and run the model: None if it runs with the expected output shapes, else what went wrong."""
    try:
        _apply(graph, modules, keep)
        got = _output_shapes(model, x)
    except Exception as exc:  # a crash of the pruned model is the failure we report, whatever it is
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return None if got == expected else f"output shapes {expected} became {got}"


def _snapshot(modules: Iterable[nn.Module]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Each module's attributes, parameters and buffers (references, not copies: surgery replaces, never mutates)."""
    saved = []
    for m in modules:
        state = dict(m.__dict__)
        state["_parameters"], state["_buffers"] = dict(m._parameters), dict(m._buffers)
        saved.append((m, state))
    return saved


def _restore(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, state in saved:
        m.__dict__.clear()
        m.__dict__.update({k: dict(v) if k in ("_parameters", "_buffers") else v for k, v in state.items()})


_Plan = tuple[tuple[DependencyGraph, dict[int, torch.Tensor]], "ChannelPruneResult"]


def _plan(model: nn.Module, config: ChannelPruneConfig, example_input: torch.Tensor,
          calib_data: Iterable[Any] | None) -> _Plan:  # fmt: skip
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    bad = unmatched(config.overrides, modules) + unmatched(tuple((p, None) for p in config.ignore), modules)
    if bad:
        raise ConfigError(f"no layer matches {', '.join(map(repr, bad))}")
    if config.importance is Importance.TAYLOR:
        _accumulate_gradients(model, calib_data)
    keep: dict[int, torch.Tensor] = {}
    plans, blocked = [], []
    for root in graph.groups():
        owners = _owners(graph, root)
        if not owners:
            continue
        if root.blocked:
            blocked.append(graph.describe(root))
            continue
        ratio = _group_ratio(config, owners)
        n_keep = root.width if ratio is None else _keep_count(root, ratio, config.round_to)
        kept = tuple(range(root.width))
        if n_keep < root.width:
            keep[root.id] = _select(_scores(graph, root, modules, config.importance), n_keep, root.groups)
            kept = tuple(keep[root.id].tolist())
        unit = "heads" if root.heads else "channels"
        plans.append(GroupPlan(graph.describe(root), root.width, n_keep, unit, tuple(owners), kept))
    if config.importance is Importance.TAYLOR:
        model.zero_grad(set_to_none=True)
    skipped = [f"{u}: not understood by the dependency graph" for u in graph.unknown_layers]
    skipped += [f"{n}: {why}" for n, why in graph.left_whole.items()]
    return (graph, keep), ChannelPruneResult(tuple(plans), tuple(blocked), tuple(skipped), graph.capture)


def _owners(graph: DependencyGraph, root: Space) -> list[str]:
    return [n for s in graph.members(root) for n in (*s.producers, *s.heads)]


def _group_ratio(config: ChannelPruneConfig, owners: list[str]) -> float | None:
    if any(matches(p, o) for p in config.ignore for o in owners):
        return None
    for owner in owners:
        value = lookup(config.overrides, owner, default=...)
        if value is not ...:
            return value
    return config.ratio


def _keep_count(root: Space, ratio: float, round_to: int) -> int:
    step = round_to * root.groups if not root.heads else root.groups
    keep = round(root.width * (1.0 - ratio) / step) * step
    return int(min(root.width, max(step if step <= root.width else root.width, keep)))


def _select(scores: torch.Tensor, n_keep: int, groups: int) -> torch.Tensor:
    """Indices of the ``n_keep`` best channels, taken equally from each of ``groups`` contiguous blocks, sorted."""
    per = scores.numel() // groups
    picks = [torch.topk(block, n_keep // groups).indices + g * per for g, block in enumerate(scores.split(per))]
    return torch.cat(picks).sort().values


def _scores(graph: DependencyGraph, root: Space, modules: dict[str, nn.Module], how: Importance) -> torch.Tensor:
    """Per-channel importance of a group: every member's per-channel scores normalized to mean 1, then summed.

    Members are the layers producing the channels (their filters), the batch/layer norms scaling them (|γ|), and the
    layers reading them (their input columns) — a channel matters if any of them makes it matter. ``bn_scale`` uses
    the norms alone.
    """
    spaces = {s.id for s in graph.members(root)}
    parts: list[torch.Tensor] = []
    norms = [(modules[n], lay) for n, lay in graph.norms if getattr(modules[n], "weight", None) is not None]
    for m, layout in norms:  # only the members that carry this group's channels (a VGG head holds 100 M weights)
        if slices := _slices(layout, spaces):
            parts += [_param_scores(weight_of(m), how, 0, 1)[sl] for sl in slices]
    if how is Importance.BN_SCALE:
        if parts:
            return _combine(parts, root.width)
        how = Importance.L1
    for s in graph.members(root):
        for name in (*s.producers, *s.depthwise):
            m = modules[name]
            parts.append(_param_scores(weight_of(m), how, _kind(m).out_dim, 1))
        for name in s.heads:
            attn = modules[name]
            assert isinstance(attn, SelfAttention)
            parts.append(_param_scores(attn.proj.weight, how, 1, attn.head_dim))
    for name, layout in graph.consumers:
        m = modules[name]
        in_dim = _kind(m).in_dim
        slices = _slices(layout, spaces)
        if slices and getattr(m, "groups", 1) == 1 and in_dim is not None:
            scores = _param_scores(weight_of(m), how, in_dim, layout.unit)
            parts += [scores[sl] for sl in slices]
    return _combine(parts, root.width)


def _slices(layout: Layout, spaces: set[int]) -> list[slice]:
    """Where the group's channels sit along a layout (one slice per segment that belongs to the group)."""
    found, offset = [], 0
    for sid, width in layout.segments:
        if sid in spaces:
            found.append(slice(offset, offset + width))
        offset += width
    return found


def _combine(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    total = torch.zeros(width)
    for p in parts:
        p = p.detach().float().cpu()
        if p.numel() == width:
            total += p / p.mean().clamp_min(1e-12)
    return total


def _kind(m: nn.Module) -> LayerKind:
    kind = layer_kind(m)
    if kind is None:
        raise UnsupportedModelError(f"{type(m).__name__} has no layer kind (register_layer_kind describes it)")
    return kind


def _param_scores(w: torch.Tensor, how: Importance, dim: int, unit: int) -> torch.Tensor:
    """Score of each channel along ``dim`` (``unit`` consecutive entries per channel): L1, L2 or |w·∂L/∂w|."""
    t = w.detach()
    if how is Importance.TAYLOR:
        if w.grad is None:
            raise ConfigError("taylor importance needs gradients: pass calib_data with labels")
        t = t * w.grad
    t = t.transpose(0, dim).reshape(t.shape[dim] // unit, -1)
    return t.pow(2).sum(1).sqrt() if how is Importance.L2 else t.abs().sum(1)


def _accumulate_gradients(model: nn.Module, calib_data: Iterable[Any] | None) -> None:
    if calib_data is None:
        raise ConfigError("importance='taylor' needs calib_data: batches of (input, label) to compute gradients")
    model.zero_grad(set_to_none=True)
    for x, y in calib_data:
        F.cross_entropy(model(x), y).backward()


def _indices(layout: Layout, graph: DependencyGraph, keep: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Kept positions along a layout's channel dimension (None if nothing there is pruned)."""
    parts, offset, changed = [], 0, False
    for sid, width in layout.segments:
        kept = keep.get(graph.spaces[sid].find().id)
        changed |= kept is not None
        parts.append((kept if kept is not None else torch.arange(width)) + offset)
        offset += width
    if not changed:
        return None
    channels = torch.cat(parts)
    if layout.unit == 1:
        return channels
    return (channels[:, None] * layout.unit + torch.arange(layout.unit)).flatten()


def _apply(graph: DependencyGraph, modules: dict[str, nn.Module], keep: Mapping[int, torch.Tensor]) -> None:
    def dev(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return idx.to(next(m.parameters()).device)

    for s in graph.spaces:
        kept = keep.get(s.find().id)
        if kept is None:
            continue
        for name in s.producers:
            _surgery.keep_outputs(modules[name], dev(modules[name], kept))
        for name in s.depthwise:
            _surgery.keep_depthwise(modules[name], dev(modules[name], kept))
        for name in s.heads:
            attn = modules[name]
            assert isinstance(attn, SelfAttention)  # the graph records heads of the zoo's attention only
            _surgery.keep_heads(attn, dev(attn, kept))
    for name, layout in graph.consumers:
        idx = _indices(layout, graph, keep)
        if idx is not None:
            _surgery.keep_inputs(modules[name], dev(modules[name], idx))
    for name, layout in graph.norms:
        idx = _indices(layout, graph, keep)
        if idx is not None:
            _surgery.keep_norm(modules[name], dev(modules[name], idx))


def _output_shapes(model: nn.Module, x: Any) -> list[tuple[int, ...]]:
    with inference_mode(model), torch.no_grad():
        y = model(*(x if isinstance(x, tuple) else (x,)))
    return [tuple(t.shape) for t in tree_leaves(y) if isinstance(t, torch.Tensor)]
