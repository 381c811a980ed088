"""The repair stops at the lightest change that meets the budget (session 19): at each notch of channels it tries
the mixes of the policy's float precision units turned int8 and judges the one estimated nearest under the limit
first, instead of turning every layer int8 at once (session 18's seed 5: trial 36 at 1.10x the limit repaired to
0.69x); with more mixes than ``REPAIR_MIXES`` the units are added one at a time, the one that saves most first."""

import pytest

from deepslim.search.evaluate import Evaluator
from deepslim.search.trials import REPAIR_MARGIN, REPAIR_MIXES, precision_steps, repaired
from tests.search._tiny import digits
from tests.search.test_depth_search import trained
from tests.search.test_search_repair import _table
from tests.search.test_search_repair_ties import _tied


def _setting(parts: int):
    """The tiny ResNet's space with int8 tied per block (``parts=1``) or per layer (0), judged by the fake layer
    table (int8 at 0.4x), and a policy over budget: block 4 dropped, every layer float (0.74x dense)."""
    space = _tied(parts)
    ev = Evaluator(trained(), digits(), space, _table(), latency_model="layers")
    policy = space.policy({**space.dense().params(), "drop:4": True})
    return space, ev, policy


@pytest.mark.parametrize(("ratio", "stages"), [(0.65, ("5",)), (0.5, ("5", "6"))])
def test_the_repair_turns_int8_only_the_stages_that_bring_the_policy_nearest_under_the_limit(ratio, stages):
    # on the fake table, block 4 dropped: every layer int8 is 0.276x dense; stage 5 alone int8 0.614x, stages 5 and 6
    # 0.455x -- the mixes estimated nearest under 0.95 x the limit (0.65x: 0.6175x, 0.5x: 0.475x)
    space, ev, policy = _setting(1)
    ms = lambda p: ev.build(p, "none")[1]  # noqa: E731
    dense = ms(space.dense())
    own = ms(policy)
    limit = ratio * dense
    assert own > limit
    fixed = repaired(ev, policy, own, limit)
    assert fixed is not None
    expected = {n: any(n.startswith(f"{s}.") for s in stages) for n in space.int8_layers}
    assert fixed.int8 == expected
    assert fixed.keep == policy.keep and fixed.drop == policy.drop  # no channel notched: int8 alone was enough
    every = space.narrower(policy, 0, True)
    assert ms(every) < 0.6 * limit < limit * (1 - REPAIR_MARGIN) * 0.9 < ms(fixed) <= limit * (1 - REPAIR_MARGIN)


def test_with_no_int8_mix_within_the_repair_goes_a_notch_narrower_at_the_least_slack():
    space, ev, policy = _setting(1)
    ms = lambda p: ev.build(p, "none")[1]  # noqa: E731
    limit = 0.25 * ms(space.dense())  # every layer int8 at full width is 0.276x: over
    fixed = repaired(ev, policy, ms(policy), limit)
    assert fixed is not None and fixed.keep == space.narrower(policy, 1).keep
    assert fixed == space.narrower(policy, 1)  # 0.189x float: within, nearer than any int8 mix at that notch


def test_with_more_mixes_than_the_cap_the_units_are_added_one_at_a_time_the_largest_saving_first():
    space, ev, policy = _setting(0)  # per-layer int8: 9 float layers alive, 512 mixes
    ms = lambda p: ev.build(p, "none")[1]  # noqa: E731
    alive = [n for n in space.int8_layers if not n.startswith("4.")]
    assert 2 ** len(alive) > REPAIR_MIXES
    steps = precision_steps(space, policy, ms)
    assert len(steps) == 1 + len(alive) + (len(alive) - 1)  # the policy, each layer alone, the prefixes of 2..9
    assert steps[0] == policy
    singles = steps[1 : 1 + len(alive)]
    assert [next(n for n, q in p.int8.items() if q) for p in singles] == alive
    first = min(singles, key=ms)  # the layer whose int8 saves most alone opens every prefix
    prefixes = steps[1 + len(alive) :]
    turned = [{n for n, q in p.int8.items() if q} for p in prefixes]
    assert all(a < b for a, b in zip(turned, turned[1:], strict=False)) and all(len(t) == k + 2 for k, t in
                                                                                 enumerate(turned))  # fmt: skip
    assert {n for n, q in first.int8.items() if q} < turned[0]
    assert turned[-1] == set(alive)
    assert precision_steps(space, space.narrower(policy, 0, True), ms) == [space.narrower(policy, 0, True)]


def test_a_tied_unit_whose_first_layer_is_dropped_is_still_a_step_while_another_of_its_layers_lives():
    from dataclasses import replace

    space = replace(_tied(0), tied=(("3.conv1", "3.conv2", "4.conv1", "4.conv2"),))  # one choice across two blocks
    policy = space.policy({**space.dense().params(), "drop:3": True, "drop:6": True})
    mixes = [{n for n, q in p.int8.items() if q} for p in precision_steps(space, policy, lambda p: 0.0)]
    assert {"3.conv1", "3.conv2", "4.conv1", "4.conv2"} in mixes  # block 4's layers follow the dropped 3.conv1
    assert len(mixes) == 2**6  # every mix of the unit and the five untied layers alive (0, 5.conv1/conv2/proj, 9)
