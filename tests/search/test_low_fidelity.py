"""``accept_low_fidelity`` reaches every quantization a search makes (trials, the dense/uniform judgements) and the
recipe it writes: a speed-only search on random weights, whose near-flat logits fail quantization's fidelity check
for no meaningful reason, can then run."""

import pytest

from deepslim.pipeline.recipe import Recipe
from deepslim.search import policy_recipe
from deepslim.search import space as space_module
from deepslim.search.evaluate import Evaluator
from deepslim.search.workers import evaluator_settings
from tests.search._tiny import digits, fake_table, small_space, trained_net


@pytest.fixture
def quantize_calls(monkeypatch):
    """Every LinearQuantConfig the search's quantization receives (the real quantize_ still runs)."""
    seen = []
    real = space_module.quantize_

    def spy(model, config, **kwargs):
        seen.append(config)
        return real(model, config, **kwargs)

    monkeypatch.setattr(space_module, "quantize_", spy)
    return seen


@pytest.mark.parametrize("accept", [False, True])
def test_an_evaluator_quantizes_its_policies_with_the_fidelity_check_it_was_given(quantize_calls, accept):
    net = trained_net()
    ev = Evaluator(net, digits(), small_space(net), fake_table(), accept_low_fidelity=accept)
    policy = ev.space.policy({"keep:0": 4, "keep:3": 8, "int8:3": True})
    cand = ev.evaluate(policy, recovery="none")
    assert cand.accuracy is not None  # a trained tiny net: the check passes either way, the flag only rides along
    assert [c.accept_low_fidelity for c in quantize_calls] == [accept]
    assert [c.overrides for c in quantize_calls] == [()]  # the space's one int8 layer, in int8: none left float
    assert evaluator_settings(ev)["accept_low_fidelity"] is accept  # worker processes judge trials alike


def test_the_search_passes_accept_low_fidelity_to_every_quantization(quantize_calls, tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained_net()
    search(net, digits(), small_space(net), ("accuracy", "latency"), "latency=0.9x", trials=2, strategy="random",
           out_dir=tmp_path, latency_table=fake_table(), finetune_epochs=0, top_k=1, uniform_ratios=(1.0,),
           accept_low_fidelity=True)  # fmt: skip
    assert quantize_calls and all(c.accept_low_fidelity for c in quantize_calls)


@pytest.mark.parametrize("accept", [False, True])
def test_the_written_recipe_accepts_low_fidelity_exactly_when_the_search_did(accept):
    net = trained_net()
    space = small_space(net)
    policy = space.policy({"keep:0": 8, "keep:3": 8, "int8:3": True})
    doc = policy_recipe(space, policy, finetune_epochs=0, accept_low_fidelity=accept)
    quant = [s["quantize"] for s in doc["stages"] if "quantize" in s]
    assert len(quant) == 1 and quant[0].get("accept_low_fidelity", False) is accept
    recipe = Recipe.from_dict(doc)  # the format `deepslim compress` reads, checked
    assert f"accept_low_fidelity': {accept}" in str(recipe.to_dict())
