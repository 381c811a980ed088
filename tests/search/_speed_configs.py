"""The steering settings the speed-move tests were written against (before session 16's defaults: one confirmation,
no stage window, no polish, six rounds of six candidates, no patience), so that each test keeps exercising the
mechanism it names; the new defaults have their own test in test_speed_steering.py."""

from __future__ import annotations

from typing import Any

from deepslim.search.speed_moves import SpeedMovesConfig

BEFORE_16: dict[str, Any] = {"rounds": 6, "candidates": 6, "patience": 0, "shares": (0.05, 0.1, 0.2), "window": 0,
                             "confirms": 1, "polish": 0}  # fmt: skip


def legacy(**changes: Any) -> SpeedMovesConfig:
    """A SpeedMovesConfig with the settings before session 16, then ``changes``."""
    return SpeedMovesConfig(**{**BEFORE_16, **changes})
