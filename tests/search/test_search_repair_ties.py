"""A space whose int8 choices are tied per stage or block (``SearchSpace.from_model(..., tie_int8=N)``: fewer
precision mixes for the sampler to draw over the budget), and the repair with it: the repaired slot holds only the
choices a trial suggests; and the repair's estimate learnt from the steps it judged (``repaired(..., learnt=)``)."""

import json

import pytest

from deepslim.errors import ConfigError
from deepslim.search import SearchSpace
from deepslim.search.evaluate import Evaluator
from deepslim.search.space import prune_policy
from deepslim.search.trials import REPAIR_HEADROOM, repaired
from tests.search._tiny import digits, params_ms
from tests.search.test_depth_search import KINDS, trained
from tests.search.test_search_repair import _table


def _tied(parts: int) -> SearchSpace:
    net = trained()
    return SearchSpace.from_model(net, digits().example_input, kinds=KINDS, keep_ratios=(1.0, 0.5), round_to=2,
                                  tie_int8=parts)  # fmt: skip


def test_int8_tied_by_name_prefix_is_one_choice_per_block_and_round_trips_as_data():
    per_layer, tied = _tied(0), _tied(1)
    assert per_layer.tied == () and len(per_layer.int8_layers) == 11
    # the tiny ResNet's blocks 3, 4 and 6 (two convolutions each) and 5 (two and a projection) tie; 0 and 9 alone
    assert tied.tied == (("3.conv1", "3.conv2"), ("4.conv1", "4.conv2"), ("5.conv1", "5.conv2", "5.proj"),
                         ("6.conv1", "6.conv2"))  # fmt: skip
    int8 = [k for k in tied.choices() if k.startswith("int8:")]
    assert int8 == ["int8:0", "int8:3.conv1", "int8:4.conv1", "int8:5.conv1", "int8:6.conv1", "int8:9"]
    assert tied.size * 2 ** (11 - 6) == per_layer.size  # 11 precision choices become 6
    assert SearchSpace.from_dict(json.loads(json.dumps(tied.to_dict()))) == tied
    policy = tied.policy({**{k: v[-1] for k, v in tied.choices().items()}, "int8:5.conv1": True, "int8:3.conv1": False})
    assert policy.int8["5.proj"] and policy.int8["5.conv2"] and not policy.int8["3.conv2"]
    with pytest.raises(ConfigError, match="splits the int8 choice"):
        tied.policy({**tied.dense().params(), "int8:5.conv1": True})  # its followers float: a split stage
    assert _tied(9).tied == ()  # no two names share nine parts: every layer alone


@pytest.mark.parametrize("bad", [-1, "1", True, 1.0])
def test_a_bad_tie_int8_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match="tie_int8 is the number of name parts"):
        SearchSpace.from_model(trained(), digits().example_input, tie_int8=bad)


def test_a_tie_int8_without_int8_in_the_space_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"tie_int8=2 ties int8 choices, but the space's kinds \(prune\) have no"):
        SearchSpace.from_model(trained(), digits().example_input, kinds=("prune",), tie_int8=2)
    assert SearchSpace.from_model(trained(), digits().example_input, kinds=("prune",), tie_int8=0).tied == ()


def test_resuming_a_study_with_another_tie_int8_names_the_space_options(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import _study
    from deepslim.search.storage import StorageError

    _study.open_study(_tied(0), ("accuracy",), None, tmp_path, "s")
    with pytest.raises(StorageError, match=r"searches another space .*\(--space, --tie-int8, --round-to\)"):
        _study.open_study(_tied(1), ("accuracy",), None, tmp_path, "s")


def _repairing():
    """Optuna, the space tied per stage, its choices, a repaired policy (a notch narrower, all int8) and an empty
    study."""
    optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = _tied(1)
    return optuna, space, space.choices(), space.narrower(space.dense(), 1, True), optuna.create_study()


def test_a_repair_in_a_tied_space_is_written_as_the_suggested_choices_and_not_queued_twice():
    _, space, choices, fix, study = _repairing()
    from deepslim.search import storage as st
    from deepslim.search.trials import queue_repair

    st.add_trial_slots(study, 3)
    assert queue_repair(study, 0, fix, choices) == 0
    trial = st.claim_trial(study)
    assert space.policy({k: trial.suggest_categorical(k, v) for k, v in choices.items()}) == fix
    study.tell(trial, 0.5)
    assert set(study.trials[0].system_attrs["fixed_params"]) == set(choices)  # no follower written
    # the same repaired policy again (a retried trial repairs alike): the completed trial holds it already
    assert queue_repair(study, 1, fix, choices) is None


def test_a_repair_to_a_policy_a_sampled_trial_ran_is_not_queued_again():
    # a completed trial the sampler drew holds only the suggested parameters (no fixed ones): the repair compares
    # its own parameters without the tied layers' followers to them (review R17 L2)
    optuna, _, choices, fix, study = _repairing()
    from optuna.distributions import CategoricalDistribution

    from deepslim.search import storage as st
    from deepslim.search.trials import queue_repair

    params = {k: v for k, v in fix.params().items() if k in choices}
    kinds = {k: CategoricalDistribution(choices[k]) for k in params}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=kinds, values=[0.5]))
    st.add_trial_slots(study, 2)
    assert len(params) < len(fix.params())  # the space ties layers: the policy's own parameters hold followers
    assert queue_repair(study, 7, fix, choices) is None
    assert all(not t.system_attrs.get("fixed_params") for t in study.trials[1:])


def test_a_repair_to_a_policy_still_waiting_in_the_queue_is_not_queued_again():
    # a prior (or warm start) is enqueued with the parameters a trial suggests, as the repair writes its own: a repair
    # to the same policy finds it waiting and is not written onto a second slot (review R17 L1)
    _, space, choices, fix, study = _repairing()
    from deepslim.search import _study
    from deepslim.search.trials import queue_repair

    assert _study.queue_trials(study, space, ("accuracy",), 3, "tpe", 0, priors=[fix]) == 0
    assert len(study.trials) == 3 and not any(t.system_attrs.get("fixed_params") for t in study.trials[1:])
    assert queue_repair(study, 5, fix, choices) is None
    assert all(not t.system_attrs.get("fixed_params") for t in study.trials[1:])


def test_the_repair_estimate_learns_from_the_steps_it_judged():
    # the judge counts parameters (int8 gains nothing there) while the layer table's estimate puts int8 at 0.4x: the
    # int8 steps are estimated within and judged over. One check: unlearnt, every repair spends it on such a step
    # and gives up; after one repair has judged such a step the estimate is scaled by what it measured, the int8
    # steps are passed over and the check goes to a narrower step that is within.
    net = trained()
    space = _tied(0)
    ev = Evaluator(net, digits(), space, _table(), latency_model="layers")
    judged = {"n": 0}

    def build(policy, recovery):
        judged["n"] += 1
        model = prune_policy(net, space, policy, example_input=digits().example_input)
        return model, params_ms([(model, None)])[0]

    ev.build = build  # type: ignore[method-assign]
    dense_ms = build(space.dense(), "none")[1]
    policy = space.policy({**space.dense().params(), "drop:4": True})
    own = build(policy, "none")[1]
    limit = 0.6 * dense_ms
    assert own > limit
    assert repaired(ev, policy, own, limit, checks=1) is None  # the one check spent on an int8 step judged over
    learnt: list[float] = []
    assert repaired(ev, policy, own, limit, checks=1, learnt=learnt) is None  # the same, and it learns that error
    assert len(learnt) == 1 and learnt[0] > 1.2
    judged["n"] = 0
    fixed = repaired(ev, policy, own, limit, checks=1, learnt=learnt)
    assert fixed is not None and build(fixed, "none")[1] <= limit * (1 - REPAIR_HEADROOM)
    assert fixed.drop == policy.drop
