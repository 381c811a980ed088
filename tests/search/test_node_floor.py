"""The space's floor in the calibrated latency table (engine.calibration_set, frame.check_feasible, NodeTable.pin,
LatencyTable.pin): the calibration measures the floor and policies near it; a floor the table predicts over the
budget, within its error band, is measured end to end against dense and the measurement decides — a budget the
table wrongly refuses is accepted (the table pinned through the measured floor), a truly infeasible one is still
refused before any trial, naming the measured value. The "runtime" is scripted: a power of the parameter count,
so the node table's sums (anchored to dense) miss the small models by a known amount."""

import numpy as np
import pytest

from deepslim.errors import ConfigError
from deepslim.search import frame
from deepslim.search.engine import FLOOR_LEVELS, calibrate_table, calibration_set, search
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import MIN_BAND, LatencyTable
from deepslim.search.space import SearchSpace
from tests.search._tiny import FAST, digits, fake_ms, fake_nodes, params_ms, small_space, trained_net


def runtime(power: float, calls: list[int] | None = None):
    """End-to-end ms = (parameters / 1000) ** ``power``: above 1 small models run relatively faster than the sums
    say, below 1 slower. ``calls`` records how many models each timing got."""
    def timer(pairs):
        if calls is not None:
            calls.append(len(pairs))
        return [ms**power for ms in params_ms(pairs)]
    return timer


def evaluator(power: float, calls: list[int] | None = None, extra: int = 0) -> Evaluator:
    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=runtime(power, calls))
    return Evaluator(net, digits(), small_space(net), table, latency_model="nodes", nodes=fake_nodes(table),
                     calibration_policies=extra)  # fmt: skip


def floor_of(ev: Evaluator, dense) -> tuple[float, float, object]:
    """(predicted, true) ratio to dense of the floor the feasibility check judges (the least prediction) and it."""
    base = frame.base(dense, "latency")
    pred, policy = min(((ev.build(p, "none")[1], p) for p in frame.floor_policies(ev)), key=lambda t: t[0])
    net, _ = ev.model_and_keys(policy, "none")
    true = runtime(1.0)([(net, None)])[0] / runtime(1.0)([(ev.model, None)])[0]
    return pred / base, true, policy


def test_the_calibration_set_holds_the_floor_and_crowds_float_policies_near_it():
    net = trained_net()
    space = SearchSpace.from_model(net, digits().example_input, keep_ratios=(0.25, 0.5, 0.75, 1.0), round_to=2)
    space = SearchSpace(groups=space.groups, int8_layers=("3",), round_to=2)
    extra = 10
    found = calibration_set(space, extra)
    assert found[0] == space.dense() and space.smallest(False) in found and space.smallest(True) in found
    spread = found[-extra:]
    levels = [(i / (extra - 1)) ** 2 for i in range(extra)]
    near = [p for p, level in zip(spread, levels, strict=True) if level <= FLOOR_LEVELS]
    assert len(near) >= extra // 3
    for p in near:  # within one step of the fewest channels, in float like the floor
        assert not any(p.int8.values())
        assert all(p.keep[g.name] in g.keep[:2] for g in space.groups)


def test_a_calibrated_search_measures_every_policy_the_feasibility_check_may_take_for_the_floor():
    ev = evaluator(1.0, extra=5)
    measured = []
    inner = ev.table.model_timer
    ev.table.model_timer = lambda pairs: measured.extend(params_ms(pairs)) or inner(pairs)
    calibrate_table(ev)
    for p in frame.floor_policies(ev):
        net, _ = ev.model_and_keys(p, "none")
        assert params_ms([(net, None)])[0] in measured


def test_a_budget_the_table_wrongly_refuses_is_accepted_after_measuring_the_floor_and_the_table_is_pinned():
    ev = evaluator(1.3)
    dense = calibrate_table(ev)  # anchored to dense: the small models' sums run high against this runtime
    pred, true, policy = floor_of(ev, dense)
    measured_ratio = true**1.3
    budget = pred / 1.03  # over by 3 %: within the table's band (10 %), and the runtime says the floor fits
    assert measured_ratio < budget < pred <= budget * (1 + MIN_BAND)
    base = frame.base(dense, "latency")
    limits = {"latency": budget * base}
    frame.check_feasible(ev, (), limits, dense)  # no latency budget: nothing to check, nothing measured
    assert ev.nodes.floor is None
    from deepslim.search.budget import Budget

    frame.check_feasible(ev, (Budget("latency", budget, relative=True),), limits, dense)
    assert ev.nodes.floor["measured_ms"] == pytest.approx(measured_ratio * base)
    assert ev.nodes.floor["pinned"] and ev.nodes.floor["predicted_ms"] == pytest.approx(pred * base)
    # pinned: the floor is predicted at its measurement, dense still at the base relative limits were taken from
    assert ev.build(policy, "none")[1] == pytest.approx(measured_ratio * base)
    assert ev.build(ev.space.dense(), "none")[1] == pytest.approx(base)


def test_a_search_at_that_budget_runs_and_judges_the_floor_feasible_at_its_measured_latency(tmp_path):
    ev = evaluator(1.3)
    pred, true, policy = floor_of(ev, calibrate_table(ev))
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=runtime(1.3))
    net = trained_net()
    result = search(net, digits(), small_space(net), ("accuracy", "latency"), f"latency={pred / 1.03:.6f}x",
                    trials=8, strategy="grid", out_dir=tmp_path, latency_table=table, node_table=fake_nodes(table),
                    **FAST)  # fmt: skip
    check = result.latency_table["floor_check"]
    assert check["pinned"] and check["measured_ms"] < check["limit_ms"] < check["predicted_ms"]
    floor = [c for c in result.trials if c.policy.params() == policy.params()]
    assert floor and floor[0].feasible
    assert floor[0].latency_ms == pytest.approx(check["measured_ms"])


def test_a_truly_infeasible_budget_is_refused_before_any_trial_naming_the_measured_floor(tmp_path):
    ev = evaluator(0.9)  # small models run relatively slower than the sums say
    dense = calibrate_table(ev)
    pred, true, _ = floor_of(ev, dense)
    measured_ratio = true**0.9
    budget = pred / 1.05
    assert budget < pred <= budget * (1 + MIN_BAND) and measured_ratio > budget
    seen = []
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=runtime(0.9))
    net = trained_net()
    with pytest.raises(ConfigError) as refused:
        search(net, digits(), small_space(net), budget=f"latency={budget:.6f}x", trials=3, out_dir=tmp_path,
               latency_table=table, node_table=fake_nodes(table), on_trial=seen.append, **FAST)  # fmt: skip
    text = str(refused.value)
    assert seen == []
    assert f", {measured_ratio:.2f}x of dense, measured end to end against dense, the median of 5 runs; the node " \
           f"table predicted {pred:.2f}x: 8 of 16 channels kept" in text
    assert f"loosen it to at least {measured_ratio:.2f}x" in text


def test_a_floor_predicted_beyond_the_tables_band_is_refused_without_measuring_it():
    calls: list[int] = []
    ev = evaluator(1.3, calls)
    dense = calibrate_table(ev)
    pred, _, _ = floor_of(ev, dense)
    before = len(calls)
    budget = pred / (1 + ev.nodes.error_band) / 1.01
    from deepslim.search.budget import Budget

    with pytest.raises(ConfigError, match="as the node table predicts it"):
        frame.check_feasible(ev, (Budget("latency", budget, relative=True),),
                             {"latency": budget * frame.base(dense, "latency")}, dense)  # fmt: skip
    assert len(calls) == before and ev.nodes.floor is None


def test_the_default_calibrations_band_covers_its_measured_floor_so_an_over_predicted_floor_is_measured():
    ev = evaluator(1.3)  # calibration_policies=0: 7 points at most, the node table anchored to dense
    dense = calibrate_table(ev)
    pred, true, policy = floor_of(ev, dense)
    measured_ratio = true**1.3
    assert pred / measured_ratio - 1 > MIN_BAND  # over-predicted by more than the old flat band
    assert ev.nodes.error_band >= pred / measured_ratio - 1 - 1e-9 and len(ev.nodes.points) > 1
    budget = pred / 1.2  # the floor measures within it; the prediction alone says 20 % over
    assert measured_ratio < budget
    from deepslim.search.budget import Budget

    base = frame.base(dense, "latency")
    frame.check_feasible(ev, (Budget("latency", budget, relative=True),), {"latency": budget * base}, dense)
    assert ev.nodes.floor["pinned"] and ev.nodes.floor["measured_ms"] == pytest.approx(measured_ratio * base)


A, B, C = 1.3, 40.0, -0.02  # a scripted plane: ms = A × sum + B × MiB + C


def noisy_points(n: int, noise: float = 0.05) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(3)
    r, w = rng.uniform(0.05, 0.3, n), rng.uniform(0.001, 0.01, n)
    return [(float(a), float(b), (A * a + B * b + C) * (1 + noise * e))
            for a, b, e in zip(r, w, rng.standard_normal(n), strict=True)]  # fmt: skip


def test_pinning_a_weight_fit_passes_through_dense_and_the_floor_and_fits_the_rest_by_constrained_least_squares():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    points = noisy_points(14)
    dense, floor = (0.4, 0.012, 1.0), (0.05, 0.001, 0.04)  # the floor measured well under the plane
    assert nodes.calibrate_weights(points, through=dense)
    assert nodes.predict(0.05, 0.001) > 0.05
    assert nodes.pin(dense, floor)
    assert nodes.predict(0.4, 0.012) == pytest.approx(1.0, rel=1e-9)
    assert nodes.predict(0.05, 0.001) == pytest.approx(0.04, rel=1e-9)
    # the oracle: through both points one coefficient is free (along the plane's remaining direction); scan it
    def sse(scale: float) -> float:
        per_mib = (0.96 - scale * 0.35) / 0.011  # through both points, the scale fixes the MiB coefficient
        offset = 1.0 - scale * 0.4 - per_mib * 0.012
        return sum((scale * r + per_mib * w + offset - m) ** 2 for r, w, m in points)
    grid = np.linspace(nodes.scale - 0.05, nodes.scale + 0.05, 201)
    assert min(grid, key=sse) == pytest.approx(nodes.scale, abs=1e-3)


def test_pinning_an_anchored_table_makes_it_the_line_through_both_points_and_a_falling_line_is_refused():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    nodes.anchor(2.0, 3.0)
    assert nodes.pin((2.0, 0.0, 3.0), (0.5, 0.0, 0.6))
    assert nodes.predict(2.0) == pytest.approx(3.0) and nodes.predict(0.5) == pytest.approx(0.6)
    assert nodes.weight_coef == 0.0
    before = (nodes.scale, nodes.offset)
    assert not nodes.pin((2.0, 0.0, 3.0), (0.5, 0.0, 3.5))  # faster with more nodes: no line to pin
    assert (nodes.scale, nodes.offset) == before


def test_pinning_the_layer_table_makes_it_the_line_through_both_points():
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])
    assert table.pin((2.0, 3.0), (0.5, 0.6))
    assert table.scale * 2.0 + table.offset == pytest.approx(3.0)
    assert table.scale * 0.5 + table.offset == pytest.approx(0.6)
    assert not table.pin((2.0, 3.0), (2.0, 0.6))


def test_the_error_band_is_the_largest_calibration_error_and_never_below_ten_percent():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    exact = [(r, w, A * r + B * w + C) for r, w, _ in noisy_points(12)]
    assert nodes.calibrate_weights(exact) and nodes.error_band == MIN_BAND
    points = noisy_points(14, noise=0.15)
    assert nodes.calibrate_weights(points)
    worst = max(abs(nodes.predict(r, w) / m - 1) for r, w, m in points)
    assert worst > MIN_BAND and nodes.error_band == pytest.approx(worst)


def test_where_the_weight_bytes_follow_the_sums_the_plane_fails_and_the_line_through_dense_is_fitted():
    nodes = fake_nodes(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    rng = np.random.default_rng(5)
    sums = rng.uniform(0.05, 0.3, 12)
    points = [(float(r), float(r) / 30, 1.7 * float(r) + 0.01) for r in sums]  # bytes ∝ sums: float policies only
    dense = (0.35, 0.35 / 30, 1.7 * 0.35 + 0.01)
    assert not nodes.calibrate_weights(points, through=dense)
    assert nodes.calibrate_sum([(r, m) for r, _, m in points], through=(dense[0], dense[2]))
    assert (nodes.scale, nodes.offset, nodes.weight_coef) == pytest.approx((1.7, 0.01, 0.0))
    assert nodes.error_band == MIN_BAND
    assert not nodes.calibrate_sum([(0.1, 2.0), (0.2, 1.0)], through=(0.3, 0.5))  # falling: refused, unchanged
    assert nodes.scale == pytest.approx(1.7)



def test_the_floor_in_words_names_the_dropped_blocks_and_counts_only_the_layers_outside_them():
    from deepslim.compress.prune.depth import inside
    from tests.compress.test_depth import tiny_resnet

    net = tiny_resnet()
    space = SearchSpace.from_model(net, digits().example_input, kinds=("prune", "int8", "depth"),
                                   keep_ratios=(1.0, 0.5), round_to=2)  # fmt: skip
    words = frame._describe(space, space.smallest(True))
    live = [n for n in space.int8_layers if not inside(n, space.blocks)]
    assert 0 < len(live) < len(space.int8_layers)  # some layers are gone with their blocks
    n = len(space.blocks)
    assert words.startswith(f"{n} of {n} residual blocks dropped, ")
    assert f", {len(live)} of {len(live)} layers int8" in words
    width = sum(g.width for g in space.groups if not inside(g.name, space.blocks))
    assert f"{width // 2} of {width} channels kept" in words


def test_a_pin_keeps_the_calibrations_points_and_makes_the_band_the_pinned_tables_error_on_them():
    ev = evaluator(1.3)
    dense = calibrate_table(ev)
    pred, _, _ = floor_of(ev, dense)
    points, band = list(ev.nodes.points), ev.nodes.error_band
    from deepslim.search.budget import Budget

    base = frame.base(dense, "latency")
    frame.check_feasible(ev, (Budget("latency", pred / 1.2, relative=True),), {"latency": pred / 1.2 * base}, dense)
    assert ev.nodes.floor["pinned"] and ev.nodes.points == points and len(points) > 2
    worst = max(abs(ev.nodes.predict(r) / m - 1) for r, m in points)
    assert ev.nodes.error_band == pytest.approx(max(MIN_BAND, worst)) and ev.nodes.error_band < band
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])
    table.calibrate([(1.0, 1.5), (2.0, 3.3), (0.5, 0.6), (1.5, 2.1)])
    before = list(table.points)
    assert table.pin((2.0, 3.3), (0.5, 0.6)) and table.points == before
    assert table.error_band == pytest.approx(max(MIN_BAND, *(abs((table.scale * r + table.offset) / m - 1)
                                                             for r, m in before)))  # fmt: skip
