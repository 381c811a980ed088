"""The ``tpe-multivariate`` strategy: Optuna's TPE modelling the choices jointly (``multivariate=True, group=True``)
for a focused search, where independent TPE spent about half its trials over the latency budget (it learns each
choice apart, not which combinations fit). Like ``tpe`` it never reads the accuracy of a trial over budget, so such
trials are judged without recovery or evaluation."""

import pytest

from deepslim.search.latency import LatencyTable
from deepslim.search.strategies import IGNORE_VALUES_OVER_BUDGET, STRATEGIES, make_sampler
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def test_the_multivariate_strategy_is_tpe_with_joint_and_grouped_choices_and_plain_tpe_is_not():
    net = trained()
    joint = make_sampler("tpe-multivariate", 0, _space(net), 40)
    plain = make_sampler("tpe", 0, _space(net), 40)
    assert isinstance(joint, optuna.samplers.TPESampler) and isinstance(plain, optuna.samplers.TPESampler)
    assert (joint._multivariate, joint._group) == (True, True)
    assert not plain._multivariate and not plain._group
    assert "tpe-multivariate" in STRATEGIES and "tpe-multivariate" in IGNORE_VALUES_OVER_BUDGET


def test_a_focused_multivariate_search_judges_its_trials_over_budget_without_recovery(tmp_path):
    from deepslim.search import search

    net = trained()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    result = search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=12,
                    strategy="tpe-multivariate", out_dir=tmp_path, latency_table=table, latency_model="measured",
                    proxy_steps=2, finetune_epochs=0, top_k=1, uniform_ratios=(1.0, 0.5))  # fmt: skip
    judged = [c for c in result.trials if "repeat_of" not in c.measurement.extra]
    over = [c for c in judged if not c.feasible]
    assert over and all(c.recovery == "none" and c.accuracy is None for c in over)
    assert all(c.recovery == "steps" and c.accuracy is not None for c in judged if c.feasible)
    assert result.study["strategy"] == "tpe-multivariate" and result.best is not None
    assert result.cost["trials_unrecovered"] == len(over)
