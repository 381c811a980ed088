"""A uniform fallback (the fastest uniform policy, over in the search's frame) that no run of the finals'
re-measurement measured: dropped with a note, not a TypeError at the end of the search (review R19 L4)."""

import math

from deepslim.search.finals import final_round
from tests.search.test_finals_fallback import BUDGETS, LIMIT, _timed


def test_a_uniform_fallback_measured_in_no_run_is_dropped_with_a_note():
    ev, family, searched = _timed(math.nan)  # its timing failed in every run
    finals = final_round(ev, searched, family, ("accuracy",), BUDGETS, LIMIT, top_k=2, front=searched)
    assert finals.uniform is None  # only a re-measurement within its budget could keep it
    fallback = next(c for c in finals.finalists if c.policy == family[1].policy)
    assert not fallback.feasible and fallback.remeasured is None
    assert finals.best is not None and finals.best.policy == searched[0].policy  # the searched finalist still judged
    assert any("uniform fallback the uniform policy was not measured in any run" in n and "dropped" in n
               for n in finals.notes)  # fmt: skip
