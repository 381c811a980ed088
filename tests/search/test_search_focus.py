"""A focused search: accuracy the one objective, latency a budget (``objectives=("accuracy",)``, ``latency=0.45x``).
TPE then ranks trials by accuracy alone and reads the budget as each trial's constraint (Optuna's
``Trial.set_constraint``: infeasible trials go to the sampler's "bad" side), an infeasible trial is never a finalist,
the finals recover ``top_k`` searched policies (the front of one objective is a single point; the finals' pool is
the best ``2 × top_k`` feasible models) and the uniform baseline is re-measured in the same interleaved runs."""

from dataclasses import replace

import pytest

from deepslim.analysis.measurement import Measurement
from deepslim.search.engine import _front, _reported_front
from deepslim.search.evaluate import Candidate
from deepslim.search.latency import LatencyTable
from deepslim.search.space import SearchSpace
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _cand(space: SearchSpace, trial: int, accuracy: float, ms: float, feasible: bool, **params: bool) -> Candidate:
    policy = space.policy({**space.dense().params(), **params})
    m = Measurement(params=1, nonzero_params=1, macs=1, weight_bytes=1, accuracy=accuracy)
    return Candidate(policy, m, ms, feasible=feasible, trial=trial)


def test_with_one_objective_the_finals_pool_is_the_best_feasible_models_each_once_infeasible_never():
    space = SearchSpace(groups=(), int8_layers=("a", "x.b", "c"), blocks=("x",))
    done = [_cand(space, 0, 0.99, 2.0, False),  # the most accurate, over budget
            _cand(space, 1, 0.90, 1.0, True, **{"int8:a": True}),
            _cand(space, 2, 0.95, 1.0, True, **{"drop:x": True}),
            _cand(space, 3, 0.95, 0.9, True, **{"drop:x": True, "int8:x.b": True}),  # trial 2's model
            _cand(space, 4, 0.93, 0.8, True, **{"int8:x.b": True}),
            _cand(space, 5, 0.93, 0.7, True, **{"int8:c": True}),  # ties trial 4: the faster first
            _cand(space, 6, 0.80, 0.5, True, **{"int8:a": True, "int8:x.b": True})]  # fmt: skip
    assert [c.trial for c in _front(done, ("accuracy",), space, top_k=2)] == [3, 5, 4, 1]
    assert [c.trial for c in _front(done, ("accuracy",), space, top_k=1)] == [3, 5]
    # two objectives: the Pareto front (every point on it, each model once), whatever top_k
    two = _front(done, ("accuracy", "latency"), space, top_k=1)
    assert [c.trial for c in two] == [3, 5, 6]


def _monotone(front) -> bool:
    """Latency up => accuracy up: what a line drawn through the points as a front claims."""
    by_latency = sorted(front, key=lambda c: c.latency_ms)
    return all(a.accuracy < b.accuracy for a, b in zip(by_latency, by_latency[1:], strict=False))


def test_with_one_objective_pareto_is_the_accuracy_latency_front_and_the_finals_pool_is_kept_apart():
    """The pool [3, 5, 4, 1] is no front (trial 3 at 0.95 is slower than trial 5 at 0.93, trial 1 at 0.90 slower
    still): ``pareto`` is the feasible trials' accuracy-latency front, the pool's entries as the finals returned them
    (re-measured), and the pool is ``finals_pool`` (review R14 LOW 5)."""
    space = SearchSpace(groups=(), int8_layers=("a", "x.b", "c"), blocks=("x",))
    done = [_cand(space, 0, 0.99, 2.0, False), _cand(space, 1, 0.90, 1.0, True, **{"int8:a": True}),
            _cand(space, 3, 0.95, 0.9, True, **{"drop:x": True, "int8:x.b": True}),
            _cand(space, 4, 0.93, 0.8, True, **{"int8:x.b": True}),
            _cand(space, 5, 0.93, 0.7, True, **{"int8:c": True}),
            _cand(space, 6, 0.80, 0.5, True, **{"int8:a": True, "int8:x.b": True})]  # fmt: skip
    pool = _front(done, ("accuracy",), space, top_k=2)
    assert [c.trial for c in pool] == [3, 5, 4, 1] and not _monotone(pool)
    remeasured = tuple(replace(c, remeasured={"verdict": "within"}) for c in pool)
    pareto, finals_pool = _reported_front(done, ("accuracy",), space, remeasured)
    assert [c.trial for c in pareto] == [3, 5, 6] and _monotone(pareto)
    assert [c.remeasured for c in pareto] == [{"verdict": "within"}, {"verdict": "within"}, None]
    assert finals_pool == remeasured
    two, none = _reported_front(done, ("accuracy", "latency"), space, remeasured)  # two objectives: the pool is it
    assert two == remeasured and none == ()


@pytest.fixture(scope="module")
def focused(tmp_path_factory):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained()
    # trials judged by the end-to-end timer the finals re-measure with (deterministic): one frame throughout
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    out = tmp_path_factory.mktemp("focused")
    result = search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=12, strategy="tpe",
                    out_dir=out, latency_table=table, latency_model="measured", finetune_epochs=0, top_k=2,
                    uniform_ratios=(1.0, 0.5))  # fmt: skip
    return result, out


def test_a_focused_tpe_study_has_one_direction_and_every_trial_carries_its_budget_as_a_constraint(focused):
    import optuna

    from deepslim.search import storage as st

    result, out = focused
    study = optuna.load_study(study_name="deepslim-search", storage=st.open_storage(None, out_dir=out))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    limit = result.limits["latency"]
    by_number = {c.trial: c for c in result.trials}
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 12
    for t in trials:  # what TPE's split reads (FrozenTrial.constraints): > 0 over budget
        assert t.constraints == pytest.approx({"latency": by_number[t.number].latency_ms - limit})
        assert t.values == [by_number[t.number].accuracy]
    over = [c for c in result.trials if not c.feasible]
    assert over and all(c.latency_ms > limit for c in over)  # the budget binds: some trials are infeasible


def test_a_focused_search_recovers_top_k_searched_finalists_and_the_uniform_one_in_the_same_runs(focused):
    result, _ = focused
    feasible = sorted((c for c in result.trials if c.feasible), key=lambda c: (-(c.accuracy or 0.0), c.latency_ms))
    pool: list[int] = []
    seen: set[str] = set()
    for c in feasible:
        key = str(sorted(result.space.canonical(c.policy).params().items()))
        if key not in seen:
            seen.add(key)
            pool.append(c.trial)
    assert [c.trial for c in result.finals_pool] == pool[:4]  # 2 x top_k, best first, each model once
    assert result.pareto and _monotone(result.pareto) and all(c.feasible for c in result.pareto)
    assert pool[0] in {c.trial for c in result.pareto}  # the most accurate feasible model is on the front
    doc = result.to_dict()
    assert [c["trial"] for c in doc["finals_pool"]] == pool[:4]
    assert [c["trial"] for c in doc["pareto"]] == [c.trial for c in result.pareto]
    searched = [c for c in result.finalists if c.trial is not None]
    assert [c.trial for c in searched] == pool[:2]  # top_k of them (none re-measured over budget here)
    uniform = [c for c in result.finalists if c.trial is None]
    assert len(uniform) == 1 and result.uniform is not None
    # searched and uniform finalists timed in one set of interleaved runs, against one dense time
    assert {c.remeasured["dense_measured_ms"] for c in result.finalists} == {result.uniform.remeasured[
        "dense_measured_ms"]}  # fmt: skip
    assert result.best is not None and result.best.feasible
    assert result.best.accuracy == max(c.accuracy for c in result.finalists if c.feasible)


class _StubEvaluator:
    """What final_round asks of an evaluator, without models: no end-to-end timer (the predictions decide), and
    each recovery returns the candidate with the accuracy scripted for its trial."""

    table = type("Table", (), {"end_to_end": False, "runtime": "stub"})()

    def __init__(self, accuracy, space):
        self.accuracy, self.recovered, self.space = accuracy, [], space

    def model_and_keys(self, policy, recovery):
        return None, []

    def judge(self, policy, *, recovery, trial, both, full):
        self.recovered.append(trial)
        m = Measurement(params=1, nonzero_params=1, macs=1, weight_bytes=1, accuracy=self.accuracy[trial])
        return Candidate(policy, m, 1.0, trial=trial, recovery=recovery), None


def test_when_the_only_searched_trial_within_budget_is_the_uniform_warm_start_no_note_says_none_met_it():
    from deepslim.search.finals import best_or_uniform, final_round

    space = SearchSpace(groups=(), int8_layers=("a", "x.b", "c"), blocks=("x",))
    uniform = _cand(space, None, 0.90, 1.0, True, **{"int8:a": True, "int8:x.b": True, "int8:c": True})
    searched = [replace(uniform, trial=0)]  # a new study's warm start: the uniform policy, within budget
    ev = _StubEvaluator({None: 0.90, 0: 0.90}, space)
    finals = final_round(ev, searched, [uniform], ("accuracy",), (), {}, top_k=2, front=searched)
    best, notes = best_or_uniform(finals, ("accuracy",))
    assert best is not None and best.policy == uniform.policy
    assert ev.recovered == [None]  # trial 0 builds the uniform finalist's model: recovered once, as that
    assert not any("no searched policy met the budget" in n for n in notes)  # trial 0 did meet it (review R15 L4)
    assert "the best searched policy within budget is the uniform policy (the search's trial 0 builds it too): it " \
           "is best" in notes


def test_a_searched_trial_of_the_uniform_policy_is_recovered_once_and_its_finalist_slot_goes_to_the_next():
    # session 15, run 1: trial 0 (the uniform warm start) took one of three searched finalist slots, recovered twice
    from deepslim.search.finals import best_or_uniform, final_round

    space = SearchSpace(groups=(), int8_layers=("a", "x.b", "c"), blocks=("x",))
    uniform = _cand(space, None, 0.90, 1.0, True, **{"int8:a": True, "int8:x.b": True, "int8:c": True})
    searched = [replace(uniform, trial=0, measurement=replace(uniform.measurement, accuracy=0.93)),  # the warm start
                _cand(space, 1, 0.92, 1.0, True, **{"int8:a": True}),
                _cand(space, 2, 0.91, 1.0, True, **{"drop:x": True}),
                _cand(space, 3, 0.89, 1.0, True, **{"int8:c": True})]  # fmt: skip
    ev = _StubEvaluator({None: 0.90, 0: 0.90, 1: 0.925, 2: 0.905, 3: 0.93}, space)
    finals = final_round(ev, searched, [uniform], ("accuracy",), (), {}, top_k=2, front=searched)
    assert ev.recovered == [1, 2, None]  # not [0, 1, None]: the uniform model once, two searched ones
    assert finals.uniform_trials == (0,)
    best, _ = best_or_uniform(finals, ("accuracy",))
    assert best.trial == 1 and [c.trial for c in finals.finalists] == [1, 2, None]
