"""Repeated policies: two policies that differ only in choices inside a dropped block build one model (the configs
leave those choices out), so they share one canonical form and a search judges that model once — a later trial of it
re-uses the first one's judgement and says which trial it repeats; the cost counts evaluated and repeated trials."""

import pytest
import torch

from deepslim.search.evaluate import Evaluator, _shape
from deepslim.search.space import SearchSpace, prune_policy
from tests.search._tiny import FAST, digits, fake_table
from tests.search.test_depth_search import _space, trained


def test_policies_that_differ_only_inside_a_dropped_block_have_one_canonical_form_and_build_one_model():
    net, x = trained(), digits().example_input
    space = _space(net)
    dense = space.dense().params()
    a = space.policy({**dense, "drop:4": True, "keep:4.conv1": 4, "int8:4.conv2": True, "int8:0": True})
    b = space.policy({**dense, "drop:4": True, "int8:0": True})  # a, but block 4's own choices at the dense values
    outside = space.policy({**dense, "drop:4": True, "keep:4.conv1": 4, "int8:0": False})  # differs outside too
    assert a != b and space.canonical(a) == space.canonical(b) == b
    assert space.canonical(outside) != space.canonical(a)
    assert space.canonical(a).keep["4.conv1"] == 8 and space.canonical(a).int8["0"] is True  # kept block untouched
    kept = space.policy({**dense, "keep:4.conv1": 4})  # block 4 not dropped: its choices count
    assert space.canonical(kept) == kept and space.canonical(kept) != space.canonical(space.dense())
    assert _shape(a) == _shape(b) != _shape(outside)  # the latency cache's key agrees
    built_a, built_b = (prune_policy(net, space, p, example_input=x) for p in (a, b))
    assert built_a.state_dict().keys() == built_b.state_dict().keys()
    for k, v in built_a.state_dict().items():
        assert torch.equal(v, built_b.state_dict()[k]), k


def _judged_trials(monkeypatch) -> list[tuple]:
    """(policy, trial number) of every trial the evaluator judges from now on (a repeat is not judged)."""
    calls: list[tuple] = []
    evaluate = Evaluator.evaluate

    def counting(self, policy, **kwargs):
        if kwargs.get("trial") is not None:
            calls.append((policy, kwargs["trial"]))
        return evaluate(self, policy, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    return calls


def _grid_search(out, trials: int, **settings):
    """A grid search of the 4 policies block 4 kept or dropped x its layer 4.conv2 int8 or float (dropped, the int8
    choice says nothing: two of them build one model), fake latencies unless ``settings`` give a table."""
    from deepslim.search import search

    space = SearchSpace(groups=(), int8_layers=("4.conv2",), blocks=("4",))
    return search(trained(), digits(), space, ("accuracy", "latency"), "latency=0.95x", trials=trials,
                  strategy="grid", out_dir=out, **{"latency_table": fake_table(), **FAST, **settings})  # fmt: skip


def test_a_search_judges_a_repeated_canonical_policy_once_and_records_the_repeat(tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    calls = _judged_trials(monkeypatch)
    result = _grid_search(tmp_path, 4)
    space = result.space
    assert len(result.trials) == 4 and len(calls) == 3
    assert result.cost["trials"] == 4 and result.cost["trials_evaluated"] == 3 and result.cost["trials_repeated"] == 1
    gone = [c for c in result.trials if c.policy.drop["4"]]
    first, repeat = sorted(gone, key=lambda c: c.trial or 0)
    assert "repeat_of" not in first.measurement.extra and repeat.measurement.extra["repeat_of"] == first.trial
    assert repeat.policy != first.policy and repeat.accuracy == first.accuracy
    assert repeat.latency_ms == first.latency_ms
    kept = [c for c in result.trials if not c.policy.drop["4"]]
    assert all("repeat_of" not in c.measurement.extra for c in kept)  # differing outside a dropped block: judged
    assert sum(c.policy.drop["4"] for c in result.pareto) <= 1  # one model is one point of the front
    # search.json reports the model each policy builds; a choice sampled inside the dropped block only as sampled
    doc = result.to_dict()
    docs = {d["trial"]: d for d in doc["trials"]}
    assert docs[repeat.trial]["policy"] == docs[first.trial]["policy"] == space.canonical(first.policy).to_dict()
    for c in result.trials:
        inside = c.policy.drop["4"] and c.policy.int8["4.conv2"]  # int8 chosen for a layer that was dropped
        assert docs[c.trial].get("policy_sampled") == (c.policy.to_dict() if inside else None)
    assert sum("policy_sampled" in d for d in doc["trials"]) == 1
    for d in (doc["best"], *doc["pareto"], *doc["finalists"], *doc["trials"]):
        assert not (d["policy"]["drop"]["4"] and d["policy"]["int8"]["4.conv2"])


def test_a_repeat_of_a_checked_trial_is_not_a_second_point_of_the_latency_tables_check(tmp_path):
    """check_every=1: every judged trial is measured end to end; the repeat is not measured, so its record carries
    no measured latency of its own (it says which trial it repeats) and the table's check holds each model once."""
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search.latency import LatencyTable
    from tests.search._tiny import fake_ms

    def model_timer(pairs):  # deterministic end-to-end "measurement": 1 ms per 10k parameters
        return [sum(p.numel() for p in m.parameters()) / 1e4 for m, _ in pairs]

    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=model_timer)
    result = _grid_search(tmp_path, 4, latency_table=table, check_every=1)
    assert result.cost["trials_repeated"] == 1
    (repeat,) = [c for c in result.trials if "repeat_of" in c.measurement.extra]
    first = next(c for c in result.trials if c.trial == repeat.measurement.extra["repeat_of"])
    assert first.measurement.measured_latency_ms is not None  # the first was checked end to end
    assert repeat.measurement.measured_latency_ms is None and repeat.measurement.runtime is None
    assert repeat.latency_ms == first.latency_ms  # both judged by the prediction
    rows = [row["trial"] for row in result.latency_table["rows"] if row["trial"] is not None]
    remeasured = [c.trial for c in result.finalists]  # a finalist's re-measurement is a point of its own
    assert sorted(set(rows)) == sorted(c.trial for c in result.trials if c is not repeat) == [0, 1, 2]
    assert all(rows.count(t) == 1 + remeasured.count(t) for t in (0, 1, 2))  # each measured model once


class _Study:
    """The part of an Optuna study the index reads: completed trials with user attrs."""

    def __init__(self):
        self.trials = []

    def add(self, number, policy, **attrs):
        from types import SimpleNamespace

        from deepslim.analysis.measurement import Measurement
        from deepslim.search.evaluate import Candidate

        m = Measurement(params=1, nonzero_params=1, macs=1, weight_bytes=1, accuracy=number / 10)
        doc = Candidate(policy, m, 1.0, trial=number).to_dict()
        self.trials.append(SimpleNamespace(number=number, user_attrs={"candidate": doc, **attrs}))

    def get_trials(self, deepcopy, states):
        return list(self.trials)


def test_the_index_of_judged_models_canonicalizes_each_trial_once_and_keeps_the_earliest_judged(monkeypatch):
    from deepslim.search.engine import JudgedModels

    calls = []
    canonical = SearchSpace.canonical

    def counting(self, policy):
        calls.append(policy)
        return canonical(self, policy)

    monkeypatch.setattr(SearchSpace, "canonical", counting)
    space = SearchSpace(groups=(), int8_layers=("4.conv2", "0"), blocks=("4",))
    dense = space.dense().params()
    gone = space.policy({**dense, "drop:4": True})
    gone_int8 = space.policy({**dense, "drop:4": True, "int8:4.conv2": True})  # the same model as ``gone``
    study, index = _Study(), JudgedModels(space)
    assert index.first(study, gone) is None
    study.add(0, space.policy({**dense, "int8:0": True}))
    study.add(1, gone_int8, repeat_of=5)  # a repeat itself: never the one repeated
    study.add(3, gone_int8)
    study.add(2, gone)  # completed after trial 3 (a worker): the earlier number still wins
    study.add(5, gone)  # judged by a worker that had not seen trial 2 complete
    for _ in range(5):
        found = index.first(study, gone_int8)
        assert found is not None and found.trial == 2 and found.accuracy == 0.2
    assert len(calls) == 1 + 4 + 5  # each query once, each judged trial once: not every trial again per query
    study.add(6, space.dense())  # completed since the last look: it joins the index
    assert index.first(study, space.dense()).trial == 6
    assert index.first(study, space.policy({**dense, "int8:4.conv2": True})) is None  # block kept: another model


def test_a_resumed_search_finds_a_repeat_of_a_trial_its_earlier_call_judged(tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    calls = _judged_trials(monkeypatch)
    # seed 0's grid order: both block-4-dropped policies last (trials 2 and 3): the first call judges trial 2, the
    # resumed call (a new objective, a new index) meets its twin as trial 3
    first = _grid_search(tmp_path, 3)
    assert first.cost["trials_repeated"] == 0 and [t for _, t in calls] == [0, 1, 2]
    assert [c.policy.drop["4"] for c in sorted(first.trials, key=lambda c: c.trial or 0)] == [False, False, True]
    again = _grid_search(tmp_path, 4)
    assert [t for _, t in calls] == [0, 1, 2] and again.cost["trials"] == 4 and again.cost["trials_repeated"] == 1
    (repeat,) = [c for c in again.trials if "repeat_of" in c.measurement.extra]
    assert repeat.trial == 3 and repeat.measurement.extra["repeat_of"] == 2 and repeat.policy.drop["4"]
