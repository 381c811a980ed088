"""Searches refused before anything is timed (issue 14 audit, session 21): ``grid`` on a space too large to list, a
space with nothing to choose, a study resumed under another budget, and a missing Optuna. Each uses a latency table
whose timer fails the test if called, so "before any timing" is checked, not assumed."""

import sys

import pytest
from torch import nn

from deepslim.errors import ConfigError
from deepslim.search import _study, search
from deepslim.search.latency import LatencyTable
from deepslim.search.space import GroupChoice, SearchSpace
from tests.search._tiny import FAST, digits, fake_table, small_space, trained_net

pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def untimed_table() -> LatencyTable:
    def timer(keys):
        raise AssertionError(f"timed {len(keys)} layers before the refusal")

    return LatencyTable(timer=timer)


def test_grid_on_a_space_larger_than_its_cap_is_refused_before_any_timing(tmp_path):
    counts = tuple(range(1, 17))
    space = SearchSpace(groups=tuple(GroupChoice(g, 16, counts) for g in "abcde"), int8_layers=("x",))
    assert space.size == 2 * 16**5 > _study.GRID_MAX_POLICIES
    with pytest.raises(ConfigError, match=r"strategy 'grid' lists every policy of the space, and this one holds "
                                          r"2,097,152 \(grid's cap: 10,000\): use a sampled strategy"):  # fmt: skip
        search(trained_net(), digits(), space, budget="latency=0.6x", trials=3, strategy="grid", out_dir=tmp_path,
               latency_table=untimed_table(), **FAST)  # fmt: skip
    assert not any(tmp_path.iterdir())  # no study either


def test_the_grid_cap_counts_the_tiny_space_it_refuses(tmp_path, monkeypatch):
    """The cap is checked against the space searched (the tiny net's 8 policies), not a constant message."""
    monkeypatch.setattr(_study, "GRID_MAX_POLICIES", 7)
    net = trained_net()
    with pytest.raises(ConfigError, match=r"this one holds 8 \(grid's cap: 7\)"):
        search(net, digits(), small_space(net), budget="latency=0.6x", trials=8, strategy="grid", out_dir=tmp_path,
               latency_table=untimed_table(), **FAST)  # fmt: skip


@pytest.mark.parametrize(("net", "kinds", "lacks", "others"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ("prune",),
     r"prune: no channel group with two or more channel counts \(round_to=8\)",
     r"int8, hpo, sparsity \(with a size objective\), kmeans \(with a size objective\), depth"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ("prune", "depth"),
     r"prune: no channel group .*; depth: no residual block that can be dropped", r"int8, hpo, sparsity .*, kmeans .*"),
    (nn.Sequential(nn.Flatten(), nn.ReLU()), ("prune", "int8"),
     r"prune: no channel group .*; int8: no layer that can be quantized", r"hpo, sparsity .*, kmeans .*, depth"),
])  # fmt: skip
def test_a_space_with_nothing_to_choose_is_refused_before_any_timing(tmp_path, net, kinds, lacks, others):
    with pytest.raises(ConfigError, match=r"^nothing to search: the space holds one policy, the model's own; the "
                                          rf"model has {lacks}: add other kinds to the space \({others}\) or search "
                                          r"another model$"):  # fmt: skip
        search(net.eval(), digits(), kinds, budget="latency=0.9x", trials=2, strategy="random", out_dir=tmp_path,
               latency_table=untimed_table(), **FAST)  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_a_recovery_with_one_option_per_choice_is_nothing_to_search(tmp_path):
    space = SearchSpace(groups=(), int8_layers=(), recovery={"lr": [2e-3]})
    with pytest.raises(ConfigError, match=r"hpo: no recovery choice with two or more options"):
        search(trained_net(), digits(), space, budget="latency=0.9x", trials=2, out_dir=tmp_path,
               latency_table=untimed_table(), **FAST)  # fmt: skip


def test_a_study_resumed_under_another_budget_is_refused_naming_both(tmp_path):
    net, data = trained_net(), digits()
    space = small_space(net)
    first = search(net, data, space, ("accuracy", "latency"), "latency=0.8x", trials=2, strategy="random", seed=1,
                   out_dir=tmp_path, latency_table=fake_table(), **FAST)  # fmt: skip
    assert len(first.trials) == 2
    for other in ("latency=1.2x", ("latency=0.8x", "size=1MB"), None):
        with pytest.raises(ConfigError, match=r"study 'deepslim-search' was searched under the budget latency=0\.8x; "
                                              r"this search has (latency=1\.2x|latency=0\.8x, size=1e\+06B|no "
                                              r"budget): resume it with the same budget"):  # fmt: skip
            search(net, data, space, ("accuracy", "latency"), other, trials=3, strategy="random", seed=1,
                   out_dir=tmp_path, latency_table=untimed_table(), **FAST)  # fmt: skip
    again = search(net, data, space, ("accuracy", "latency"), "latency=0.8x", trials=3, strategy="random", seed=1,
                   out_dir=tmp_path, latency_table=fake_table(), **FAST)  # fmt: skip
    assert len(again.trials) == 3 and again.limits == first.limits  # the same budget resumes as before


def test_a_missing_optuna_is_said_before_any_timing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    net = trained_net()
    with pytest.raises(ConfigError, match=r"^searching needs Optuna: pip install 'deepslim\[search\]'$"):
        search(net, digits(), small_space(net), budget="latency=0.9x", trials=2, out_dir=tmp_path,
               latency_table=untimed_table(), **FAST)  # fmt: skip
    assert not any(tmp_path.iterdir())
