"""The uniform fallback (over in the search's frame) is judged by rule B (``_verdicts.reread``) with the frame as its
first reading: kept only when every run of its re-measurement was measured and met its budget against its own dense
model, and the dense model there read at most 1.1x the frame's; the note says which run or reading failed it
(review R2 19 M1, L1)."""

import math

import pytest

from deepslim.search.budget import Budget
from deepslim.search.finals import final_round
from tests.search.test_finals_fallback import BUDGETS, LIMIT, SPACE, _family, _PerRunStub, _searched, _TimedStub


def _fallback(ev_cls, budgets, uniform_ms, dense_ms=None):
    family, searched = _family(), _searched()
    ev = ev_cls({None: 0.90, 1: 0.92}, SPACE, {str(searched[0].policy.params()): 1.5,
                                               str(family[1].policy.params()): uniform_ms})  # fmt: skip
    if dense_ms is not None:
        ev.ms[str(SPACE.dense().params())] = dense_ms
    finals = final_round(ev, searched, family, ("accuracy",), budgets, LIMIT, top_k=2, front=searched)
    return finals, finals.finalists[-1].remeasured, family


@pytest.mark.parametrize(("dense", "kept"), [(4.5, False), (4.4, True)])
def test_a_dense_model_read_slow_through_the_finals_does_not_keep_the_fallback(dense, kept):
    # 2.2 ms against 0.5x a 4.0 ms dense in the frame; the finals read the dense model at 4.5 ms (1.125x the frame's)
    # in every run, so 2.2 ms "meets" 0.5x of it: rule B's dense check turns it over; at 1.1x (4.4 ms) it is kept
    relative = (Budget("latency", 0.5, relative=True),)
    finals, doc, family = _fallback(_TimedStub, relative, 2.2, dense)
    if kept:
        assert doc["verdict"] == "meets" and finals.uniform is not None and finals.uniform.policy == family[1].policy
        return
    assert doc["verdict"] == "over" and finals.uniform is None
    assert "the dense model at 1.12x its median in the first reading, over 1.1x" in doc["first_reading"]
    assert any("the dense model at 1.12x" in n for n in finals.notes)


@pytest.mark.parametrize("runs", [[math.nan, math.nan, 1.7], [1.8, math.nan, 1.7]])
def test_a_fallback_whose_re_measurement_lost_a_run_is_not_kept(runs):
    finals, doc, _ = _fallback(_PerRunStub, BUDGETS, runs)
    assert doc["verdict"] == "over" and finals.uniform is None
    assert "run 2 not measured" in doc["first_reading"]


def test_the_note_of_a_fallback_turned_over_says_which_runs_were_over_not_beyond_the_noise_band():
    finals, doc, _ = _fallback(_PerRunStub, BUDGETS, [1.8, 2.4, 2.4])
    note = next(n for n in finals.notes if n.startswith("uniform finalist"))
    assert "beyond the noise band" not in note
    assert "over in the search's frame (2.2 ms against 2 ms)" in note
    assert "run 2 at 1.2x its budget; run 3 at 1.2x its budget" in note and "run 1" not in note
