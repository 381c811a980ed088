"""Per-layer sensitivity: the accuracy drop when one layer alone is compressed, at several levels.

The table users read before choosing per-layer ratios (Han et al., NeurIPS 2015, Fig. 6; Li et al., ICLR 2017,
Fig. 2). Each (layer, level) runs on a fresh copy of the model; the model passed in is not changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from deepslim.compress.lowrank import SVDConfig, TuckerConfig, factorize_
from deepslim.compress.prune import (
    ChannelPruneConfig,
    MagnitudePruneConfig,
    NMPruneConfig,
    plan_channel_pruning,
    prune_,
)
from deepslim.compress.prune.masks import prunable_layers
from deepslim.data import DataBundle
from deepslim.errors import ConfigError
from deepslim.train import evaluate

Config = MagnitudePruneConfig | NMPruneConfig | ChannelPruneConfig | SVDConfig | TuckerConfig


@dataclass(frozen=True)
class Sensitivity:
    baseline_accuracy: float
    rows: tuple[tuple[str, float | None, float], ...]  # (layer, level, accuracy)

    def drop(self, layer: str, level: float | None) -> float:
        return self.baseline_accuracy - next(a for n, lv, a in self.rows if n == layer and lv == level)

    def layers(self) -> list[str]:
        return list(dict.fromkeys(n for n, _, _ in self.rows))

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_accuracy": self.baseline_accuracy,
                "rows": [{"layer": n, "level": lv, "accuracy": a, "drop": self.baseline_accuracy - a}
                         for n, lv, a in self.rows]}  # fmt: skip

    def __str__(self) -> str:
        levels = list(dict.fromkeys(lv for _, lv, _ in self.rows))
        head = "layer".ljust(28) + "".join(f"{'-' if lv is None else lv:>9}" for lv in levels)
        lines = [f"accuracy drop (pp) from {100 * self.baseline_accuracy:.2f}% when one layer is compressed", head]
        for layer in self.layers():
            cells = "".join(f"{100 * self.drop(layer, lv):9.2f}" for lv in levels)
            lines.append(layer.ljust(28) + cells)
        return "\n".join(lines)


def sensitivity(model: nn.Module, data: DataBundle, config: Config, levels: Sequence[float] = (0.25, 0.5, 0.75),
                *, layers: Sequence[str] | None = None, split: str = "val") -> Sensitivity:  # fmt: skip
    """Accuracy on ``data.<split>`` with each layer alone compressed at each level.

    ``levels`` are sparsities (magnitude), ratios (channel) or rank ratios (SVD/Tucker); N:M ignores them.
    ``layers`` defaults to every layer the technique applies to (for channel pruning: the first layer of each
    prunable group).
    """
    candidates = _candidates(model, data, config)
    chosen = list(layers) if layers is not None else candidates
    unknown = [n for n in chosen if n not in candidates]
    if unknown:
        raise ConfigError(f"sensitivity: {', '.join(unknown)} cannot be compressed by {type(config).__name__}; "
                          f"candidates: {', '.join(candidates)}")  # fmt: skip
    base = evaluate(model, data, split=split).accuracy
    rows = []
    for layer in chosen:
        for level in (None,) if isinstance(config, NMPruneConfig) else levels:
            trial = copy.deepcopy(model)
            _apply_one(trial, config, layer, level, data.example_input, candidates)
            rows.append((layer, level, evaluate(trial, data, split=split).accuracy))
    return Sensitivity(base, tuple(rows))


def _candidates(model: nn.Module, data: DataBundle, config: Config) -> list[str]:
    if isinstance(config, ChannelPruneConfig):
        plan = plan_channel_pruning(model, replace(config, ratio=0.0, overrides=()), data.example_input)
        return [g.owners[0] for g in plan.groups]
    if isinstance(config, SVDConfig):
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(config, TuckerConfig):
        return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1
                and m.kernel_size != (1, 1)]  # fmt: skip
    return list(prunable_layers(model))


def _apply_one(model: nn.Module, config: Config, layer: str, level: float | None, x: torch.Tensor,
               candidates: list[str]) -> None:  # fmt: skip
    only = ((layer, level), ("re:.*", None))
    if isinstance(config, MagnitudePruneConfig):
        prune_(model, replace(config, overrides=only))
    elif isinstance(config, NMPruneConfig):
        prune_(model, replace(config, overrides=tuple((n, None) for n in candidates if n != layer)))
    elif isinstance(config, ChannelPruneConfig):
        prune_(model, replace(config, overrides=only), example_input=x)
    else:
        skip = tuple((n, None) for n in candidates if n != layer)
        factorize_(model, replace(config, rank_ratio=level, energy=None, mac_ratio=None, overrides=skip),
                   example_input=x)  # fmt: skip
