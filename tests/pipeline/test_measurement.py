"""The one measurement record: strict JSON round trip, rows of metrics.json (of this and the previous format), and
``measure`` against the functions it stands for."""

from __future__ import annotations

import json
import math

import pytest
import torch

import deepslim as ds
from deepslim.analysis.measurement import Measurement
from deepslim.errors import ConfigError
from deepslim.pipeline import load_for_data, measure

FULL = Measurement(params=10, nonzero_params=7, macs=100, weight_bytes=40, accuracy=0.5, metric="accuracy",
                   metric_value=0.5, archive_bytes=33, device="rpi4", estimated_latency_ms=1.5,
                   estimated_energy_uj=2.25, measured_latency_ms=0.75, runtime="onnxruntime", threads=1,
                   peak_activation_bytes=64, seconds=3.0, load_average=(1.0, 2.0, 3.5),
                   extra={"note": "x"})  # fmt: skip


def test_a_measurement_survives_a_json_round_trip_with_every_field_set():
    back = Measurement.from_dict(json.loads(json.dumps(FULL.to_dict())))
    assert back == FULL and back.load_average == (1.0, 2.0, 3.5)


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(ConfigError, match="'latency'"):
        Measurement.from_dict({**FULL.to_dict(), "latency": 1.0})


@pytest.mark.parametrize(("key", "value"), [("params", "10"), ("params", 1.5), ("threads", True),
                                            ("measured_latency_ms", "fast"), ("load_average", [1.0])])  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        Measurement.from_dict({**FULL.to_dict(), key: value})


def test_a_stage_row_flattens_extra_and_reads_back_including_a_version_1_row():
    row = FULL.to_row(stage="prune", index=2)
    assert row["stage"] == "prune" and row["note"] == "x" and "extra" not in row
    assert Measurement.from_row(row, stage_keys=("stage", "index")) == FULL
    old = {"stage": "train", "index": 1, "seconds": 2.0, "accuracy": 0.9, "params": 5, "nonzero_params": 5,
           "macs": 9, "weight_bytes": 20, "fp32_bytes": 20, "estimated_latency_ms": 0.1,
           "estimated_energy_uj": 0.2, "archive_bytes": 30, "layers": [], "model_file": "m.dsz"}  # fmt: skip
    m = Measurement.from_row(old, stage_keys=("stage", "index", "model_file"))
    assert (m.accuracy, m.archive_bytes, m.metric, m.load_average) == (0.9, 30, None, None)
    assert m.extra == {"fp32_bytes": 20, "layers": []}


def test_measure_reports_what_profile_cost_model_evaluate_and_encode_report():
    torch.manual_seed(0)
    data = ds.load_data("digits")
    model = load_for_data("lenet300", data)  # sized for the 8x8 digits
    m = measure(model, data, device="rpi4", layers=True)
    prof = ds.profile(model, data.example_input, device="rpi4")
    cost = ds.estimate_cost(prof, "rpi4")
    assert (m.params, m.nonzero_params, m.macs, m.weight_bytes) == (prof.params, prof.nonzero_params, prof.macs,
                                                                     prof.weight_bytes)  # fmt: skip
    assert m.peak_activation_bytes == prof.peak_activation_bytes
    assert (m.estimated_latency_ms, m.estimated_energy_uj) == (cost.latency_ms, cost.energy_uj)
    assert m.accuracy == ds.evaluate(model, data.test).accuracy and m.metric == "accuracy"
    assert m.archive_bytes == len(ds.encode(model))
    assert m.measured_latency_ms is None and m.runtime is None  # latency was not asked for
    assert len(m.load_average) == 3 and m.seconds > 0 and m.device == "rpi4"
    assert {ly["name"] for ly in m.extra["layers"]} == {lp.name for lp in prof.layers if lp.params or lp.macs}
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_measure_without_data_or_example_input_is_refused_and_without_data_has_no_metric():
    model = ds.load_model("lenet300", num_classes=10)
    with pytest.raises(ConfigError, match="example input"):
        measure(model)
    m = measure(model, example_input=torch.randn(1, 784), archive=False)
    assert m.accuracy is None and m.archive_bytes is None and m.estimated_latency_ms is None
    assert not math.isnan(m.seconds)


def test_a_run_result_reads_its_metrics_rows_back_as_measurements(tmp_path):
    result = ds.run_recipe(ds.load_recipe({"model": "lenet300", "data": "digits", "stages": ["encode"]}),
                           tmp_path / "run")  # fmt: skip
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["stages"]
    ms = result.measurements()
    assert [m.archive_bytes for m in ms] == [r["archive_bytes"] for r in rows] and ms[0].archive_bytes > 0
    assert [m.seconds for m in ms] == [r["seconds"] for r in rows] and ms[0].seconds == 0.0  # the stage's time
    assert ms[0].device == rows[0]["device"] is not None and "layers" in ms[-1].extra
    assert ms[-1].to_row(stage="encode", index=1, model_file=rows[-1]["model_file"]) == rows[-1]
