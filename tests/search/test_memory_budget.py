"""Peak activation memory as a search objective and budget (issue 14's space gap, session 9): a budget on the most
activation bytes alive at once, checked against the profiler on the rebuilt model, refused when infeasible."""

import pytest

from deepslim.analysis import profile
from deepslim.errors import ConfigError
from deepslim.search.budget import Budget
from deepslim.search.latency import LatencyTable
from deepslim.search.space import prune_policy, quantize_policy
from tests.search._tiny import FAST, digits, fake_ms, small_space, trained_net


def test_a_memory_budget_parses_bytes_and_ratios_like_size():
    assert Budget.parse("memory=64KB") == Budget("memory", 64e3)
    assert Budget.parse("memory=2KiB").value == 2048 and Budget.parse("memory=0.5x").relative
    with pytest.raises(ConfigError, match="unknown unit 'ms' for memory"):
        Budget.parse("memory=3ms")


def _search(tmp_path, budget):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])
    return net, search(net, digits(), small_space(net), ("accuracy", "memory"), budget, trials=4, strategy="grid",
                       out_dir=tmp_path, latency_table=table, **FAST)  # fmt: skip


def test_a_search_under_a_memory_budget_returns_a_policy_whose_profiled_peak_meets_it(tmp_path):
    net, result = _search(tmp_path, "memory=0.75x")
    x = digits().example_input
    dense_peak = profile(net, x).peak_activation_bytes
    assert result.limits["memory"] == pytest.approx(0.75 * dense_peak)
    best = result.best
    assert best is not None and best.value("memory") <= result.limits["memory"]
    rebuilt = prune_policy(net, result.space, best.policy, example_input=x)
    quantize_policy(rebuilt, result.space, best.policy, calib_data=digits().calib)  # int8 activations: 1 byte each
    assert best.measurement.peak_activation_bytes == profile(rebuilt, x).peak_activation_bytes
    assert all(c.measurement.peak_activation_bytes is not None for c in result.trials)  # every trial profiled
    assert best.to_dict()["peak_activation_bytes"] == best.measurement.peak_activation_bytes


def test_a_memory_budget_below_the_smallest_policy_is_refused_naming_the_least_it_allows(tmp_path):
    with pytest.raises(ConfigError, match=r"the memory budget .* bytes is tighter than the smallest policy"):
        _search(tmp_path, "memory=0.01x")
