"""The repair's cost and its refused steps with more precision mixes than it tries (``REPAIR_MIXES``, the
one-at-a-time branch of ``precision_steps``): each notch pruned once, and a refused prediction a skipped step."""

import pytest

from deepslim.errors import ConfigError
from deepslim.search import space as space_module
from deepslim.search import trials
from deepslim.search.evaluate import Evaluator
from tests.search._tiny import digits
from tests.search.test_depth_search import trained
from tests.search.test_search_repair import _table
from tests.search.test_search_repair_ties import _tied


def _repairing(parts: int):
    space = _tied(parts)
    ev = Evaluator(trained(), digits(), space, _table(), latency_model="layers")
    policy = space.policy({**space.dense().params(), "drop:4": True})
    return space, ev, policy, ev.build(policy, "none")[1], ev.build(space.dense(), "none")[1]


def test_the_tiny_net_per_layer_has_more_mixes_than_the_repair_tries():
    space, _, policy, _, _ = _repairing(0)
    floats = [n for n in space.int8_layers if not n.startswith("4.") and not policy.int8[n]]
    assert 2 ** len(floats) > trials.REPAIR_MIXES  # the one-at-a-time branch below


@pytest.mark.parametrize("parts", [1, 0])
def test_a_repair_prunes_each_notch_once_not_each_precision_mix(parts, monkeypatch):
    space, ev, policy, own, dense = _repairing(parts)
    calls = []
    real = space_module.prune_policy

    def counting(model, space_, p, **kw):
        calls.append(p)
        return real(model, space_, p, **kw)

    monkeypatch.setattr(space_module, "prune_policy", counting)
    assert trials.repaired(ev, policy, own, 0.01 * dense) is None  # nothing within: every notch tried
    notches = 1 + max(len(g.keep) for g in space.groups)
    assert 1 <= len(calls) <= notches  # one per notch (review R19 L3: 63-64 calls, one per mix)
    assert len({str(sorted(p.keep.items())) for p in calls}) == len(calls)


@pytest.mark.parametrize("parts", [1, 0])
def test_a_narrowed_policy_the_toolkit_refuses_is_a_skipped_step_not_an_error(parts, monkeypatch):
    space, ev, policy, own, dense = _repairing(parts)
    real = space_module.prune_policy

    def refusing(model, space_, p, **kw):
        if p.keep != policy.keep:
            raise ConfigError("refused: a narrowed policy")
        return real(model, space_, p, **kw)

    monkeypatch.setattr(space_module, "prune_policy", refusing)
    # review R19 L2: per layer (512 mixes) the refusal escaped precision_steps as a ConfigError
    assert trials.repaired(ev, policy, own, 0.25 * dense) is None


def test_a_unit_whose_prediction_is_refused_goes_last_in_the_one_at_a_time_order():
    space, _, policy, _, _ = _repairing(0)
    refused = "0"

    def predicted(p):
        if p.int8[refused]:
            raise ConfigError("refused")
        return float(sum(not q for q in p.int8.values()))

    steps = trials.precision_steps(space, policy, predicted)
    floats = [n for n in space.int8_layers if not n.startswith("4.") and not policy.int8[n]]
    assert steps[0] == policy and len(steps) == 2 * len(floats)
    first = 1 + len(floats)
    added = steps[first:]  # the units added one at a time, the refused unit's last
    assert not any(s.int8[refused] for s in added[:-1]) and added[-1].int8[refused]
    assert all(all(s.int8[n] for n in floats) for s in added[-1:])
