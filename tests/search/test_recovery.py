"""Recovery in the search: hyper-parameters as part of the space (HPO), batch-norm re-estimation when nothing is
fine-tuned (in the search and in the recipe it writes), and energy on a named device."""

import json

import pytest
import torch

from deepslim.analysis import profile
from deepslim.analysis.cost import estimate_cost
from deepslim.errors import ConfigError
from deepslim.search import Candidate, Policy, SearchSpace
from deepslim.search.budget import check_device
from deepslim.search.evaluate import Evaluator
from deepslim.search.recipe import policy_recipe
from deepslim.search.recovery import BNReestimateConfig, reestimate_bn_
from deepslim.search.space import DEFAULT_RECOVERY, prune_policy
from deepslim.techniques import get_technique
from tests.search._tiny import digits, fake_table, tiny_net, trained_net

X = torch.randn(1, 1, 8, 8)


def hpo_space(net, recovery):
    full = SearchSpace.from_model(net, digits().example_input, keep_ratios=(1.0, 0.5), round_to=2)
    return SearchSpace(groups=full.groups, int8_layers=("3",), round_to=2, recovery=recovery)


def test_recovery_choices_join_the_space_as_data_and_round_trip_through_json():
    space = SearchSpace.from_model(tiny_net(), X, kinds=("prune", "hpo"), keep_ratios=(1.0, 0.5), round_to=2)
    assert space.kinds == ("prune", "hpo") and space.int8_layers == ()
    assert space.recovery == {n: tuple(v) for n, v in DEFAULT_RECOVERY.items()}
    assert space.size == 2 * 2 * 3 * 2 * 2
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert space.choices()["recovery:temperature"] == [None, 4.0]
    assert space.dense().recovery == {"lr": 1e-3, "finetune_epochs": 1, "temperature": None}  # the first options
    policy = space.policy({"keep:0": 4, "keep:3": 8, "recovery:lr": 3e-3, "recovery:finetune_epochs": 2,
                           "recovery:temperature": 4.0})  # fmt: skip
    assert policy.recovery == {"lr": 3e-3, "finetune_epochs": 2, "temperature": 4.0}
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert space.policy(policy.params()) == policy
    with pytest.raises(ConfigError, match="recovery:lr=0.1 is not in the search space"):
        space.policy({**policy.params(), "recovery:lr": 0.1})
    # given as a mapping: kept in the canonical order of names, and the space says it searches them
    given = SearchSpace(recovery={"temperature": [None, 2.0], "lr": [2e-3]})
    assert list(given.recovery) == ["lr", "temperature"] and "hpo" in given.kinds
    plain = SearchSpace.from_model(tiny_net(), X, keep_ratios=(1.0, 0.5), round_to=2)
    assert "recovery" not in plain.to_dict() and "recovery" not in plain.dense().to_dict()


@pytest.mark.parametrize(("recovery", "message"), [
    ({"momentum": [0.9]}, "unknown recovery choice 'momentum'; choose from lr, finetune_epochs, temperature"),
    ({"lr": []}, "recovery choice 'lr' needs a non-empty list of options"),
    ({"lr": [0.0]}, "'lr': each option must be a positive number, got 0.0"),
    ({"finetune_epochs": [1.5]}, "'finetune_epochs': each option must be an integer >= 0, got 1.5"),
    ({"temperature": [-1.0]}, "'temperature': each option must be a positive number or null"),
    ({"lr": [1e-3, 1e-3]}, "recovery choice 'lr' repeats an option"),
])  # fmt: skip
def test_bad_recovery_choices_say_what_is_wrong(recovery, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace(recovery=recovery)
    with pytest.raises(ConfigError, match="a policy is a mapping with 'keep', 'int8' and optionally 'recovery'"):
        Policy.from_dict({"keep": {}, "int8": {}, "lr": 1e-3})


def _rerun(tmp_path, space, policy, **recipe):
    from deepslim.pipeline import load_recipe, run_recipe

    doc = policy_recipe(space, policy, **recipe)
    return doc, run_recipe(load_recipe(doc), tmp_path / "run", model=trained_net(), data=digits()).model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("recovery", "stages"), [
    ({"lr": 2e-3, "finetune_epochs": 1, "temperature": None}, ["prune", "quantize"]),
    ({"lr": 2e-3, "finetune_epochs": 1, "temperature": 3.0}, ["prune", "distill", "quantize"]),
])  # fmt: skip
def test_the_searched_recovery_is_what_the_evaluator_runs_and_the_written_recipe_reruns(tmp_path, recovery, stages):
    net = trained_net()
    space = hpo_space(net, {k: [v] for k, v in recovery.items()})
    policy = space.policy({"keep:0": 4, "keep:3": 4, "int8:3": True, **{f"recovery:{k}": v for k, v in
                                                                         recovery.items()}})  # fmt: skip
    ev = Evaluator(net, digits(), space, fake_table(), finetune_epochs=2, lr=1e-3, seed=3)  # defaults the policy beats
    assert ev.trial_recovery == "finetune"  # with recovery in the space, every trial is fine-tuned with its own
    searched, _ = ev.build(policy)
    doc, rerun = _rerun(tmp_path, space, policy, finetune_epochs=2, lr=1e-3, seed=3)
    assert [next(iter(s)) for s in doc["stages"]] == stages
    trains = [settings for stage in doc["stages"] for settings in stage.values() if settings.get("epochs")]
    assert [(t["epochs"], t["lr"]) for t in trains] == [(1, 2e-3)]  # the policy's values, not the defaults
    if recovery["temperature"]:
        assert doc["stages"][1]["distill"]["temperature"] == 3.0 and doc["stages"][0]["prune"]["epochs"] == 0
    assert _same(searched, rerun)
    assert rerun[0].out_channels == 4


def test_with_zero_finetune_epochs_the_final_model_gets_bn_reestimation_in_the_search_and_in_the_recipe(tmp_path):
    net, data = trained_net(), digits()
    space = hpo_space(net, {})
    policy = space.policy({"keep:0": 4, "keep:3": 4, "int8:3": False})
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=0, seed=3)
    final, _ = ev.build(policy, "finetune")
    stale = prune_policy(net, space, policy, example_input=data.example_input, calib_data=data.calib)
    fresh = prune_policy(net, space, policy, example_input=data.example_input, calib_data=data.calib)
    assert reestimate_bn_(fresh, data.calib, task=data.task) == min(len(data.calib), 20) > 0
    assert torch.equal(final[1].running_mean, fresh[1].running_mean)
    assert not torch.allclose(final[1].running_mean, stale[1].running_mean)  # the statistics were re-estimated
    assert ev.evaluate(policy, recovery="finetune").accuracy == ev.evaluate(policy, recovery="bn").accuracy
    doc, rerun = _rerun(tmp_path, space, policy, finetune_epochs=0, seed=3)
    assert doc["stages"][1] == {"recalibrate": {"method": "bn", "batches": 20}}
    assert _same(final, rerun)
    # nothing pruned: the statistics are right already, and the recipe has nothing to recalibrate
    dense_doc = policy_recipe(space, space.policy({"keep:0": 8, "keep:3": 8, "int8:3": True}), finetune_epochs=0)
    assert [next(iter(s)) for s in dense_doc["stages"]] == ["quantize"]


def test_the_recalibrate_stage_is_a_registered_technique_with_a_checked_config():
    technique = get_technique("bn")
    assert technique.kind == "recalibrate" and technique.config is BNReestimateConfig
    assert BNReestimateConfig.from_dict({"batches": 5}).batches == 5
    with pytest.raises(ConfigError, match="batches must be an integer >= 1, got 0"):
        BNReestimateConfig(batches=0)
    with pytest.raises(ConfigError, match="needs data with a calibration split"):
        technique.apply(tiny_net(), BNReestimateConfig())


def test_energy_is_the_cost_models_estimate_on_the_named_device():
    net, data = trained_net(), digits()
    space = hpo_space(net, {})
    ev = Evaluator(net, data, space, fake_table(), device="rpi4")
    judged = {name: ev.evaluate(p) for name, p in
              (("dense", space.dense()), ("float", space.smallest(False)), ("int8", space.smallest(True)))}  # fmt: skip
    built, _ = ev.build(space.smallest(True))
    expected = estimate_cost(profile(built, data.example_input), "rpi4").energy_uj
    assert judged["int8"].value("energy") == pytest.approx(expected, rel=1e-12)
    assert judged["int8"].measurement.device == "rpi4"
    assert judged["dense"].value("energy") > judged["float"].value("energy") > judged["int8"].value("energy") > 0
    assert ev.least("energy") == (judged["int8"].value("energy"), space.smallest(True))
    again = Candidate.from_dict(json.loads(json.dumps(judged["int8"].to_dict())))
    assert again.value("energy") == judged["int8"].value("energy") == judged["int8"].to_dict()["energy_uj"]
    plain = Evaluator(net, data, space, fake_table()).evaluate(space.dense())
    assert plain.value("energy") != plain.value("energy")  # no device, no estimate: NaN, never a made-up number


def test_an_unknown_device_lists_the_known_ones_and_energy_defaults_to_the_host():
    with pytest.raises(ConfigError, match=r"unknown device 'pi9'; known devices: .*host.*rpi4"):
        Evaluator(tiny_net(), digits(), SearchSpace(), fake_table(), device="pi9")
    with pytest.raises(ConfigError, match=r"unknown device 'pi9'; known devices: .*rpi4"):
        check_device("pi9", ("accuracy",), ())
    assert check_device(None, ("accuracy", "energy"), ()) == "host"
    assert check_device(None, ("accuracy", "latency"), ()) is None
    assert check_device("rpi4", ("accuracy",), ()) == "rpi4"


def test_a_search_over_the_learning_rate_fine_tunes_each_trial_with_its_own_and_keeps_the_better(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net, data = trained_net(), digits()
    space = SearchSpace(recovery={"lr": [1e-3, 5e-3]})  # nothing pruned or quantized: the learning rate alone
    result = search(net, data, space, ("accuracy", "latency"), trials=2, strategy="grid", out_dir=tmp_path,
                    latency_table=fake_table(), finetune_epochs=1, top_k=1, uniform_ratios=(1.0,))  # fmt: skip
    by_lr = {c.policy.recovery["lr"]: c for c in result.trials}
    assert sorted(by_lr) == [1e-3, 5e-3] and {c.recovery for c in result.trials} == {"finetune"}
    assert by_lr[1e-3].accuracy != by_lr[5e-3].accuracy  # each trial trained with its own rate
    winner = max(by_lr.values(), key=lambda c: c.accuracy)
    assert result.best.policy == winner.policy
    assert result.best.accuracy == winner.accuracy  # the finalist's fine-tune repeats the trial's, seed for seed
