"""Sparse update under a memory budget (Lin et al., On-Device Training Under 256KB Memory, NeurIPS 2022).

Not every layer is worth updating: tiny-training picks which layers' weights and which biases to train by how much
each contributes to the task per byte of memory it costs. Here the contribution is a first-order proxy measured on a
few batches of the task — an SGD step of size η lowers the loss by about η·‖g‖², so a unit's score is the squared
norm of its gradient — and its cost is what :func:`~deepslim.analysis.training.training_profile` counts when it
trains (gradient, optimizer state, and the activations its operators then keep). Units are taken greedily by
score per byte; each choice is checked with the exact profile of the whole set, so the plan respects the budget by
the planner's own accounting. Gradient checkpointing (Chen et al. 2016, √n segments) is the other lever.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepslim.analysis import Example, as_call
from deepslim.analysis.training import activation_peaks, training_profile
from deepslim.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SparseUpdatePlan:
    """Which parameters to update, and what the planner predicts that costs."""

    trainable: frozenset[str]
    budget_bytes: int
    peak_bytes: int  # predicted by training_profile for ``trainable``
    saved_bytes: int
    units: tuple[tuple[str, float, int], ...]  # every candidate: (unit, score, standalone cost in bytes), best first

    def to_dict(self) -> dict[str, Any]:
        return {"trainable": sorted(self.trainable), "budget_bytes": self.budget_bytes, "peak_bytes": self.peak_bytes,
                "saved_bytes": self.saved_bytes, "units": [list(u) for u in self.units]}  # fmt: skip


def _units(model: nn.Module, layers: Iterable[str] | None) -> dict[str, list[str]]:
    """Candidate units: ``LAYER:bias`` (its bias) and ``LAYER:weight`` (its other parameters), by parameter names."""
    wanted = set(layers) if layers is not None else None
    units: dict[str, list[str]] = {}
    for mod_name, mod in model.named_modules():
        if wanted is not None and mod_name not in wanted:
            continue
        for p_name, _ in mod.named_parameters(recurse=False):
            kind = "bias" if p_name == "bias" else "weight"
            units.setdefault(f"{mod_name}:{kind}", []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    if not units:
        raise ConfigError("no candidate layer with parameters for the sparse update")
    return units


def gradient_scores(model: nn.Module, batches: Iterable[tuple[Any, Any]], loss_fn: Callable[[Any, Any], torch.Tensor],
                    units: dict[str, list[str]]) -> dict[str, float]:  # fmt: skip
    """Mean squared gradient norm of each unit over ``batches`` (inputs, targets), every parameter unfrozen."""
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    sums = dict.fromkeys(units, 0.0)
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        for inputs, targets in batches:
            model.zero_grad(set_to_none=True)
            args, kwargs = as_call(inputs)
            loss_fn(model(*args, **kwargs), targets).backward()
            for unit, names in units.items():
                grads = [g for n in names if (g := params[n].grad) is not None]
                sums[unit] += sum(float(g.pow(2).sum()) for g in grads)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if not count:
        raise ConfigError("the sparse-update analysis needs at least one batch")
    return {u: s / count for u, s in sums.items()}


def plan_sparse_update(model: nn.Module, batches: Iterable[tuple[Any, Any]],
                       loss_fn: Callable[[Any, Any], torch.Tensor], *, budget_bytes: int, example_batch: Example,
                       optimizer: str = "sgd", batch_size: int | None = None,
                       layers: Iterable[str] | None = None) -> SparseUpdatePlan:  # fmt: skip
    """Choose the parameters to update so that a training step's predicted peak stays within ``budget_bytes``.

    ``layers`` limits the candidates (default: every layer with parameters). Raises ConfigError, with the smallest
    achievable figure, when not even the cheapest unit fits.
    """
    units = _units(model, layers)
    scores = gradient_scores(model, batches, loss_fn, units)

    def peak(names: set[str]) -> Any:
        return training_profile(model, example_batch, trainable=names, optimizer=optimizer, batch_size=batch_size)

    base = peak(set()).peak_bytes
    cost = {u: max(peak(set(names)).peak_bytes - base, 1) for u, names in units.items()}
    ranked = sorted(units, key=lambda u: scores[u] / cost[u], reverse=True)
    cheapest = min(cost, key=lambda u: cost[u])
    if base + cost[cheapest] > budget_bytes:
        bias = training_profile(model, example_batch, trainable="bias", optimizer=optimizer, batch_size=batch_size)
        raise ConfigError(f"a memory budget of {budget_bytes} bytes cannot be met: the smallest update (only "
                          f"{cheapest}) needs {base + cost[cheapest]} bytes and bias-only {bias.peak_bytes}; raise the "
                          f"budget, lower the batch size or use a smaller model")  # fmt: skip
    chosen: set[str] = set()
    current = peak(chosen)
    for unit in ranked:
        trial = peak(chosen | set(units[unit]))
        if trial.peak_bytes <= budget_bytes:
            chosen, current = chosen | set(units[unit]), trial
    return SparseUpdatePlan(trainable=frozenset(chosen), budget_bytes=budget_bytes, peak_bytes=current.peak_bytes,
                            saved_bytes=current.saved_bytes,
                            units=tuple((u, scores[u], cost[u]) for u in ranked))  # fmt: skip


def sparse_update_(model: nn.Module, plan: SparseUpdatePlan) -> nn.Module:
    """Set ``requires_grad`` to the plan's parameters (all others frozen), in place; return the model."""
    names = dict(model.named_parameters())
    missing = sorted(plan.trainable - set(names))
    if missing:
        raise ConfigError(f"the plan names parameters the model lacks: {missing[:3]}; plan on this model")
    for n, p in names.items():
        p.requires_grad_(n in plan.trainable)
    return model


class CheckpointSegment(nn.Sequential):
    """Layers run under gradient checkpointing: only the segment's input is kept; the rest is recomputed.

    Reentrant checkpointing keeps its inputs through ``save_for_backward``, which the saved-tensor oracle sees. It
    computes parameter gradients only if an input requires a gradient, so a segment whose input does not (the first
    one, on the data) gets a one-element anchor that does (4 bytes kept).
    """

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return isinstance(args[0], torch.Tensor)

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return [args[0]] + ([] if args[0].requires_grad else [torch.ones(()).element_size()])

    def recompute_bytes(self, metas: list[tuple[torch.Size, torch.dtype, bool]]) -> int:
        """What the backward holds beyond the segment's kept input: the recomputed forward's activations and the
        segment's own backward, at their peak (the input's and output's gradients are counted by the caller)."""
        shape, dtype, requires_grad = metas[0]
        x = torch.zeros(shape, dtype=dtype, requires_grad=requires_grad)
        plain = nn.Sequential(*self)
        was_training = plain.training
        plain.train(self.training)
        forward, backward = activation_peaks(plain, x)
        plain.train(was_training)
        return max(0, max(forward, backward) - x.numel() * x.element_size())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters()) and not x.requires_grad:
            return super().forward(x)
        anchor = () if x.requires_grad else (torch.ones((), requires_grad=True),)
        return checkpoint(self._run, x, *anchor, use_reentrant=True)

    def _run(self, x: torch.Tensor, *anchor: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def checkpoint_sequential_(model: nn.Module, path: str, segments: int | None = None) -> nn.Module:
    """Split the ``nn.Sequential`` at ``path`` into ``segments`` checkpointed segments (default ⌈√n⌉), in place.

    Layer names change from ``path.i`` to ``path.s.j``; the parameters are the same tensors.
    """
    seq = model.get_submodule(path) if path else model
    if not isinstance(seq, nn.Sequential):
        raise ConfigError(f"{path or 'the model'} is not an nn.Sequential; name one to checkpoint")
    layers = list(seq)
    segments = segments or max(1, math.ceil(math.sqrt(len(layers))))
    if not 1 <= segments <= len(layers):
        raise ConfigError(f"segments must be between 1 and {len(layers)}, got {segments}")
    size = math.ceil(len(layers) / segments)
    chunks = [CheckpointSegment(*layers[i:i + size]) for i in range(0, len(layers), size)]
    for key in list(seq._modules):
        del seq._modules[key]
    for i, chunk in enumerate(chunks):
        seq.add_module(str(i), chunk)
    return model
