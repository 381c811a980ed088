"""The search space's depth choice (kind "depth": per droppable residual block, keep or drop): data that round-trips
through JSON, dropped before channels are pruned (a group or layer inside a dropped block has no say), the space's
floor with every block dropped, the exact optimum under a latency budget found by an exhaustive search with a fake
deterministic table, and the written recipe that rebuilds the very model the search judged."""

import functools
import json

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import BlockDropConfig
from deepslim.errors import ConfigError
from deepslim.search.evaluate import Evaluator, _shape
from deepslim.search.recipe import policy_recipe
from deepslim.search.space import Policy, SearchSpace, prune_policy
from tests.compress.test_depth import Residual, tiny_resnet
from tests.search._tiny import FAST, digits, exhaustive_optimum, fake_table, tiny_net

KINDS = ("prune", "int8", "depth")


@functools.cache
def _trained_state():
    net = tiny_resnet().train()
    ds.fit(net, digits(), epochs=1, lr=1e-2, seed=0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def trained() -> nn.Module:
    net = tiny_resnet()
    net.load_state_dict(_trained_state())
    return net.eval()


def _space(net: nn.Module) -> SearchSpace:
    return SearchSpace.from_model(net, digits().example_input, kinds=KINDS, keep_ratios=(1.0, 0.5), round_to=2)


def test_the_depth_choices_are_the_droppable_blocks_and_round_trip_as_data():
    space = _space(trained())
    assert space.blocks == ("3", "4", "6") and space.kinds == KINDS
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert [g.name for g in space.groups] == ["0", "3.conv1", "4.conv1", "5.proj", "5.conv1", "6.conv1"]
    assert space.size == 2**6 * 2**11 * 2**3  # channels x int8 x depth
    policy = space.policy({**space.dense().params(), "drop:4": True, "keep:3.conv1": 4})
    assert policy.drop == {"3": False, "4": True, "6": False}
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert space.policy(policy.params()) == policy
    assert not any(space.uniform(0.5).drop.values()) and space.uniform(0.5).drop.keys() == {"3", "4", "6"}
    assert all(space.smallest(True).drop.values()) and not any(space.dense().drop.values())
    assert "drop" not in Policy(keep={"a": 1}).to_dict()  # a policy without depth choices reads as before
    with pytest.raises(ConfigError, match="drop:5=True is not in the search space"):
        space.policy({**space.dense().params(), "drop:5": True})
    with pytest.raises(ConfigError, match="choose from prune, int8, hpo, sparsity, kmeans, depth"):
        SearchSpace.from_model(trained(), digits().example_input, kinds=("deep",))


def test_a_single_string_of_names_is_refused_not_split_into_characters():
    with pytest.raises(ConfigError, match=r"blocks is a list of names, got the string 'layer1.0' \(write \['layer1"):
        SearchSpace(groups=(), int8_layers=(), blocks="layer1.0")
    for name in ("sparse_layers", "kmeans_layers", "int8_layers"):
        with pytest.raises(ConfigError, match=f"{name} is a list of names, got the string 'fc'"):
            SearchSpace(**{"groups": (), "int8_layers": (), name: "fc"})
    doc = SearchSpace(groups=(), int8_layers=(), blocks=("ab",)).to_dict()
    assert SearchSpace.from_dict(doc).blocks == ("ab",)
    for key in ("blocks", "int8_layers"):
        with pytest.raises(ConfigError, match=f"{key} is a list of names, got the string 'ab'"):
            SearchSpace.from_dict({**doc, key: "ab"})


def test_a_dropped_block_takes_its_groups_and_layers_out_of_the_channel_and_int8_configs():
    net, x = trained(), digits().example_input
    space = _space(net)
    policy = space.policy({**space.dense().params(), "drop:4": True, "keep:4.conv1": 4, "keep:3.conv1": 4,
                           "int8:4.conv2": False, "int8:0": True})  # fmt: skip
    assert space.depth_config(policy) == BlockDropConfig(blocks=("4",))
    prune, quant = space.configs(policy)
    assert prune.overrides == (("3.conv1", 0.5),)  # 4.conv1's choice is gone with its block
    assert quant is not None and not any(name.startswith("4.") for name, _ in quant.overrides)
    built = prune_policy(net, space, policy, example_input=x)
    assert isinstance(built[4], nn.Identity) and built[3].conv1.out_channels == 4 and built[6].conv1.out_channels == 16
    same = space.policy({**policy.params(), "keep:4.conv1": 8})  # differs only inside the dropped block
    assert _shape(same) == _shape(policy) != _shape(space.dense())
    assert space.depth_config(space.dense()) is None


def test_the_smallest_policy_drops_every_droppable_block():
    net, x = trained(), digits().example_input
    space = _space(net)
    built = prune_policy(net, space, space.smallest(True), example_input=x)
    assert [type(built[i]).__name__ for i in (3, 4, 5, 6)] == ["Identity", "Identity", "Down", "Identity"]
    assert built[5].conv1.out_channels == 8  # the one block left has its fewest channels


def test_a_latency_search_finds_the_exact_optimum_including_dropped_blocks(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net, data = trained(), digits()
    space = SearchSpace(groups=(), int8_layers=("5.conv2",), blocks=("3", "4", "6"))  # 16 policies
    result = search(net, data, space, ("accuracy", "latency"), "latency=0.75x", trials=space.size, strategy="grid",
                    out_dir=tmp_path, latency_table=fake_table(), **FAST)  # fmt: skip
    limit, judged, feasible, expected = exhaustive_optimum(net, data, space, 0.75)
    assert len(result.trials) == space.size == 16 and 0 < len(feasible) < len(judged)
    assert result.best.policy == expected.policy and result.best.latency_ms <= limit
    assert any(expected.policy.drop.values())  # the budget is met only by dropping a block
    assert all(any(c.policy.drop.values()) for c in feasible)
    dropped = {tuple(sorted(b for b, d in c.policy.drop.items() if d)): c.latency_ms for c in judged
               if not c.policy.int8["5.conv2"]}  # fmt: skip
    assert dropped[("3",)] == dropped[("4",)] < dropped[()]  # two equal blocks: the same saving


def test_the_written_recipe_drops_the_blocks_first_and_rebuilds_the_judged_model(tmp_path):
    from deepslim.pipeline import load_recipe, run_recipe

    net, data = trained(), digits()
    space = _space(net)
    policy = space.policy({**space.dense().params(), "drop:3": True, "drop:6": True, "keep:5.conv1": 8,
                           "int8:4.conv1": True})  # fmt: skip
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=1, lr=2e-3, seed=3)
    _, searched = ev.judge(policy, recovery="finetune")
    doc = policy_recipe(space, policy, finetune_epochs=1, lr=2e-3, seed=3)
    assert [next(iter(s)) for s in doc["stages"]] == ["prune", "prune", "quantize"]
    assert doc["stages"][0]["prune"] == {"method": "depth", "blocks": ["3", "6"], "epochs": 0, "lr": 2e-3}
    assert doc["stages"][1]["prune"]["method"] == "channel" and doc["stages"][1]["prune"]["epochs"] == 1
    run = run_recipe(load_recipe(doc), tmp_path / "run", model=trained(), data=data)
    expected, got = searched.state_dict(), run.model.state_dict()
    assert expected.keys() == got.keys() and not any(k.startswith(("3.", "6.")) for k in got)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_a_depth_only_policy_fine_tunes_in_its_depth_stage_as_the_search_did(tmp_path):
    from deepslim.pipeline import load_recipe, run_recipe

    net, data = trained(), digits()
    space = SearchSpace(groups=(), int8_layers=(), blocks=("3", "4", "6"))
    policy = space.policy({"drop:3": False, "drop:4": True, "drop:6": False})
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=1, lr=2e-3, seed=5)
    searched, _ = ev.build(policy, "finetune")
    doc = policy_recipe(space, policy, finetune_epochs=1, lr=2e-3, seed=5)
    assert doc["stages"] == [{"prune": {"method": "depth", "blocks": ["4"], "epochs": 1, "lr": 2e-3}}]
    got = run_recipe(load_recipe(doc), tmp_path / "run", model=trained(), data=data).model
    assert isinstance(got[3], Residual) and isinstance(got[4], nn.Identity)
    for k, v in searched.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k


def test_the_samplers_treat_a_dropped_block_as_a_lowering():
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search.samplers import EvolutionSampler, GreedySampler, _lower_options

    space = SearchSpace(groups=(), int8_layers=("0",), blocks=("3", "4"))
    greedy = GreedySampler(space)
    dense = greedy.key(space.dense().params())
    downs = greedy.moves(dense, higher=False, recovery=False)
    assert sorted(downs) == sorted([(True, False, False), (False, True, False), (False, False, True)])
    up = greedy.moves((False, True, False), lower=False, recovery=False)
    assert up == [(False, False, False)]
    evolution = EvolutionSampler(space, population_size=2, tournament_size=1)
    assert _lower_options(evolution, (False, True, False), 1) == [] and _lower_options(evolution, dense, 2) == [True]


def test_kind_depth_on_a_model_without_a_droppable_block_warns_with_why(caplog):
    with caplog.at_level("WARNING", logger="deepslim.search._depth"):
        space = SearchSpace.from_model(tiny_net(), digits().example_input, kinds=KINDS)
    assert space.blocks == () and space.size == SearchSpace.from_model(
        tiny_net(), digits().example_input, kinds=("prune", "int8")).size  # fmt: skip
    assert "kind 'depth': Sequential has no droppable residual block (0: its output" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="deepslim.search._depth"):
        assert _space(trained()).blocks == ("3", "4", "6")
    assert "no droppable" not in caplog.text
