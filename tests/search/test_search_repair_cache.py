"""The repair's per-notch pruning cache holds the current notch only, and caches a refusal too (review R2 19 L4): a
refused notch is pruned once, not once per precision mix, and no earlier notch's model is kept until the repair ends."""

import gc
import weakref

import pytest

from deepslim.errors import ConfigError
from deepslim.search import space as space_module
from deepslim.search import trials
from tests.search.test_search_repair_cost import _repairing


@pytest.mark.parametrize("parts", [1, 0])
def test_a_refused_notch_is_pruned_once_not_once_per_mix(parts, monkeypatch):
    space, ev, policy, own, dense = _repairing(parts)
    real, refused = space_module.prune_policy, []

    def refusing(model, space_, p, **kw):
        if p.keep != policy.keep:
            refused.append(str(sorted(p.keep.items())))
            raise ConfigError("refused: a narrowed policy")
        return real(model, space_, p, **kw)

    monkeypatch.setattr(space_module, "prune_policy", refusing)
    assert trials.repaired(ev, policy, own, 0.25 * dense) is None
    notches = 1 + max(len(g.keep) for g in space.groups)
    shapes = {str(sorted(space.narrower(policy, n).keep.items())) for n in range(1, notches)}
    shapes.discard(str(sorted(policy.keep.items())))
    assert refused and len(refused) == len(set(refused)) == len(shapes)  # review: 32 (tied) and 36 (per layer)


def test_an_earlier_notch_s_model_is_not_held_while_the_next_is_pruned(monkeypatch):
    space, ev, policy, own, dense = _repairing(1)
    real, models, alive = space_module.prune_policy, [], []

    def tracking(model, space_, p, **kw):
        gc.collect()
        alive.append(sum(ref() is not None for ref in models))
        net = real(model, space_, p, **kw)
        models.append(weakref.ref(net))
        return net

    monkeypatch.setattr(space_module, "prune_policy", tracking)
    assert trials.repaired(ev, policy, own, 0.01 * dense) is None  # nothing within: every notch tried, none judged
    assert len(models) >= 2 and alive == [0] * len(models)
