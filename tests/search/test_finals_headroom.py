"""The finals' headroom rule: among the searched finalists within budget, the best-ranked one far under its budget
gives way to one near it unless its accuracy leads by more than a standard error of the images scored (session 17's
run 2: the finals returned a policy at 0.37x dense against 0.5x over one at 0.44x that scored 0.1 pp below it on
1,000 images; _verdicts.FINALS_RULE). A fake deterministic timer: each model takes a fixed time in every run, the
dense model 4 ms, the budget 0.5x (2 ms)."""

from types import SimpleNamespace

import pytest

from deepslim.search._verdicts import FINALS_RULE, NEAR_BUDGET, budget_share
from deepslim.search.budget import Budget
from deepslim.search.finals import best_or_uniform, final_round
from tests.search.test_finals_fallback import SPACE, _PerRunStub
from tests.search.test_search_focus import _cand

BUDGETS = (Budget("latency", 0.5, relative=True),)
LIMIT = {"latency": 2.0}
POLICIES = {1: {"drop:x": True}, 2: {"int8:a": True}, 3: {"int8:c": True}}
ALL_INT8 = {"int8:a": True, "int8:x.b": True, "int8:c": True}


class _Scored(_PerRunStub):
    """The per-run timed stub (a model's time: one for every run, or a list, run by run) whose validation split
    holds ``images`` images (the standard error's n)."""

    def __init__(self, accuracy, space, ms, images=1000):
        super().__init__(accuracy, space, ms)
        self.data = SimpleNamespace(example_input=None, val=SimpleNamespace(dataset=range(images)))


def _finals(accuracy, ms, images=1000, uniform=None):
    """final_round on searched trials 1-3 (proxy order 1, 2, 3) with recovered ``accuracy`` and times ``ms`` (by
    trial), and the uniform all-int8 policy (within budget in the frame) at ``uniform`` = (accuracy, ms) if given."""
    searched = [_cand(SPACE, t, 0.95 - t / 100, 1.0, True, **POLICIES[t]) for t in sorted(ms)]
    family = [_cand(SPACE, None, 0.9, uniform[1], True, **ALL_INT8)] if uniform else []
    times = {str(c.policy.params()): ms[c.trial] for c in searched}
    times.update({str(c.policy.params()): uniform[1] for c in family} if uniform else {})
    ev = _Scored({**accuracy, None: uniform[0] if uniform else 0.0}, SPACE, times, images)
    return final_round(ev, searched, family, ("accuracy",), BUDGETS, LIMIT, top_k=3, front=searched)


def test_a_finalist_far_under_the_budget_gives_way_to_one_near_it_within_a_standard_error():
    # trial 1: 0.925 at 0.74x its budget (0.37x dense); trial 2: 0.924 at 0.87x; trial 3 near too, 1.5 pp below
    finals = _finals({1: 0.925, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9})
    assert finals.leader is not None and finals.leader.trial == 1  # the best-ranked, as before the rule
    assert finals.best is not None and finals.best.trial == 2  # without the rule: trial 1
    assert [c.remeasured["budget_share"] for c in finals.finalists] == pytest.approx([0.74, 0.87, 0.95])
    choice = finals.choice
    assert choice is not None and choice["rule"] == FINALS_RULE and choice["applied"]
    assert (choice["leader"], choice["chosen"], choice["images"]) == (1, 2, 1000)
    assert choice["se_pp"] == pytest.approx(100 * (0.925 * 0.075 / 1000) ** 0.5)  # 0.83 pp
    assert choice["lead_pp"] == pytest.approx(0.1)
    assert finals.notes[-1] == ("searched finalist trial 1 (accuracy 0.925, 0.74x its budget) leads trial 2 (0.924, "
                                "0.87x) by 0.1 pp, within 0.83 pp (one standard error on 1000 images): trial 2, nearer "
                                "the budget, is returned")  # fmt: skip


def test_a_lead_over_one_standard_error_keeps_the_finalist_far_under_the_budget():
    finals = _finals({1: 0.935, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9})  # 1.1 pp > 0.78 pp
    assert finals.best is not None and finals.best.trial == 1
    assert finals.choice is not None and not finals.choice["applied"] and finals.choice["se_pp"] == pytest.approx(
        100 * (0.935 * 0.065 / 1000) ** 0.5)  # fmt: skip
    # the same lead on 100 images is within one standard error (2.5 pp): the near finalist is returned
    assert _finals({1: 0.935, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9}, images=100).best.trial == 2


def test_the_best_ranked_finalist_near_its_budget_is_returned_as_before():
    finals = _finals({1: 0.925, 2: 0.930, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9})
    assert finals.best.trial == 2 and finals.leader.trial == 2 and not finals.choice["applied"]
    # trial 2 read "within noise" with its median over the budget (1.05x): the next near one within 1 SE is returned
    noisy = _finals({1: 0.925, 2: 0.924, 3: 0.921}, {1: 1.48, 2: [1.9, 2.1, 2.2], 3: 1.8})
    assert noisy.finalists[1].remeasured["verdict"] == "within noise" and noisy.finalists[1].feasible
    assert noisy.best.trial == 3 and noisy.choice["chosen_share"] == pytest.approx(0.9)
    # none near the budget: the best-ranked, however far under it
    far = _finals({1: 0.925, 2: 0.924, 3: 0.920}, {1: 1.2, 2: 1.6, 3: 1.68})
    assert NEAR_BUDGET > 1.68 / 2 and far.best.trial == 1 and not far.choice["applied"]


def test_the_uniform_policy_is_returned_when_it_ranks_above_the_finalist_headroom_chose():
    # the uniform policy (0.975x its budget) scores between the leader (0.925, far) and the near finalist chosen
    # (0.924): it is returned (review R20 M2: compared with the leader, trial 2 was returned, below the baseline)
    finals = _finals({1: 0.925, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9}, uniform=(0.9245, 1.95))
    assert finals.best is not None and finals.best.trial == 2 and finals.leader.trial == 1
    best, notes = best_or_uniform(finals, ("accuracy",))
    assert best is not None and best.trial is None and best.accuracy == pytest.approx(0.9245)
    assert notes[-1] == ("the uniform policy ranks above trial 2, the searched finalist the headroom rule chose, "
                         "after the same recovery (not above trial 1, which that rule passed over): it is best")
    # above the leader too: above every searched finalist
    finals = _finals({1: 0.925, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9}, uniform=(0.926, 1.95))
    best, notes = best_or_uniform(finals, ("accuracy",))
    assert best is not None and best.trial is None and notes[-1].startswith("the uniform policy ranks above every")
    # below the chosen finalist: the chosen one is returned
    finals = _finals({1: 0.925, 2: 0.924, 3: 0.910}, {1: 1.48, 2: 1.74, 3: 1.9}, uniform=(0.9235, 1.95))
    best, notes = best_or_uniform(finals, ("accuracy",))
    assert best is not None and best.trial == 2 and not any("uniform policy ranks" in n for n in notes)


def test_the_budget_share_is_the_median_of_each_run_over_its_own_runs_budget():
    doc = {"repeats_ms": [1.0, None, 3.0, 1.5], "dense_repeats_ms": [4.0, 4.0, 4.0, 2.0]}
    assert budget_share(doc, BUDGETS[0], 2.0) == pytest.approx(1.5)  # shares 0.5, 1.5, 1.5 (run 2 not measured)
    assert budget_share(doc, Budget("latency", 2.0), 2.0) == pytest.approx(0.75)  # absolute: over the limit
    assert budget_share(doc, None, None) is None
