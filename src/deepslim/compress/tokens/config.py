"""Configs of the token reductions: one value for every layer, or one per layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from deepslim.config import Config
from deepslim.errors import ConfigError


def _per_layer(value: Any, name: str) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and not value:
        raise ConfigError(f"{name} per layer must list at least one layer")
    return value


def expand(value: Any, layers: int, name: str) -> tuple[Any, ...]:
    """``value`` for each of ``layers`` layers (a scalar repeats; a tuple must have one entry per layer)."""
    if not isinstance(value, tuple):
        return (value,) * layers
    if len(value) != layers:
        raise ConfigError(f"{name} lists {len(value)} layers, but the model has {layers}")
    return value


MergeMetric = Literal["keys", "keys_states", "states"]
METRICS: tuple[str, ...] = ("keys", "keys_states", "states")
STATE_METRICS = ("keys_states", "states")  # the metrics that compare the layer-normalized token states


@dataclass(frozen=True, kw_only=True)
class MergeTokensConfig(Config):
    """ToMe: merge ``r`` tokens in every layer (or ``r=(r0, r1, ...)`` per layer); r=0 changes nothing.

    Merging halves at most: a layer with T tokens merges at most (T - 1) // 2 of them, CLS never.

    ``metric`` is what two tokens are compared by (cosine similarity): ``"keys"``, ToMe's attention keys averaged
    over heads; or ``"keys_states"``, each head's unit key and the token's layer-normalized state (before the
    norm's scale and shift) side by side, half the weight each. Averaging keys over heads mixes unrelated
    subspaces: on all-MiniLM-L6-v2 at sequence 128 (the 72 built-in passages), r=16 per layer keeps mean cosine
    0.9377 with ``"keys"`` and 0.9799 with ``"keys_states"`` (BENCHMARKS, session 11), at the price of a similarity
    product 2·C wide instead of C/heads and a few elementwise operators per merging layer. ``"states"``: the
    normalized state alone (the keys half left out): 0.9727 there, and with r=16's token-distilled weights 0.9786
    against 0.9846, but without the keys half that model ran a median 3 % faster in ONNX Runtime at batch 1 and
    6 % at batch 32; distilled under it, r=(16, 16, 16, 16, 16, 0) keeps 0.9817 (BENCHMARKS, session 16).
    """

    r: int | tuple[int, ...] = 8
    metric: MergeMetric = "keys"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric is one of {', '.join(METRICS)}; got {self.metric!r}")
        r = _per_layer(self.r, "r")
        object.__setattr__(self, "r", r)
        for v in r if isinstance(r, tuple) else (r,):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"r is the number of tokens merged per layer, an int >= 0; got {v!r}")



@dataclass(frozen=True, kw_only=True)
class PruneTokensConfig(Config):
    """Token pruning by attention received. Either each layer keeps ``keep_ratio`` of its tokens (CLS always), or,
    with ``threshold`` (one value, or one per layer, e.g. learned by
    :func:`~deepslim.train.learn_token_thresholds`), each layer removes the tokens that receive less than
    ``threshold`` × the uniform share of attention (0 keeps every token; 1 removes those below average). Threshold
    pruning keeps as many tokens as the text needs, so its ONNX graph has a dynamic token count; it cannot be
    combined with ``keep_ratio`` < 1 or with merging. ``pool_removed`` (sentence encoders): a removed token still
    counts in the mean pooling, with its state at the layer it left."""

    keep_ratio: float | tuple[float, ...] = 0.8
    threshold: float | tuple[float, ...] | None = None
    pool_removed: bool = False

    def __post_init__(self) -> None:
        keep = _per_layer(self.keep_ratio, "keep_ratio")
        object.__setattr__(self, "keep_ratio", keep)
        for v in keep if isinstance(keep, tuple) else (keep,):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0 or math.isnan(v):
                raise ConfigError(f"keep_ratio is the share of tokens a layer keeps, in (0, 1]; got {v!r}")
        threshold = _per_layer(self.threshold, "threshold")
        object.__setattr__(self, "threshold", threshold)
        if threshold is None:
            return
        for v in threshold if isinstance(threshold, tuple) else (threshold,):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < math.inf:
                raise ConfigError(f"threshold is a multiple of the uniform attention share, a finite number >= 0 "
                                  f"(0 keeps every token); got {v!r}")  # fmt: skip
        if any(k < 1.0 for k in (keep if isinstance(keep, tuple) else (keep,))):
            raise ConfigError("threshold replaces keep_ratio: set keep_ratio=1.0 with a threshold")
