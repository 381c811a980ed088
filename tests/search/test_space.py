"""The search space as data, budgets, and the per-layer latency table (fake and real timers)."""

import json

import pytest
import torch
from torch import nn

from deepslim.errors import ConfigError
from deepslim.search import Budget, LatencyTable, Policy, SearchSpace, kendall_tau
from deepslim.search.latency import LayerKey, layer_keys
from deepslim.search.space import prune_policy
from tests.search._tiny import fake_ms, fake_table, tiny_net

X = torch.randn(1, 1, 8, 8)


def test_space_is_built_from_the_dependency_graph_on_the_round_to_grid_and_round_trips_through_json():
    space = SearchSpace.from_model(tiny_net(), X, keep_ratios=(1.0, 0.5, 0.3), round_to=2)
    assert [(g.name, g.width, g.keep) for g in space.groups] == [("0", 8, (2, 4, 8)), ("3", 8, (2, 4, 8))]
    assert space.int8_layers == ("0", "3", "8")
    assert space.size == 3 * 3 * 2**3
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    coarse = SearchSpace.from_model(tiny_net(), X, keep_ratios=(1.0, 0.5, 0.3), round_to=4, kinds=("prune",))
    assert [g.keep for g in coarse.groups] == [(4, 8), (4, 8)] and coarse.int8_layers == ()


def test_a_policy_prunes_exactly_the_chosen_channels_and_round_trips_as_parameters():
    space = SearchSpace.from_model(tiny_net(), X, keep_ratios=(1.0, 0.5, 0.25), round_to=2)
    policy = Policy(keep={"0": 4, "3": 2}, int8={"0": True, "3": False, "8": True})
    assert space.policy(policy.params()) == policy
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    net = prune_policy(tiny_net(), space, policy, example_input=X)
    assert (net[0].out_channels, net[3].in_channels, net[3].out_channels, net[8].in_features) == (4, 4, 2, 8)
    prune, quant = space.configs(policy)
    assert dict(quant.overrides) == {"3": None}
    with pytest.raises(ConfigError, match="keep:0=3 is not in the search space"):
        space.policy({**policy.params(), "keep:0": 3})


def test_unknown_space_kinds_are_listed():
    with pytest.raises(ConfigError, match="'lowrank'; choose from prune, int8, hpo"):
        SearchSpace.from_model(tiny_net(), X, kinds=("prune", "lowrank"))


@pytest.mark.parametrize(("text", "expected"), [
    ("latency=0.5x", Budget("latency", 0.5, relative=True)),
    ("latency=3ms", Budget("latency", 3.0)),
    ("latency=250us", Budget("latency", 0.25)),
    ("size=200KB", Budget("size", 200e3)),
    ("size=1.5MiB", Budget("size", 1.5 * 1024**2)),
    ("energy=40uJ", Budget("energy", 40.0)),
    ("energy=2mJ", Budget("energy", 2000.0)),
    ("energy=12", Budget("energy", 12.0)),
    ("energy=0.3x", Budget("energy", 0.3, relative=True)),
])  # fmt: skip
def test_budgets_are_read_absolute_or_relative(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("speed=0.5x", "unknown budget 'speed'; choose from latency, size, energy"),
    ("energy=3ms", "unknown unit 'ms' for energy; use x"),
    ("latency=fast", "cannot read the budget value"),
    ("size=3ms", "unknown unit 'ms' for size"),
    ("latency", "a budget is METRIC=VALUE"),
])  # fmt: skip
def test_bad_budgets_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        Budget.parse(text)


def test_kendall_tau_golden_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_layer_keys_see_the_shapes_the_runtime_runs_and_the_table_sums_them():
    net = tiny_net().eval()
    keys = layer_keys(net, X, {"3": True})
    assert keys["0"] == LayerKey("conv2d", (1, 1, 8, 8), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, False)
    assert keys["3"].int8 and keys["3"].in_shape == (1, 8, 8, 8)
    assert keys["8"] == LayerKey("linear", (1, 32), 10, int8=False)
    assert [k.macs for k in keys.values()] == [8 * 64 * 9, 8 * 8 * 64 * 9, 320]
    table = fake_table()
    expected = fake_ms(keys["0"]) + fake_ms(keys["3"]) + fake_ms(keys["8"])
    assert table.predict(net, X, {"3": True}) == pytest.approx(expected)
    table.calibrate([(1.0, 3.0), (2.0, 5.0)])  # measured = 2 x raw + 1
    assert (table.scale, table.offset) == (pytest.approx(2.0), pytest.approx(1.0))
    assert table.predict(net, X, {"3": True}) == pytest.approx(2 * expected + 1)
    # two int8 layers in a row: the uint8 activation between them is converted neither way
    chain = layer_keys(net, X, {"0": True, "3": True})
    q = {k: fake_ms(LayerKey("qdq", k, 0)) for k in ((1, 1, 8, 8), (1, 8, 8, 8))}
    inner = {n: max(0.2 * fake_ms(k), fake_ms(k) - 0.5 * q[k.in_shape] - 0.5 * q[k.out_shape])
             for n, k in chain.items() if k.int8}  # fmt: skip
    total = inner["0"] + inner["3"] + 0.5 * q[(1, 1, 8, 8)] + 0.5 * q[(1, 8, 8, 8)] + fake_ms(chain["8"])
    assert fake_table().raw(net, X, {"0": True, "3": True}) == pytest.approx(total)
    assert total < fake_ms(chain["0"]) + fake_ms(chain["3"]) + fake_ms(chain["8"])


def test_calibration_recovers_the_cost_of_precision_changes_from_end_to_end_points():
    table = fake_table()
    # measured = 1.5 x layers + 4.5 x conversions + 0.2 (conversions cost 3x what the table's pairs say)
    parts = [(1.0, 0.0), (2.0, 0.1), (1.5, 0.3), (0.8, 0.2), (1.2, 0.05)]
    table.calibrate_parts([(p, 1.5 * p[0] + 4.5 * p[1] + 0.2) for p in parts] + [((1.0, 1.0), float("nan"))])
    assert (table.scale, table.change_weight, table.offset) == (pytest.approx(1.5), pytest.approx(3.0),
                                                                pytest.approx(0.2))  # fmt: skip
    assert len(table.points) == 5  # the unmeasured model is left out
    too_few = fake_table()
    too_few.calibrate_parts([((1.0, 0.0), 2.0), ((2.0, 0.1), 3.5)])  # a line through the sums instead
    assert too_few.change_weight == 1.0 and too_few.scale * 1.0 + too_few.offset == pytest.approx(2.0)


def test_the_onnx_runtime_table_times_each_layer_once_and_caches_it_per_machine(tmp_path):
    pytest.importorskip("onnxruntime")
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    table = LatencyTable(cache_dir=tmp_path, window_s=0.0)  # timed back to back: the test takes no 3 s window
    ms = table.raw(net, X, {"2": True})
    assert ms > 0 and table.measured == 3  # two layers, and the int8 one's conversion pair (input and output alike)
    files = list(tmp_path.glob("onnxruntime-*-t1-*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())["entries"]) == 3
    again = LatencyTable(cache_dir=tmp_path, window_s=0.0)
    assert again.raw(net, X, {"2": True}) == ms and again.measured == 0
    with pytest.raises(ConfigError, match="choose one of onnxruntime"):
        LatencyTable(runtime="tvm")


def test_policies_sampled_at_spread_levels_span_the_space_from_the_fewest_channels_to_all():
    import random

    net = tiny_net()
    space = SearchSpace.from_model(net, torch.randn(1, 1, 8, 8), keep_ratios=(0.25, 0.5, 0.75, 1.0), round_to=1)
    assert [g.keep for g in space.groups] == [(2, 4, 6, 8), (2, 4, 6, 8)]
    rng = random.Random(0)
    low = [space.sample_at(rng, 0.0) for _ in range(20)]
    high = [space.sample_at(rng, 1.0) for _ in range(20)]
    assert all(k in (2, 4) for p in low for k in p.keep.values())  # within one step of the fewest
    assert all(k in (6, 8) for p in high for k in p.keep.values())  # within one step of all
    assert {k for p in low for k in p.keep.values()} == {2, 4} and {k for p in high for k in p.keep.values()} == {6, 8}
    assert all(space.policy(p.params()) == p for p in low + high)  # every draw is a policy of the space


def test_the_table_check_spreads_its_policies_over_the_spaces_latencies_when_asked():
    from deepslim.search import check_table
    from tests.search._tiny import digits, params_ms

    net = tiny_net()
    data = digits()
    space = SearchSpace.from_model(net, data.example_input, keep_ratios=(0.25, 0.5, 0.75, 1.0), round_to=1)
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    check = check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=5,
                        spread=True)  # fmt: skip
    kept = [sum(r["policy"]["keep"].values()) for r in check.rows]
    assert kept[0] <= 8 and kept[-1] >= 12  # the first near the fewest channels (2+2), the last near all (8+8)
    assert len(check.rows) == 5 and check.rows[-1]["macs"] > 2 * check.rows[0]["macs"]
