"""The measured latency model's frame (Evaluator.settle_reference, the search's first step): the dense model's
milliseconds, which a relative budget's limit and every trial's reported latency scale, are the median of the dense
readings of three runs of it timed against itself — one outlying start-up reading no longer moves the limit. The
feasible set never hung on it: a trial is judged by its median ratio to dense readings interleaved with it."""

import itertools

import pytest

from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _table(outlier: float) -> LatencyTable:
    """A deterministic timer whose first call reads ``outlier`` times slow (a start-up reading on a busy machine)."""
    calls = itertools.count()

    def timer(pairs):
        slow = outlier if next(calls) == 0 else 1.0
        return [slow * ms for ms in params_ms(pairs)]

    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=timer)


def _frame(outlier: float, settle: bool = True):
    """The dense reference, the 0.45x limit and the feasible set of a few policies."""
    net = trained()
    space = _space(net)
    ev = Evaluator(net, digits(), space, _table(outlier), latency_model="measured", measure_repeats=1)
    if settle:
        ev.settle_reference()
    reference = ev.build(space.dense(), "none")[1]
    limit = 0.45 * reference
    policies = [space.uniform(r, q) for r in (1.0, 0.5) for q in (False, True)]
    policies += [space.policy({**space.dense().params(), "drop:4": True, "drop:6": True})]
    feasible = [ev.build(p, "none")[1] <= limit for p in policies]
    return reference, limit, feasible


def test_one_outlying_start_up_reading_moves_neither_the_limit_nor_the_feasible_set():
    steady, outlying = _frame(1.0), _frame(3.0)
    assert outlying[0] == steady[0] and outlying[1] == steady[1]  # the frame: one reading set it 3x off
    assert outlying[2] == steady[2] and any(steady[2]) and not all(steady[2])  # the budget binds, alike
    alone = _frame(3.0, settle=False)  # the first reading alone: the limit 3x off, the feasible set as before
    assert alone[1] == pytest.approx(3 * steady[1]) and alone[2] == steady[2]


def test_the_search_settles_its_frame_before_the_limits(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from unittest import mock

    from deepslim.search import search

    settled: list[float | None] = []
    settle = Evaluator.settle_reference

    def recorded(self, *args, **kwargs):
        settled.append(settle(self, *args, **kwargs))
        return settled[-1]

    net = trained()
    with mock.patch.object(Evaluator, "settle_reference", recorded):
        result = search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=1, out_dir=tmp_path,
                        latency_table=_table(1.0), latency_model="measured", finetune_epochs=0, top_k=1,
                        uniform_ratios=(1.0,), priors=False)  # fmt: skip
    assert len(settled) == 1 and settled[0] is not None
    assert result.limits["latency"] == pytest.approx(0.45 * settled[0])  # the limit is in the settled frame
