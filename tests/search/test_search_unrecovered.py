"""Trials over a latency budget judged without the trials' recovery (trials._unrecovered_over_budget): a policy's
latency comes from its graph alone, so the proxy's fine-tune steps cannot bring it within the budget, and TPE (like
NSGA-II, random and grid) never reads the accuracy of a trial over budget. Such trials are recorded with
``recovery="none"``, accuracy None (not judged: no evaluation on the validation split) and the ``unrecovered`` user
attribute, and counted in ``cost``; Optuna gets the worst value beside the budget excess; trials within budget get
the proxy as before; greedy, which does read the accuracy of a step over budget, recovers and scores every trial."""

import json
import math
from unittest import mock

import pytest

import deepslim.train
from deepslim.search.evaluate import Candidate, Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _search(tmp_path_factory, strategy: str, trials: int):
    """The tiny focused search; the proxy runs counted, and after each trial the evaluations run so far."""
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    out = tmp_path_factory.mktemp(strategy)
    proxied: list[int] = []
    evaluated: list[int] = []
    at_trial: dict[int, int] = {}  # trial number -> evaluations run when it was reported
    proxy, evaluate = Evaluator._proxy, deepslim.train.evaluate

    def counted(self, net):
        proxied.append(1)
        return proxy(self, net)

    def scored(*args, **kwargs):
        evaluated.append(1)
        return evaluate(*args, **kwargs)

    with mock.patch.object(Evaluator, "_proxy", counted), mock.patch.object(deepslim.train, "evaluate", scored):
        result = search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=trials, strategy=strategy,
                        out_dir=out, latency_table=table, latency_model="measured", proxy_steps=2,
                        finetune_epochs=0, top_k=1, uniform_ratios=(1.0, 0.5),
                        on_trial=lambda c: at_trial.setdefault(c.trial, len(evaluated)))  # fmt: skip
    return result, out, len(proxied), at_trial


@pytest.fixture(scope="module")
def tpe(tmp_path_factory):
    return _search(tmp_path_factory, "tpe", 10)


def _study(out):
    import optuna

    from deepslim.search import storage as st

    return optuna.load_study(study_name="deepslim-search", storage=st.open_storage(None, out_dir=out))


def test_tpe_trials_over_the_latency_budget_are_judged_without_the_proxy_and_counted(tpe):
    result, out, proxied, _ = tpe
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
    result, _, _, _ = _search(tmp_path_factory, "greedy", 4)
    judged = [c for c in result.trials if "repeat_of" not in c.measurement.extra]
    assert any(not c.feasible for c in judged)  # greedy starts over budget, from dense
    assert all(c.recovery == "steps" for c in judged)
    assert all(c.accuracy is not None for c in judged)  # greedy reads the accuracy of every step
    assert result.cost["trials_unrecovered"] == 0


def test_a_trial_over_the_latency_budget_costs_no_evaluation_and_records_its_accuracy_as_not_judged(tpe):
    result, _, _, at_trial = tpe
    by_trial = {c.trial: c for c in result.trials}
    spent = {n: at_trial[n] - at_trial[n - 1] for n in sorted(at_trial) if n - 1 in at_trial}  # this trial's alone
    over = [n for n in spent if by_trial[n].recovery == "none" and "repeat_of" not in by_trial[n].measurement.extra]
    within = [n for n in spent if by_trial[n].feasible and "repeat_of" not in by_trial[n].measurement.extra]
    assert over and within
    assert [spent[n] for n in over] == [0] * len(over)  # no evaluation on the validation split
    assert [spent[n] for n in within] == [1] * len(within)
    for n in over:
        m = by_trial[n].measurement
        assert (m.accuracy, m.metric, m.metric_value) == (None, None, None)
        assert "split" not in m.extra and m.params > 0 and m.macs > 0  # its size and work are still measured
    assert all(0.0 <= by_trial[n].accuracy <= 1.0 for n in within)


def test_optuna_records_the_worst_value_for_a_trial_not_judged_and_ranks_it_below_every_feasible_trial(tpe):
    from optuna.samplers._tpe.sampler import _split_trials
    from optuna.samplers.nsgaii._constraints_evaluation import _constrained_dominates

    result, out, _, _ = tpe
    study = _study(out)
    trials = {t.number: t for t in study.get_trials()}
    over = [trials[c.trial] for c in result.trials if c.accuracy is None]
    feasible = [trials[c.trial] for c in result.trials if c.feasible]
    assert over and all(t.value == -math.inf and t.constraints["latency"] > 0 for t in over)
    worst = min(feasible, key=lambda t: t.value)  # the least accurate trial within budget
    below, above = _split_trials(study, [worst, *over], n_below=1)  # constrained TPE's "good" side
    assert [t.number for t in below] == [worst.number]
    assert all(_constrained_dominates(worst, t, study.directions) for t in over)  # NSGA-II's order
    assert not any(_constrained_dominates(t, worst, study.directions) for t in over)


def test_search_json_and_its_report_carry_a_trial_not_judged_as_null(tpe):
    from deepslim.report.search_html import search_report_html

    result, _, _, _ = tpe
    doc = json.loads(json.dumps(result.to_dict()))
    over = [c for c in doc["trials"] if c["recovery"] == "none"]
    assert over and all(c["accuracy"] is None and c["measurement"]["accuracy"] is None for c in over)
    assert all(Candidate.from_dict(c).accuracy is None for c in over)  # a resumed study reads them back
    assert not any(c["accuracy"] is None for c in doc["pareto"] + doc["finals_pool"])  # never among the chosen
    page = search_report_html(doc)
    assert '"accuracy": null' in page and "NaN" not in page.split("<script")[0]


def test_the_guide_lists_every_strategy_that_leaves_trials_over_budget_unrecovered():
    import re
    from pathlib import Path

    from deepslim.search.strategies import IGNORE_VALUES_OVER_BUDGET

    text = " ".join((Path(__file__).parents[2] / "docs" / "search.md").read_text().split())
    listed = re.search(r"never reads the accuracy of a trial over budget \(([^;]*);", text)
    assert listed is not None
    assert set(re.findall(r"`([\w-]+)`", listed.group(1))) == set(IGNORE_VALUES_OVER_BUDGET)
