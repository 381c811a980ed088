"""The space's latency floor (:func:`deepslim.search.frame.floor_policies`) in a space whose int8 choices are tied
per stage or block: each tied group's precision is chosen together, so every floor policy is one the space holds
(review R17 L4: chosen per layer, it split a stage and the feasibility check took a policy no trial can run)."""

from deepslim.search import frame
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits
from tests.search.test_depth_search import trained
from tests.search.test_search_repair_ties import _tied


def _ms(key):
    # int8 pays only on a wide layer (input channels x output channels >= 64): in the tiny ResNet's tied stage 5 the
    # projection and second convolution gain from it and the first convolution does not
    if key.kind == "qdq":
        return 1e-6
    return key.macs / 1e6 * ((0.4 if key.in_shape[1] * key.out_channels >= 64 else 1.6) if key.int8 else 1.0)


def test_the_floor_chooses_a_tied_groups_precision_together():
    space = _tied(1)
    ev = Evaluator(trained(), digits(), space, LatencyTable(timer=lambda keys: [_ms(k) for k in keys]),
                   latency_model="layers")  # fmt: skip
    floors = frame.floor_policies(ev)
    assert len(floors) == 3
    for policy in floors:
        assert space.policy(policy.params()) == policy  # refused ("splits the int8 choice") when a stage is split
        for group in space.tied:
            assert len({policy.int8[n] for n in group}) == 1
    mixed = floors[0].int8
    assert mixed["5.conv1"] and not mixed["3.conv1"]  # per group: the summed times favour int8 in 5 only
