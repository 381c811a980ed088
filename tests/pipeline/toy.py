"""A user's own technique, registered the way docs/extending.md shows: a config, a verb, one register_technique call.

``toy_scale`` multiplies the weights of every linear layer by ``factor`` (per-layer ``overrides``: a factor or None
to skip); while ``TRIP["armed"]`` is true it raises instead, which tests use to interrupt a run after its earlier
stages finished."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepslim.config import Config, Overrides, freeze_overrides, lookup
from deepslim.errors import ConfigError
from deepslim.techniques import register_technique

TRIP = {"armed": False, "calls": 0}


class Interrupted(RuntimeError):
    """What the armed toy raises (a crash in the middle of a long run)."""


@dataclass(frozen=True, kw_only=True)
class ToyScaleConfig(Config):
    """Scale every linear layer's weight by ``factor``."""

    factor: float = 0.5
    overrides: Overrides[float | None] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.factor <= 1.0:
            raise ConfigError(f"factor must be in (0, 1], got {self.factor}")
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides))


def toy_scale_(model: nn.Module, config: ToyScaleConfig, *, example_input: torch.Tensor | None = None) -> nn.Module:
    TRIP["calls"] += 1
    if TRIP["armed"]:
        raise Interrupted("the toy technique was told to fail")
    if example_input is None:
        raise ConfigError("toy_scale needs example_input")
    with torch.no_grad():
        for name, m in model.named_modules():
            factor = lookup(config.overrides, name, config.factor)
            if isinstance(m, nn.Linear) and factor is not None:
                m.weight.mul_(factor)
    return model


TOY = register_technique("toy_scale", ToyScaleConfig, toy_scale_, kind="toyscale",
                         layers=lambda model, config, x=None: [n for n, m in model.named_modules()
                                                               if isinstance(m, nn.Linear)])  # fmt: skip
