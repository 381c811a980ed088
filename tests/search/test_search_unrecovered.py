"""Trials over a latency budget judged without the trials' recovery (engine._unrecovered_over_budget): a policy's
latency comes from its graph alone, so the proxy's fine-tune steps cannot bring it within the budget, and TPE (like
NSGA-II, random and grid) never reads the accuracy of a trial over budget. Such trials are recorded with
``recovery="none"`` and the ``unrecovered`` user attribute and counted in ``cost``; trials within budget get the
proxy as before; greedy, which does read the accuracy of a step over budget, recovers every trial."""

from unittest import mock

import pytest

from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _search(tmp_path_factory, strategy: str, trials: int):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    out = tmp_path_factory.mktemp(strategy)
    proxied: list[int] = []
    original = Evaluator._proxy

    def counted(self, net):
        proxied.append(1)
        return original(self, net)

    with mock.patch.object(Evaluator, "_proxy", counted):
        result = search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=trials, strategy=strategy,
                        out_dir=out, latency_table=table, latency_model="measured", proxy_steps=2,
                        finetune_epochs=0, top_k=1, uniform_ratios=(1.0, 0.5))  # fmt: skip
    return result, out, len(proxied)


@pytest.fixture(scope="module")
def tpe(tmp_path_factory):
    return _search(tmp_path_factory, "tpe", 10)


def _study(out):
    import optuna

    from deepslim.search import storage as st

    return optuna.load_study(study_name="deepslim-search", storage=st.open_storage(None, out_dir=out))


def test_tpe_trials_over_the_latency_budget_are_judged_without_the_proxy_and_counted(tpe):
    result, out, proxied = tpe
    judged = [c for c in result.trials if "repeat_of" not in c.measurement.extra]
    over = [c for c in judged if not c.feasible]
    within = [c for c in judged if c.feasible]
    assert over and within  # the budget binds
    assert all(c.recovery == "none" for c in over)
    assert all(c.recovery == "steps" for c in within)
    attrs = {t.number: t.user_attrs for t in _study(out).get_trials()}
    assert all("unrecovered" in attrs[c.trial] for c in over)
    assert not any("unrecovered" in attrs[c.trial] for c in within)
    assert result.cost["trials_unrecovered"] == len(over)
    assert proxied >= len(within)  # the proxy ran for each trial within budget (and for the uniform family)
    assert all(c.latency_ms > result.limits["latency"] for c in over)


def test_greedy_reads_the_accuracy_of_steps_over_budget_so_every_trial_is_recovered(tmp_path_factory):
    result, _, _ = _search(tmp_path_factory, "greedy", 4)
    judged = [c for c in result.trials if "repeat_of" not in c.measurement.extra]
    assert any(not c.feasible for c in judged)  # greedy starts over budget, from dense
    assert all(c.recovery == "steps" for c in judged)
    assert result.cost["trials_unrecovered"] == 0
