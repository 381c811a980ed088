"""Greedy resuming a study whose trials over budget were left unjudged (tpe, tpe-multivariate, nsga2, random and
grid record them with accuracy -inf, review R15 M2): such a trial is no step of the descent, since its -inf would
read as a step that costs no accuracy (the most budget per accuracy lost) and, being tried, it is never judged."""

import math

import pytest

from tests.search.test_strategies import judge, study_of

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def test_greedy_never_descends_through_a_step_whose_accuracy_was_not_judged():
    space, study = study_of("greedy", 13)
    dense = space.dense()
    unjudged = space.policy({**dense.params(), "keep:b": 12})  # left unjudged, as a tpe study records it

    def run(trial):
        policy = space.policy({k: trial.suggest_categorical(k, v) for k, v in space.choices().items()})
        acc, ms = judge(policy)
        trial.set_user_attr("constraints", [ms - 0.6 * judge(dense)[1]])
        return (-math.inf if policy == unjudged else acc), ms

    study.optimize(run, n_trials=8)
    policies = [space.policy(t.params) for t in study.trials]
    assert unjudged in policies[1:7]  # the dense policy's six lowerings were tried, this one not judged
    step = space.policy({**dense.params(), "keep:a": 12})  # the best judged buy (as without the unjudged one)
    assert policies[7] == space.policy({**step.params(), "keep:a": 8})  # the descent goes on from it
    assert policies[7] != space.policy({**unjudged.params(), "keep:a": 12})  # not from the step never judged
