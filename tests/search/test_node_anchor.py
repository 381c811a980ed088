"""The node table's scale is anchored to the dense model measured end to end in the same run (NodeTable.anchor,
engine.calibrate_table): predictions in measured milliseconds, every ratio between two predictions unchanged."""

import math

import pytest

from deepslim.search.engine import calibrate_table
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, fake_nodes, params_ms, small_space, trained_net


def measured_table() -> LatencyTable:
    """Fake layer times and a fake end-to-end timer (3 µs per parameter): deterministic, and not the node sums."""
    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=three_us_per_parameter)


def three_us_per_parameter(pairs):
    return [3 * ms for ms in params_ms(pairs)]


def test_an_anchor_predicts_the_anchored_sum_at_its_measurement_and_keeps_every_ratio():
    nodes = fake_nodes(measured_table())
    nodes.anchor(2.0, 3.0)
    assert (nodes.scale, nodes.offset) == (1.5, 0.0)
    assert nodes.predict(2.0) == 3.0
    assert nodes.predict(4.0) / nodes.predict(1.0) == pytest.approx(4.0)
    assert nodes.points == [(2.0, 3.0)]


@pytest.mark.parametrize("raw, measured", [(2.0, math.nan), (0.0, 1.0), (2.0, -1.0)])
def test_an_anchor_without_a_usable_measurement_leaves_the_calibration_as_it_was(raw, measured):
    nodes = fake_nodes(measured_table())
    nodes.scale, nodes.offset = 1.25, 0.5
    nodes.anchor(raw, measured)
    assert (nodes.scale, nodes.offset) == (1.25, 0.5)


def test_calibrating_the_table_puts_the_node_frame_in_the_dense_models_measured_milliseconds():
    net, data = trained_net(), digits()
    x = data.example_input
    ev = Evaluator(net, data, small_space(net), measured_table(), latency_model="nodes",
                   nodes=fake_nodes(measured_table()))  # fmt: skip
    oracle = fake_nodes(measured_table())  # an uncalibrated node table of the same fakes: the plain sums
    raw_dense = oracle.raw_model(net, x)
    measured_dense = three_us_per_parameter([(net, x)])[0]
    assert abs(measured_dense / raw_dense - 1) > 0.5  # the fakes disagree: ignoring the scale would show
    dense = calibrate_table(ev)
    assert ev.nodes.scale == pytest.approx(measured_dense / raw_dense) and ev.nodes.offset == 0.0
    assert dense.measurement.measured_latency_ms == pytest.approx(measured_dense)
    assert dense.measurement.extra["predicted_latency_ms"] == pytest.approx(measured_dense)
    policy = ev.space.policy({"keep:0": 4, "keep:3": 4, "int8:3": True})
    cand = ev.evaluate(policy, recovery="none")
    model, _ = ev.model_and_keys(policy, "none")
    raw = oracle.raw_model(model, x)
    assert cand.latency_ms == pytest.approx(raw * measured_dense / raw_dense)  # the same frame as dense
    assert cand.latency_ms / dense.measurement.extra["predicted_latency_ms"] == pytest.approx(raw / raw_dense)
