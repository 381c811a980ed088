"""Shared config machinery: per-layer overrides keyed by layer name or ``re:``-prefixed regular expression."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar

from deepslim.errors import ConfigError

V = TypeVar("V")
_UNSET: Any = object()


def freeze_overrides(overrides: Mapping[str, V] | Iterable[tuple[str, V]] | None,
                     check: Callable[[str, V], None] | None = None) -> tuple[tuple[str, V], ...]:  # fmt: skip
    """Overrides as an ordered tuple of (pattern, value) pairs, with every ``re:`` pattern checked to compile.

    ``check(what, value)`` validates each value that is not None (None always means: skip the layer).
    """
    if overrides is None:
        return ()
    pairs = tuple(overrides.items()) if isinstance(overrides, Mapping) else tuple(overrides)
    for pattern, _ in pairs:
        if not isinstance(pattern, str):
            raise ConfigError(f"override keys must be layer names or 're:' patterns, got {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise ConfigError(f"override pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if check is not None:
        for pattern, value in pairs:
            if value is not None:
                check(f"override {pattern!r}", value)
    return pairs


def skip_only(kind: str) -> Callable[[str, Any], None]:
    """A ``check`` for configs whose overrides can only skip layers."""

    def check(what: str, value: Any) -> None:
        raise ConfigError(f"{kind} overrides may only map layers to None (skip); {what} gives {value!r}")

    return check


def coerce_enum(config: Any, field: str, enum: type[Enum]) -> None:
    """Let a frozen config accept an enum's value as a string (``scope="global"``), with a clear error otherwise."""
    value = getattr(config, field)
    if isinstance(value, enum):
        return
    try:
        object.__setattr__(config, field, enum(value))
    except ValueError:
        raise ConfigError(f"{field} must be one of {[e.value for e in enum]}, got {value!r}") from None


def matches(pattern: str, name: str) -> bool:
    """``re:REGEX`` matches the whole layer name; anything else is an exact name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def lookup(overrides: tuple[tuple[str, V], ...], name: str, default: V) -> V:
    """The value of the first override matching ``name`` (which may be None: skip the layer), else ``default``."""
    for pattern, value in overrides:
        if matches(pattern, name):
            return value
    return default


def unmatched(overrides: tuple[tuple[str, Any], ...], names: Iterable[str]) -> list[str]:
    """Override patterns that match none of ``names`` (almost always a typo worth reporting)."""
    names = list(names)
    return [p for p, _ in overrides if not any(matches(p, n) for n in names)]
