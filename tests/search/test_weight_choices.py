"""Unstructured sparsity and k-means bits in the search space (issue 14's space gaps, session 10): data that
round-trips through JSON, carried out by the verbs users call (``prune_`` with magnitude masks, ``cluster_``), judged
by the archive's bytes, written as recipe stages that rebuild the same model and archive, and bad input refused."""

import json

import pytest
import torch

from deepslim.compress.coding import encode
from deepslim.compress.prune import MagnitudePruneConfig
from deepslim.compress.quantize import KMeansConfig
from deepslim.errors import ConfigError
from deepslim.search.evaluate import Evaluator
from deepslim.search.recipe import policy_recipe
from deepslim.search.space import Policy, SearchSpace, prune_policy, quantize_policy
from tests.search._tiny import FAST, digits, fake_table, trained_net


def _space(net):
    return SearchSpace.from_model(net, digits().example_input, kinds=("prune", "int8", "sparsity", "kmeans"),
                                  keep_ratios=(1.0, 0.5), round_to=2, sparsity=(0.0, 0.75),
                                  kmeans_bits=(0, 4))  # fmt: skip


def _weight(m):
    return m.weight.detach()


def test_sparsity_and_kmeans_choices_round_trip_as_data_and_become_the_verbs_configs():
    net = trained_net()
    space = _space(net)
    assert space.sparse_layers == space.kmeans_layers == ("0", "3", "8") and space.sparsity == (0.0, 0.75)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert space.size == 2 * 2 * 2**3 * 2**3 * 2**3  # keep x keep x int8 x sparsity x kmeans
    policy = space.policy({**space.dense().params(), "sparsity:0": 0.75, "kmeans:8": 4, "kmeans:3": 4,
                           "int8:3": True})  # fmt: skip
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert space.policy(policy.params()) == policy
    sparse, shared = space.weight_configs(policy)
    assert sparse == MagnitudePruneConfig(sparsity=0.0, overrides=(("0", 0.75), ("re:.*", None)))
    assert shared == KMeansConfig(bits=4, overrides=(("8", 4), ("re:.*", None)))  # layer 3 is int8: not clustered
    assert space.weight_configs(space.dense()) == (None, None)
    x = digits().example_input
    model = quantize_policy(prune_policy(net, space, policy, example_input=x), space, policy, calib_data=digits().calib)
    w0 = _weight(model[0])
    assert int((w0 == 0).sum()) == round(0.75 * w0.numel())  # the oracle: exactly that share of the smallest
    kept = trained_net()[0].weight.detach().abs().flatten().sort().values[round(0.75 * w0.numel()):]
    assert torch.equal(w0.abs().flatten().sort().values[-len(kept):], kept)  # the largest weights untouched
    assert len(torch.unique(_weight(model[8]))) <= 2**4 and torch.equal(_weight(model[0]), w0)
    assert len(torch.unique(model[3].weight.detach())) > 2**4  # int8 layer: its own codes, no codebook
    assert space.smallest(False).sparsity == {"0": 0.75, "3": 0.75, "8": 0.75}
    assert space.smallest(False).kmeans == {"0": 4, "3": 4, "8": 4} and space.uniform(0.5).kmeans["8"] == 0


def test_a_size_search_finds_the_exact_optimum_over_sparsity_and_kmeans_by_archive_bytes(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net, data = trained_net(), digits()
    space = SearchSpace(groups=(), int8_layers=("3",), sparse_layers=("0", "3"), sparsity=(0.0, 0.75),
                        kmeans_layers=("8",), kmeans_bits=(0, 4))  # fmt: skip
    result = search(net, data, space, ("accuracy", "size"), "size=0.6x", trials=space.size, strategy="grid",
                    out_dir=tmp_path, latency_table=fake_table(), **FAST)  # fmt: skip
    # the oracle: every policy built alike, its .dsz bytes counted (the recipe's own file: the test below), the most
    # accurate within budget (smaller on a tie)
    ev = Evaluator(net, data, space, fake_table(), archive=True)
    limit = 0.6 * ev.evaluate(space.dense(), recovery="none").measurement.archive_bytes
    judged = [ev.evaluate(p) for p in space.all_policies()]
    feasible = [c for c in judged if c.measurement.archive_bytes <= limit]
    expected = min(feasible, key=lambda c: (-c.accuracy, c.measurement.archive_bytes))
    assert len(result.trials) == space.size == 16 and 0 < len(feasible) < len(judged)
    assert result.limits["size"] == pytest.approx(limit)
    assert result.best.policy == expected.policy and result.best.measurement.archive_bytes <= limit
    assert result.pareto[0].policy == expected.policy
    sizes = {c.policy.to_dict()["sparsity"]["0"]: c.measurement.archive_bytes for c in judged
             if c.policy.int8["3"] is False and c.policy.kmeans["8"] == 0 and c.policy.sparsity["3"] == 0}  # fmt: skip
    assert sizes[0.75] < sizes[0.0]  # sparsity is what the archive measures


def test_a_size_budget_below_the_sparsest_smallest_policy_is_refused_naming_it(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained_net()
    with pytest.raises(ConfigError, match=r"the size budget .* is tighter than the smallest policy in this space "
                                          r"allows .*: 8 of 16 channels kept, 0 of 3 layers int8, 3 of 3 layers sparse "
                                          r"\(up to 0\.75\), 3 of 3 layers k-means \(4 bits or more\)\)"):  # fmt: skip
        search(net, digits(), _space(net), ("accuracy", "size"), "size=0.02x", trials=2, out_dir=tmp_path,
               latency_table=fake_table(), **FAST)  # fmt: skip
    assert not (tmp_path / "study.journal").exists()


def test_the_written_recipe_with_sparsity_and_kmeans_rebuilds_the_model_and_its_archive(tmp_path):
    from deepslim.pipeline import load_recipe, run_recipe

    net, data = trained_net(), digits()
    space = _space(net)
    policy = space.policy({**space.dense().params(), "keep:0": 4, "sparsity:0": 0.75, "sparsity:8": 0.75,
                           "kmeans:8": 4, "int8:3": True})  # fmt: skip
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=1, lr=2e-3, seed=3, archive=True)
    cand, searched = ev.judge(policy, recovery="finetune")
    doc = policy_recipe(space, policy, finetune_epochs=1, lr=2e-3, seed=3, encode=True)
    assert [next(iter(s)) for s in doc["stages"]] == ["prune", "prune", "cluster", "quantize", "encode"]
    assert doc["stages"][0]["prune"]["epochs"] == 0 and doc["stages"][1]["prune"]["epochs"] == 1  # after all pruning
    run = run_recipe(load_recipe(doc), tmp_path / "run", model=trained_net(), data=data)
    expected, got = searched.state_dict(), run.model.state_dict()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    archive = (tmp_path / "run" / "model.dsz").read_bytes()
    assert len(archive) == cand.measurement.archive_bytes == len(encode(searched))  # the bytes the search judged


def test_the_same_policy_distilled_seeds_its_stage_as_the_recipe_does(tmp_path):
    from deepslim.pipeline import load_recipe, run_recipe

    net, data = trained_net(), digits()
    space = _space(net)
    policy = space.policy({**space.dense().params(), "sparsity:3": 0.75})
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=1, lr=2e-3, seed=1, temperature=2.0)
    searched, _ = ev.build(policy, "finetune")
    doc = policy_recipe(space, policy, finetune_epochs=1, lr=2e-3, seed=1, temperature=2.0)
    assert [next(iter(s)) for s in doc["stages"]] == ["prune", "distill"]
    got = run_recipe(load_recipe(doc), tmp_path / "run", model=trained_net(), data=data).model.state_dict()
    for k, v in searched.state_dict().items():
        assert torch.equal(v, got[k]), k


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sparsity": (0.0, 1.0)}, r"sparsity options are fractions in \[0, 1\) \(0: dense\), got 1.0"),
    ({"sparsity": (0.5, 0.0)}, "the first sparsity option is the dense policy's and must be 0"),
    ({"sparsity": (0.0,)}, "sparsity needs two or more options"),
    ({"kmeans_bits": (0, 9)}, r"k-means bit options are integers from 1 to 8, or 0 \(not clustered\), got 9"),
    ({"kmeans_bits": (0, 4, 4)}, "k-means bits options repeat a value"),
])  # fmt: skip
def test_bad_sparsity_and_kmeans_options_are_refused_saying_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_model(trained_net(), digits().example_input, kinds=("sparsity", "kmeans"), **kwargs)


def test_a_policy_outside_the_sparsity_and_kmeans_options_is_refused_naming_it():
    space = _space(trained_net())
    with pytest.raises(ConfigError, match=r"sparsity:0=0.5 is not in the search space"):
        space.policy({**space.dense().params(), "sparsity:0": 0.5})
    with pytest.raises(ConfigError, match="the policy does not choose 'kmeans:8'"):
        space.policy({k: v for k, v in space.dense().params().items() if k != "kmeans:8"})
    with pytest.raises(ConfigError, match="unknown search space kind 'sparse'; choose from prune, int8, hpo, sparsity, "
                                          "kmeans"):  # fmt: skip
        SearchSpace.from_model(trained_net(), digits().example_input, kinds=("sparse",))
