"""Pruning during training: one-shot, iterative prune–retrain, and gradual polynomial schedules.

Iterative: Han et al., NeurIPS 2015 — prune, retrain, prune further. Gradual: Zhu & Gupta, "To prune, or not to prune",
ICLR-W 2018 — sparsity rises from s_i to s_f along s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n·Δt))³, pruning every Δt
steps. Both work with the masks of :mod:`.masks`, so weights pruned early stay pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from torch import nn

from deepslim.compress.prune.masks import MagnitudePruneConfig, magnitude_masks, set_mask_
from deepslim.errors import ConfigError


class Schedule(Enum):
    """How a recipe stage reaches its sparsity: at once, in prune–retrain rounds, or gradually while training."""

    ONESHOT = "oneshot"
    ITERATIVE = "iterative"
    GRADUAL = "gradual"


Fit = Callable[[int, Sequence[Any]], None]
"""``fit(epochs, hooks)``: the caller's training loop for this stage (its data, learning rate and seed)."""


def polynomial_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` at ``start``, ``final`` from ``end`` on."""
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` prune–retrain rounds, removing the same fraction of survivors each time."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    keep = (1.0 - final) ** (1.0 / rounds)
    return [1.0 - keep ** (r + 1) for r in range(rounds)]


@dataclass
class GradualPruner:
    """A training-loop hook (``fit(..., hooks=[pruner])``) that raises magnitude sparsity along the cubic schedule.

    ``config.sparsity`` is the final sparsity; the masks are updated every ``every`` optimizer steps between
    ``start`` and ``end``.
    """

    config: MagnitudePruneConfig
    end: int
    start: int = 0
    every: int = 10
    initial: float = 0.0
    step: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end or self.every < 1:
            raise ConfigError(f"gradual pruning needs 0 <= start < end and every >= 1 (got {self.start}, "
                              f"{self.end}, {self.every})")  # fmt: skip

    def current(self) -> float:
        return polynomial_sparsity(self.step, final=self.config.sparsity, initial=self.initial, start=self.start,
                                   end=self.end)  # fmt: skip

    def after_step(self, model: nn.Module) -> None:
        self.step += 1
        on_grid = self.start <= self.step < self.end and (self.step - self.start) % self.every == 0
        if not (on_grid or self.step == self.end):
            return
        def now(final: float) -> float:
            return polynomial_sparsity(self.step, final=final, initial=min(self.initial, final), start=self.start,
                                       end=self.end)  # fmt: skip

        apply_masks_(model, map_sparsity(self.config, now))


def map_sparsity(config: MagnitudePruneConfig, at: Callable[[float], float]) -> MagnitudePruneConfig:
    """The config with every sparsity (default and each override's own target) replaced by ``at(target)``: each
    layer follows the schedule towards its own final sparsity, even where the default is 0."""
    overrides = tuple((p, None if v is None else at(v)) for p, v in config.overrides)
    return replace(config, sparsity=at(config.sparsity), overrides=overrides)


def apply_masks_(model: nn.Module, config: MagnitudePruneConfig) -> None:
    """Install (or tighten) the magnitude masks ``config`` asks for."""
    for name, mask in magnitude_masks(model, config).items():
        set_mask_(model.get_submodule(name), mask)


def gradual_prune_(model: nn.Module, config: MagnitudePruneConfig, *, epochs: int, steps_per_epoch: int,
                   fit: Fit) -> nn.Module:  # fmt: skip
    """Train for ``epochs`` while sparsity rises along the cubic schedule over the first 3/4 of the optimizer steps
    (updated about 100 times), then holds at ``config.sparsity`` (Zhu & Gupta)."""
    if epochs < 1:
        raise ConfigError("a gradual schedule prunes while it trains: it needs epochs > 0")
    steps = epochs * steps_per_epoch
    pruner = GradualPruner(config, end=max(1, int(0.75 * steps)), every=max(1, steps // 100))
    fit(epochs, (pruner,))
    return model


def iterative_prune_(model: nn.Module, config: MagnitudePruneConfig, *, rounds: int, epochs: int,
                     fit: Fit) -> nn.Module:  # fmt: skip
    """``rounds`` rounds of prune then retrain (Han et al.), each removing the same fraction of the survivors; the
    ``epochs`` are shared out among the rounds (the first rounds get the remainder)."""
    iterative_sparsities(config.sparsity, rounds)  # checks rounds
    for r in range(rounds):

        def after_round(final: float, r: int = r) -> float:
            return iterative_sparsities(final, rounds)[r]

        apply_masks_(model, map_sparsity(config, after_round))
        fit(epochs // rounds + (1 if r < epochs % rounds else 0), ())
    return model
