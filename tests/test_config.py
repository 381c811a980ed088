"""The Config base: plain-JSON round trips (enums by value, tuples as lists, per-layer overrides as ordered
mappings, nested configs) and from_dict refusing what is not the field's type, naming the key and the config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import pytest

from deepslim.config import Config, Overrides, coerce_enum, freeze_overrides, lookup, unmatched
from deepslim.errors import ConfigError


class Mode(Enum):
    FAST = "fast"
    EXACT = "exact"


@dataclass(frozen=True, kw_only=True)
class Inner(Config):
    scale: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Sample(Config):
    count: int
    ratio: float = 0.5
    mode: Mode = Mode.FAST
    flag: bool = False
    shape: tuple[int, ...] = ()
    note: str | None = None
    inner: Inner = field(default_factory=Inner)
    overrides: Overrides[int | None] = ()

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", Mode)
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides))


def test_a_config_round_trips_through_plain_json_in_order():
    config = Sample(count=3, ratio=0.25, mode=Mode.EXACT, flag=True, shape=(1, 2), note="n", inner=Inner(scale=2.0),
                    overrides={"re:b.*": 4, "a": None, "c": 2})  # fmt: skip
    doc = config.to_dict()
    assert doc == {"count": 3, "ratio": 0.25, "mode": "exact", "flag": True, "shape": [1, 2], "note": "n",
                   "inner": {"scale": 2.0}, "overrides": {"re:b.*": 4, "a": None, "c": 2}}  # fmt: skip
    assert list(doc["overrides"]) == ["re:b.*", "a", "c"]  # first match wins: the order is part of the policy
    back = Sample.from_dict({**json.loads(json.dumps(doc)), "inner": Inner.from_dict(doc["inner"])})
    assert back == config and back.overrides == (("re:b.*", 4), ("a", None), ("c", 2))
    assert lookup(back.overrides, "bz", 0) == 4 and lookup(back.overrides, "a", 0) is None
    assert lookup(back.overrides, "d", 7) == 7 and unmatched(back.overrides, ["a", "bz"]) == ["c"]


@pytest.mark.parametrize(("data", "message"), [
    ({"count": 1, "cuont": 2}, "Sample has no field 'cuont' (fields: count, ratio, mode"),
    ({}, "Sample needs 'count'"),
    ({"count": True}, "Sample.count must be an integer, got True"),
    ({"count": 1.5}, "Sample.count must be an integer, got 1.5"),
    ({"count": 1, "ratio": "half"}, "Sample.ratio must be a number, got 'half'"),
    ({"count": 1, "flag": 1}, "Sample.flag must be true or false, got 1"),
    ({"count": 1, "mode": "slow"}, "Sample.mode must be one of 'fast', 'exact', got 'slow'"),
    ({"count": 1, "note": 3}, "Sample.note must be a string or null, got 3"),
    ({"count": 1, "shape": [1, "x"]}, "Sample.shape must be"),
    ({"count": 1, "overrides": {"a": "x"}}, "Sample.overrides must be a mapping of layer names or 're:' patterns to "
                                            "an integer or null (skip the layer)"),
    ({"count": 1, "overrides": {"re:[": 1}}, "Sample: override pattern 're:[' is not a valid regular expression"),
])  # fmt: skip
def test_from_dict_names_the_key_and_the_config(data, message):
    with pytest.raises(ConfigError) as info:
        Sample.from_dict(data)
    assert message in str(info.value)


def test_from_dict_takes_a_mapping_only():
    with pytest.raises(ConfigError, match="Sample is given as a mapping of its fields, got list"):
        Sample.from_dict([("count", 1)])  # type: ignore[arg-type]
    assert Sample.from_dict({"count": 2, "ratio": 1}).ratio == 1  # an integer is a number
