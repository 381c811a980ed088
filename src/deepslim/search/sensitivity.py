"""Per-layer sensitivity: the accuracy drop when one layer alone is compressed, at several levels.

The table users read before choosing per-layer ratios (Han et al., NeurIPS 2015, Fig. 6; Li et al., ICLR 2017,
Fig. 2). Each (layer, level) runs on a fresh copy of the model; the model passed in is not changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from deepslim.compress.lowrank import SVDConfig, TuckerConfig
from deepslim.compress.prune import NMPruneConfig
from deepslim.compress.quantize import Calibration, LinearQuantConfig
from deepslim.config import Config
from deepslim.data import DataBundle
from deepslim.errors import ConfigError
from deepslim.search._choices import qkv_trios
from deepslim.techniques import technique_for
from deepslim.train import evaluate


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
    """Accuracy on ``data.<split>`` with each layer alone compressed at each level, by any registered technique
    that names its layers (``register_technique(..., layers=...)``).

    ``levels`` set the layer's own value through ``overrides`` (sparsities for magnitude pruning, ratios for channel
    pruning, bit-widths for quantization) or, for factorization, the rank ratio; techniques whose overrides can only
    skip a layer (N:M) ignore them. ``layers`` defaults to every layer the technique applies to (for channel
    pruning: the first layer of each prunable group). Linear quantization's ``calibration='auto'`` is pinned to
    static min/max ranges for every row (on a BERT-style encoder auto would make some rows dynamic, others static).
    With ``calibration='dynamic'`` the row of a query, key or value layer quantizes its whole trio (dynamic int8
    takes all three or none): such a row, labelled by the layer asked for, measures the three together.
    """
    technique = technique_for(config)
    candidates = technique.candidates(model, config, data.example_input)
    chosen = list(layers) if layers is not None else candidates
    unknown = [n for n in chosen if n not in candidates]
    if unknown:
        raise ConfigError(f"sensitivity: {', '.join(unknown)} cannot be compressed by {type(config).__name__}; "
                          f"candidates: {', '.join(candidates)}")  # fmt: skip
    base = evaluate(model, data, split=split).accuracy
    config = _one_calibration(config)
    tied = {n: t for t in qkv_trios(model, candidates) for n in t}
    rows = []
    for layer in chosen:
        for level in (None,) if isinstance(config, NMPruneConfig) else levels:
            trial = copy.deepcopy(model)
            one = _only(config, layer, level, candidates, tied)
            technique.apply(trial, one, example_input=data.example_input, calib_data=data.calib, data=data)
            rows.append((layer, level, evaluate(trial, data, split=split).accuracy))
    return Sensitivity(base, tuple(rows))


def _one_calibration(config: Any) -> Any:
    """``config`` with one calibration for every row: ``calibration='auto'`` pinned to static min/max ranges. Why
    (review L7): auto is dynamic int8 on a BERT-style encoder only at 8 bits and with every query/key/value trio
    whole, so a table's 8-bit rows of feed-forward layers would be dynamic and its other rows static — two kinds of
    quantization compared as one."""
    if isinstance(config, LinearQuantConfig) and config.calibration is Calibration.AUTO:
        return replace(config, calibration=Calibration.MINMAX)
    return config


def _only(config: Any, layer: str, level: float | None, candidates: list[str],
          tied: Mapping[str, tuple[str, ...]] | None = None) -> Config:  # fmt: skip
    """``config`` applied to ``layer`` alone, at ``level`` — with dynamic int8 (``calibration='dynamic'``), a
    query, key or value layer with its trio (``tied``): dynamic int8 quantizes all three or none."""
    skip_others = tuple((n, None) for n in candidates if n != layer)
    if isinstance(config, NMPruneConfig):
        return replace(config, overrides=skip_others)
    if isinstance(config, (SVDConfig, TuckerConfig)):
        return replace(config, rank_ratio=level, energy=None, mac_ratio=None, overrides=skip_others)
    together = (tied or {}).get(layer, (layer,)) if isinstance(config, LinearQuantConfig) and \
        config.calibration is Calibration.DYNAMIC else (layer,)  # fmt: skip
    return replace(config, overrides=(*((n, level) for n in together), ("re:.*", None)))


__all__ = ["Sensitivity", "sensitivity"]
