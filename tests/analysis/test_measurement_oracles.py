"""The measurement record's own rules (deepslim.analysis.measurement.Measurement): which values each field takes,
the exact refusals, the JSON and flat-row round trips. (tests/pipeline/test_measurement.py fills one from a model.)"""

import json
import math

import pytest

from deepslim.analysis.measurement import Measurement
from deepslim.errors import ConfigError

BASE = {"params": 10, "nonzero_params": 8, "macs": 100, "weight_bytes": 40}


def test_the_defaults_are_not_measured_and_the_dict_has_every_field_in_order():
    m = Measurement(**BASE)
    assert m.to_dict() == {**BASE, "accuracy": None, "metric": None, "metric_value": None, "archive_bytes": None,
                           "device": None, "estimated_latency_ms": None, "estimated_energy_uj": None,
                           "measured_latency_ms": None, "runtime": None, "threads": None,
                           "peak_activation_bytes": None, "seconds": None, "load_average": None,
                           "extra": {}}  # fmt: skip
    assert list(m.to_dict())[:4] == list(BASE)


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("params", 1.0, "an integer"), ("params", True, "an integer"), ("nonzero_params", "8", "an integer"),
    ("macs", None, None), ("weight_bytes", 2.5, "an integer"), ("archive_bytes", False, "an integer"),
    ("threads", 1.0, "an integer"), ("peak_activation_bytes", "1", "an integer"),
    ("accuracy", "0.9", "a number"), ("accuracy", True, "a number"), ("metric_value", [1], "a number"),
    ("estimated_latency_ms", "1", "a number"), ("estimated_energy_uj", "1", "a number"),
    ("measured_latency_ms", "1", "a number"), ("seconds", "1", "a number"),
    ("metric", 1, "a string"), ("device", 1, "a string"), ("runtime", 1, "a string"),
    ("extra", [], "an object"), ("load_average", "1 2 3", "a list"),
])  # fmt: skip
def test_a_value_of_the_wrong_kind_is_refused_with_the_field_and_the_kind(key, value, kind):
    if kind is None:  # a required field given as None is "not measured" and accepted by the constructor
        assert Measurement(**{**BASE, key: value}).macs is None
        return
    with pytest.raises(ConfigError) as info:
        Measurement(**{**BASE, key: value})
    assert str(info.value) == f"Measurement.{key} must be {kind}, got {value!r}"


@pytest.mark.parametrize(("key", "value"), [
    ("accuracy", 1), ("accuracy", math.nan), ("seconds", 0), ("metric_value", -2.5), ("params", 0),
])  # fmt: skip
def test_integers_are_numbers_and_nan_and_zero_are_values(key, value):
    got = getattr(Measurement(**{**BASE, key: value}), key)
    assert got == value or (math.isnan(got) and math.isnan(value))


@pytest.mark.parametrize("load", [(1, 2), (1, 2, 3, 4), (1, "2", 3), (1, None, 3), [1, 2, True + 0.5, 4]])
def test_a_load_average_that_is_not_three_numbers_is_refused(load):
    with pytest.raises(ConfigError, match=r"^Measurement.load_average must be three numbers, got "):
        Measurement(**BASE, load_average=load)


def test_a_load_average_list_of_integers_becomes_a_tuple_of_floats_and_goes_back_as_a_list():
    m = Measurement(**BASE, load_average=[1, 2, 3.5])
    assert m.load_average == (1.0, 2.0, 3.5) and all(type(v) is float for v in m.load_average)
    doc = m.to_dict()
    assert doc["load_average"] == [1.0, 2.0, 3.5] and isinstance(doc["load_average"], list)
    back = Measurement.from_dict(json.loads(json.dumps(doc)))
    assert back == m and isinstance(back.load_average, tuple)


def test_the_dict_copies_extra_so_changing_it_leaves_the_record_alone():
    m = Measurement(**BASE, extra={"a": 1})
    doc = m.to_dict()
    doc["extra"]["a"] = 2
    assert m.extra == {"a": 1}


def test_from_dict_refuses_non_objects_unknown_and_missing_keys_by_name():
    with pytest.raises(ConfigError, match=r"^a measurement is a JSON object, got list$"):
        Measurement.from_dict([BASE])
    with pytest.raises(ConfigError) as info:
        Measurement.from_dict({**BASE, "latency": 1, "acc": 2})
    message = str(info.value)
    assert message.startswith("unknown measurement key(s) 'acc', 'latency'; known: accuracy, archive_bytes, ")
    assert message.endswith(", threads, weight_bytes")
    with pytest.raises(ConfigError, match=r"^measurement lacks 'macs', 'params'$"):
        Measurement.from_dict({"nonzero_params": 1, "weight_bytes": 2})


def test_from_dict_takes_a_null_extra_and_null_load_average_as_empty_and_unmeasured():
    m = Measurement.from_dict({**BASE, "extra": None, "load_average": None})
    assert m.extra == {} and m.load_average is None
    assert Measurement.from_dict({**BASE, "load_average": [0, 0, 0]}).load_average == (0.0, 0.0, 0.0)


def test_a_row_puts_stage_keys_first_then_fields_then_extra_and_refuses_a_clash():
    m = Measurement(**BASE, accuracy=0.5, extra={"note": "x"})
    row = m.to_row(stage="prune", index=2)
    assert list(row)[:3] == ["stage", "index", "params"] and list(row)[-1] == "note"
    assert row["note"] == "x" and "extra" not in row and row["accuracy"] == 0.5
    with pytest.raises(ConfigError, match=r"^Measurement.extra repeats field\(s\) \['accuracy', 'macs'\]$"):
        Measurement(**BASE, extra={"macs": 1, "accuracy": 2, "ok": 3}).to_row()


def test_a_row_reads_back_dropping_only_the_stage_keys_and_keeping_other_keys_as_extra():
    row = {"stage": "prune", "index": 2, **BASE, "seconds": 1.5, "fp32_bytes": 9, "extra": {"nested": 1}}
    m = Measurement.from_row(row, stage_keys=("stage", "index"))
    assert m.seconds == 1.5 and m.params == 10
    assert m.extra == {"fp32_bytes": 9, "extra": {"nested": 1}}  # a key named extra in a row is not the field
    kept = Measurement.from_row(row)
    assert kept.extra == {"stage": "prune", "index": 2, "fp32_bytes": 9, "extra": {"nested": 1}}
