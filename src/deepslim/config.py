"""Shared config machinery: per-layer overrides keyed by layer name or ``re:``-prefixed regular expression."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
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


# -- configs as plain JSON ---------------------------------------------------------------------------------------------

Overrides = tuple[tuple[str, V], ...]
"""Per-layer values: ordered (layer name or ``re:`` pattern, value) pairs; a value of None skips the layer."""

_C = TypeVar("_C", bound="Config")


class Config:
    """Base of every technique config: a frozen, kw_only dataclass that round-trips through plain JSON.

    ``to_dict()`` gives JSON types only (enums by value, tuples as lists, per-layer overrides as an ordered mapping);
    ``Config.from_dict(d)`` checks every key and type before building, so a typo or a string where a number belongs
    is a ``ConfigError`` naming the key and the technique, never a silently different config.
    """

    def to_dict(self) -> dict[str, Any]:
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a dataclass to be a Config")
        return {f.name: _to_json(getattr(self, f.name), f.name == "overrides" or f.name == "hints")
                for f in dataclasses.fields(self)}  # fmt: skip

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name} is given as a mapping of its fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise ConfigError(f"{name} has no field {unknown[0]!r} (fields: {', '.join(fields)})")
        missing = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # fmt: skip
        if missing:
            raise ConfigError(f"{name} needs {missing[0]!r}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not _fits(value, hints.get(key, Any)):
                raise ConfigError(f"{name}.{key} must be {_describe(hints.get(key, Any))}, got {value!r}")
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {exc}") from None


def _to_json(value: Any, pairs: bool = False) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Config):
        return value.to_dict()
    if pairs and isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return {str(k): _to_json(v) for k, v in value}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint`` (enums by value, tuples as lists)."""
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, Enum):
        return isinstance(value, hint) or any(value == e.value for e in hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if isinstance(value, Mapping):  # per-layer overrides written as a mapping
            return len(args) == 2 and args[1] is Ellipsis and all(_fits(p, args[0]) for p in value.items())
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis \
            and typing.get_origin(args[0]) is tuple and len(typing.get_args(args[0])) == 2:  # fmt: skip
        value = typing.get_args(args[0])[1]
        values = [a for a in (typing.get_args(value) or (value,)) if a is not type(None)]
        what = " or ".join([*(_describe(v) for v in values), "null (skip the layer)"])
        return f"a mapping of layer names or 're:' patterns to {what}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(repr(e.value) for e in hint)
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "")
