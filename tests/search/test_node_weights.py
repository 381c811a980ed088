"""The node table calibrated in its sum and the model's weight bytes (NodeTable.calibrate_weights, weight_mb, and
engine.calibrate_table with ``calibration_policies``): exact coefficients from scripted timings, the dense anchor
kept with too few points or a fit that fails, and bad input refused."""

import math

import numpy as np
import pytest
from torch import nn

from deepslim.errors import ConfigError
from deepslim.search.engine import calibrate_table
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import weight_mb
from tests.search._tiny import digits, fake_ms, fake_nodes, small_space, trained_net

A, B, C = 1.3, 40.0, -0.02  # scripted: measured = A × node sum + B × weight MiB + C


def synthetic(n: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(0)
    return [(float(r), float(w), A * r + B * w + C) for r, w in zip(rng.uniform(0.05, 0.3, n),
                                                                    rng.uniform(0.001, 0.01, n), strict=True)]


def test_a_weight_fit_recovers_the_exact_coefficients_of_scripted_points():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert nodes.calibrate_weights(synthetic(12))
    assert (nodes.scale, nodes.weight_coef, nodes.offset) == pytest.approx((A, B, C), rel=1e-9, abs=1e-12)
    assert nodes.predict(0.2, 0.005) == pytest.approx(A * 0.2 + B * 0.005 + C)
    assert len(nodes.points) == 12


def test_a_weight_fit_needs_the_weights_to_predict():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert nodes.calibrate_weights(synthetic(12))
    with pytest.raises(ConfigError, match="weight_mb"):
        nodes.predict(0.2)


def test_a_weight_fit_through_the_dense_point_predicts_dense_exactly_and_fits_the_rest_by_least_squares():
    rng = np.random.default_rng(1)
    noisy = [(r, w, m * (1 + 0.05 * e)) for (r, w, m), e in zip(synthetic(14), rng.standard_normal(14), strict=True)]
    dense = (0.4, 0.012, 0.5)  # off the plane: the free fit would not pass through it
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert nodes.calibrate_weights(noisy, through=dense)
    assert nodes.predict(0.4, 0.012) == pytest.approx(0.5, rel=1e-12)
    # the oracle: least squares on the differences to the dense point, no intercept
    diffs = np.array([[r - 0.4, w - 0.012] for r, w, _ in noisy])
    (scale, per_mib), *_ = np.linalg.lstsq(diffs, np.array([m - 0.5 for *_, m in noisy]), rcond=None)
    assert (nodes.scale, nodes.weight_coef) == pytest.approx((scale, per_mib), rel=1e-9)
    free = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert free.calibrate_weights(noisy)
    assert free.predict(0.4, 0.012) != pytest.approx(0.5, rel=1e-3)


def test_a_weight_fit_through_a_point_on_the_plane_recovers_the_exact_coefficients():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert nodes.calibrate_weights(synthetic(12), through=(0.3, 0.02, A * 0.3 + B * 0.02 + C))
    assert (nodes.scale, nodes.weight_coef, nodes.offset) == pytest.approx((A, B, C), rel=1e-9, abs=1e-12)


def test_a_weight_fit_through_a_point_refuses_a_point_that_is_not_a_finite_triple():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    for bad in [(0.3, 0.02), (0.3, math.nan, 1.0)]:
        with pytest.raises(ConfigError, match="goes through"):
            nodes.calibrate_weights(synthetic(12), through=bad)


@pytest.mark.parametrize("points", [
    synthetic(9),  # too few
    synthetic(9) + [(0.1, 0.002, math.nan)] * 3,  # NaN measurements do not count
    [(r, 0.004, m) for r, _, m in synthetic(12)],  # one weight size for all: the two terms cannot be told apart
    [(r, w, 5.0 - 10 * r) for r, w, _ in synthetic(12)],  # slower with fewer nodes: no positive scale
])  # fmt: skip
def test_a_weight_fit_that_cannot_be_made_leaves_the_calibration_as_it_was(points):
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    nodes.anchor(2.0, 3.0)
    assert not nodes.calibrate_weights(points)
    assert (nodes.scale, nodes.offset, nodes.weight_coef) == (1.5, 0.0, 0.0)
    assert nodes.predict(2.0) == 3.0


@pytest.mark.parametrize("points, kw, message", [
    (synthetic(12), {"min_points": 2}, "at least 3"),
    ([(0.1, 0.002)] * 12, {}, "triples"),
    ([(0.1, -0.002, 1.0)] * 12, {}, "non-negative"),
    ([(math.inf, 0.002, 1.0)] * 12, {}, "finite"),
])  # fmt: skip
def test_bad_weight_fit_input_is_refused_with_what_to_pass(points, kw, message):
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    with pytest.raises(ConfigError, match=message):
        nodes.calibrate_weights(points, **kw)


def test_weight_mb_counts_four_bytes_per_float_weight_and_one_per_int8_one():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 10))
    assert weight_mb(net) == (36 * 4 + 4 * 4 + 160 * 4 + 10 * 4) / 2**20
    net[0].bits = 8  # what a quantized layer (QConv2d, QLinear) carries
    assert weight_mb(net) == (36 * 1 + 4 * 4 + 160 * 4 + 10 * 4) / 2**20


def scripted(oracle):
    """An end-to-end timer that answers exactly A × node sum + B × weight MiB + C for every model."""
    return lambda pairs: [A * oracle.raw_model(m, x) + B * weight_mb(m) + C for m, x in pairs]


def evaluator(extra: int, timer=None) -> tuple[Evaluator, object]:
    net, data = trained_net(), digits()
    oracle = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=timer or scripted(oracle))
    ev = Evaluator(net, data, small_space(net), table, latency_model="nodes", nodes=fake_nodes(table),
                   calibration_policies=extra)  # fmt: skip
    return ev, oracle


def test_a_search_calibrated_on_enough_policies_predicts_a_held_out_policy_exactly():
    ev, oracle = evaluator(5)  # 7 fixed + 5 spread policies: 12 measured
    calibrate_table(ev)
    assert (ev.nodes.scale, ev.nodes.weight_coef, ev.nodes.offset) == pytest.approx((A, B, C), rel=1e-6, abs=1e-9)
    policy = ev.space.policy({"keep:0": 4, "keep:3": 8, "int8:3": True})
    model, _ = ev.model_and_keys(policy, "none")
    expected = A * oracle.raw_model(model, digits().example_input) + B * weight_mb(model) + C
    assert ev.evaluate(policy, recovery="none").latency_ms == pytest.approx(expected, rel=1e-6)


def test_a_search_with_the_default_calibration_still_anchors_to_the_dense_model():
    ev, oracle = evaluator(0)  # 7 points: too few for the weight term
    dense = calibrate_table(ev)
    raw = oracle.raw_model(ev.model, digits().example_input)
    assert ev.nodes.weight_coef == 0.0 and ev.nodes.offset == 0.0
    assert ev.nodes.scale == pytest.approx(dense.measurement.measured_latency_ms / raw)


def test_a_weight_fit_that_fails_falls_back_to_the_dense_anchor_with_a_warning(caplog):
    ev, oracle = evaluator(5, timer=lambda pairs: [1.0 - sum(p.numel() for p in m.parameters()) / 1e4
                                                    for m, _ in pairs])  # fmt: skip  # faster when larger
    dense = calibrate_table(ev)
    assert "weight-bytes fit failed" in caplog.text
    raw = oracle.raw_model(ev.model, digits().example_input)
    assert ev.nodes.weight_coef == 0.0
    assert ev.nodes.scale == pytest.approx(dense.measurement.measured_latency_ms / raw)


def test_a_negative_number_of_calibration_policies_is_refused():
    net = trained_net()
    with pytest.raises(ConfigError, match="calibration_policies"):
        Evaluator(net, digits(), small_space(net), LatencyTable(timer=lambda keys: [0.0] * len(keys)),
                  calibration_policies=-1)  # fmt: skip


def test_a_model_in_int8_weighs_less_than_in_float():
    ev, _ = evaluator(0)
    p = {"keep:0": 8, "keep:3": 8}
    fp, _ = ev.model_and_keys(ev.space.policy({**p, "int8:3": False}), "none")
    q, _ = ev.model_and_keys(ev.space.policy({**p, "int8:3": True}), "none")
    int8 = [m for m in q.modules() if getattr(m, "bits", None) == 8]  # the policy's layer and those tied to it
    assert q[3] in int8
    assert weight_mb(fp) - weight_mb(q) == pytest.approx(sum(m.weight.numel() * 3 for m in int8) / 2**20)


def test_a_knee_in_the_weights_is_found_on_scripted_points_and_kept_by_a_pin():
    """Scripted: measured = 1.1 × sum + 0.05 × max(0, MiB − 0.7) + 0.01 (weights below 0.7 MiB cost nothing beyond
    their nodes). ``knee=True`` recovers the knee (on the grid: 0 to the largest 2.8 MiB in 40 steps) and predicts
    exactly; the plane in all the MiB (the default) does not; a pin through dense and a floor keeps the knee."""
    rng = np.random.default_rng(1)
    sizes = [2.8] + [float(w) for w in rng.uniform(0.05, 2.5, 13)]
    points = [(float(r), w, 1.1 * r + 0.05 * max(0.0, w - 0.7) + 0.01) for r, w in
              zip(rng.uniform(0.05, 0.4, 14), sizes, strict=True)]  # fmt: skip
    dense = points[0]
    plane = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert plane.calibrate_weights(points, through=dense) and plane.weight_knee == 0.0
    assert max(abs(plane.predict(r, w) / m - 1) for r, w, m in points) > 0.01
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    assert nodes.calibrate_weights(points, through=dense, knee=True)
    assert nodes.weight_knee == pytest.approx(0.7)
    assert (nodes.scale, nodes.weight_coef, nodes.offset) == pytest.approx((1.1, 0.05, 0.01), rel=1e-6, abs=1e-9)
    assert all(nodes.predict(r, w) == pytest.approx(m, rel=1e-9) for r, w, m in points)
    assert nodes.predict(0.2, 0.3) == pytest.approx(1.1 * 0.2 + 0.01)  # below the knee: no weight term
    floor = (0.03, 0.05, 0.05)  # measured above the scripted line: the pin moves the fit, the knee stays
    assert nodes.pin(dense[:3], floor) and nodes.weight_knee == pytest.approx(0.7)
    assert nodes.predict(*floor[:2]) == pytest.approx(floor[2]) and nodes.predict(*dense[:2]) == pytest.approx(dense[2])


def test_a_search_calibrated_on_timings_with_a_knee_in_the_weights_finds_it_and_predicts_a_held_out_policy():
    """The search's calibration fits the weight term's knee (session 14: on MobileNetV2 the weights cost time only
    beyond ~0.75 MiB): timings scripted with a knee halfway up the calibration sizes give that knee back exactly and
    the held-out policy its scripted time; the plane without a knee could not (it misses that policy)."""
    first, _ = evaluator(5)
    calibrate_table(first)
    top = max(w for _, w, _ in first.nodes.triples)
    knee = top * 20 / 40  # one of the 41 knees the fit tries

    def kneed(oracle):
        return lambda pairs: [A * oracle.raw_model(m, x) + B * max(0.0, weight_mb(m) - knee) + C for m, x in pairs]

    net, data = trained_net(), digits()
    oracle = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=kneed(oracle))
    ev = Evaluator(net, data, small_space(net), table, latency_model="nodes", nodes=fake_nodes(table),
                   calibration_policies=5)  # fmt: skip
    calibrate_table(ev)
    assert ev.nodes.weight_knee == pytest.approx(knee, rel=1e-9)
    assert (ev.nodes.scale, ev.nodes.weight_coef, ev.nodes.offset) == pytest.approx((A, B, C), rel=1e-6, abs=1e-9)
    policy = ev.space.policy({"keep:0": 4, "keep:3": 8, "int8:3": True})
    model, _ = ev.model_and_keys(policy, "none")
    expected = A * oracle.raw_model(model, digits().example_input) + B * max(0.0, weight_mb(model) - knee) + C
    assert ev.evaluate(policy, recovery="none").latency_ms == pytest.approx(expected, rel=1e-6)
