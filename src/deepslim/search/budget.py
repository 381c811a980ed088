"""Objectives and budgets of a search: what to optimise, and the limits a policy must meet.

Budgets are absolute (``latency=3ms``, ``size=200KB``, ``energy=40uJ``, ``memory=64KB``) or relative to the dense
model (``latency=0.5x``). Memory is the peak activation memory of one inference at batch 1 (the profiler's
``peak_activation_bytes``: the most activation bytes alive at once, inputs included, weights excluded) — what a
microcontroller's SRAM must hold besides the weights. Energy is the cost model's estimate per inference on a named
device profile (:mod:`deepslim.analysis.devices`; Horowitz's 45 nm table), not a measurement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deepslim.errors import ConfigError

# objective -> (direction, unit)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("maximize", ""),
    "latency": ("minimize", "ms"),
    "size": ("minimize", "B"),
    "energy": ("minimize", "µJ"),
    "memory": ("minimize", "B"),
}
BUDGETS = ("latency", "size", "energy", "memory")
# how messages name each budget's unit
UNIT_NAMES = {"latency": "ms", "size": "bytes", "energy": "µJ", "memory": "bytes"}
_UNITS = {"latency": {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3},
          "size": {"b": 1.0, "kb": 1e3, "mb": 1e6, "kib": 1024.0, "mib": 1024.0**2, "gb": 1e9},
          "energy": {"uj": 1.0, "µj": 1.0, "nj": 1e-3, "mj": 1e3, "j": 1e6}}  # fmt: skip
_UNITS["memory"] = dict(_UNITS["size"])
_PLAIN = {"latency": "ms", "size": "b", "energy": "uj", "memory": "b"}  # the unit of a plain number


def check_objectives(names: Sequence[str]) -> tuple[str, ...]:
    """The objectives, checked: unknown or repeated names are a ConfigError listing the valid ones."""
    names = tuple(names)
    if not names:
        raise ConfigError(f"give at least one objective: {', '.join(OBJECTIVES)}")
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"unknown objective {n!r}; choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives repeat a name: {', '.join(names)}")
    return names


@dataclass(frozen=True)
class Budget:
    """``metric`` ≤ ``value`` (ms, bytes or µJ), or ≤ ``value`` × the dense model's when ``relative``."""

    metric: str
    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if self.metric not in BUDGETS:
            raise ConfigError(f"unknown budget {self.metric!r}; choose from {', '.join(BUDGETS)}")
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ConfigError(f"a {self.metric} budget must be a positive number, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``latency=0.5x``, ``latency=3ms``, ``size=200KB``, ``energy=40uJ`` (a plain number is ms, bytes or µJ)."""
        metric, sep, rest = text.partition("=")
        metric, rest = metric.strip(), rest.strip()
        if not sep or not rest:
            raise ConfigError(f"a budget is METRIC=VALUE like latency=0.5x or size=200KB, got {text!r}")
        if metric not in BUDGETS:
            raise ConfigError(f"unknown budget {metric!r}; choose from {', '.join(BUDGETS)}")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Zµ]*)", rest)
        if m is None:
            raise ConfigError(f"cannot read the budget value {rest!r}: a number and a unit (0.5x, 3ms, 200KB, 40uJ)")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit == "x":
            return cls(metric, number, relative=True)
        scale = _UNITS[metric].get(unit or _PLAIN[metric])
        if scale is None:
            raise ConfigError(f"unknown unit {m.group(2)!r} for {metric}; use x (relative to dense) or "
                              f"{', '.join(_UNITS[metric])}")  # fmt: skip
        return cls(metric, number * scale)

    def limit(self, dense: float) -> float:
        """The absolute limit (ms, bytes or µJ), given the dense model's value."""
        return self.value * dense if self.relative else self.value

    def __str__(self) -> str:
        unit = "x" if self.relative else OBJECTIVES[self.metric][1]
        return f"{self.metric}={self.value:g}{unit}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "relative": self.relative, "text": str(self)}


def as_budgets(budget: Budget | str | Sequence[Budget | str] | None) -> tuple[Budget, ...]:
    if budget is None:
        return ()
    items = [budget] if isinstance(budget, (Budget, str)) else list(budget)
    found = tuple(b if isinstance(b, Budget) else Budget.parse(b) for b in items)
    metrics = [b.metric for b in found]
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"one budget per metric, got {', '.join(map(str, found))}")
    return found


def pareto(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (each point: one value per objective; ``directions`` maximize/minimize)."""
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    keyed = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return [i for i, p in enumerate(keyed) if not any(dominates(q, p) for j, q in enumerate(keyed) if j != i)]


def uses(metric: str, objectives: Sequence[str], budgets: Sequence[Budget]) -> bool:
    """Whether ``metric`` is an objective or has a budget (what the search must measure for every trial)."""
    return metric in objectives or any(b.metric == metric for b in budgets)


def check_device(device: str | None, objectives: Sequence[str], budgets: Sequence[Budget]) -> str | None:
    """The device profile energy is estimated on: ``device``, or ``"host"`` when energy is searched without one
    named (None when energy plays no part and no device is named). An unknown name lists the known ones."""
    from deepslim.analysis.devices import list_devices
    from deepslim.errors import UnknownNameError

    if device is None:
        return "host" if uses("energy", objectives, budgets) else None
    if device not in list_devices():
        raise UnknownNameError("device", device, list_devices())
    return device
