"""A repair of a policy with every live layer int8 notches one group at a time before every group at once (session
19: such repairs went 248 -> 120 and 224 -> 120 channels, far under the limit, where one group a notch narrower could
have been enough); a policy with float units left keeps the mixes at every group's notch (trials.notch_shapes)."""

from dataclasses import replace

from deepslim.search.evaluate import Evaluator
from deepslim.search.trials import REPAIR_MARGIN, notch_shapes, repaired
from tests.search._tiny import digits
from tests.search.test_depth_search import trained
from tests.search.test_search_repair import _table
from tests.search.test_search_repair_ties import _tied


def _all_int8():
    space = _tied(1)
    ev = Evaluator(trained(), digits(), space, _table(), latency_model="layers")
    policy = space.narrower(space.policy({**space.dense().params(), "drop:4": True}), 0, True)  # every layer int8
    return space, ev, policy


def test_an_all_int8_repair_narrows_the_one_group_nearest_under_the_limit():
    space, ev, policy = _all_int8()
    ms = lambda p: ev.build(p, "none")[1]  # noqa: E731
    own = ms(policy)
    every = space.narrower(policy, 1)
    limit = own * 0.99  # just over: some group alone a notch narrower is within 0.95 x the limit
    alone = notch_shapes(space, policy, 1)[:-1]
    assert len(alone) >= 2 and all(sum(a.keep[g] != policy.keep[g] for g in policy.keep) == 1 for a in alone)
    within = [a for a in alone if ms(a) <= limit * (1 - REPAIR_MARGIN)]
    assert within and ms(every) < min(ms(a) for a in within)  # every group at once: the farthest under
    fixed = repaired(ev, policy, own, limit)
    assert fixed is not None and fixed == max(within, key=ms)  # one group narrower: the least slack (before: every)
    assert sum(fixed.keep[g] != policy.keep[g] for g in policy.keep) == 1 and fixed.int8 == policy.int8


def test_a_policy_with_float_units_left_notches_every_group_at_once_and_none_at_zero_notches():
    space, _, policy = _all_int8()
    assert notch_shapes(space, policy, 0) == [policy]
    mixed = replace(policy, int8={**policy.int8, "5.conv1": False, "5.conv2": False})  # stage 5 float (tied)
    assert notch_shapes(space, mixed, 1) == [space.narrower(mixed, 1)]
    assert notch_shapes(space, policy, 2)[-1] == space.narrower(policy, 2)
    assert all(s.keep != space.narrower(policy, 2).keep for s in notch_shapes(space, policy, 2)[:-1])
