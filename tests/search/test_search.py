"""The policy search on a tiny net and tiny data with a fake deterministic latency table: the exact optimum under
the budget, resuming an interrupted study, the written recipe, and the refusals."""

import pytest
import torch

from deepslim.errors import ConfigError
from deepslim.search import search
from deepslim.search.evaluate import Evaluator
from deepslim.search.recipe import policy_recipe
from tests.search._tiny import FAST, digits, exhaustive_optimum, fake_table, small_space, trained_net

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")



def assert_found(result, expected) -> None:
    """The search found ``expected`` (the trials' exhaustive optimum) and returned what its finals chose: a feasible
    trial holds it, it is a finalist recovered once — the uniform finalist when it builds the uniform finalist's
    model (as here: a new study's uniform warm start or the grid's own policy; since session 17 that trial is left
    out of the searched finalists, :func:`deepslim.search.finals.final_round`), else a searched one — and the
    returned policy is the best-ranked finalist within budget after the finals' recovery. Not ``best ==
    expected``: the finals' recovery can rank finalists unlike the trials (``finetune_epochs=0`` re-estimates batch
    norms only for a pruned policy, a trial always does), and the uniform finalist competes there as itself."""
    from deepslim.search.finals import rank

    assert any(c.policy == expected and c.feasible for c in result.trials)
    models = [str(sorted(result.space.canonical(c.policy).params().items())) for c in result.finalists]
    assert len(models) == len(set(models))  # no model recovered twice
    assert expected in [c.policy for c in result.finalists]
    within = [c for c in result.finalists if c.feasible]
    assert result.best in within
    assert rank(result.best, result.objectives) == min(rank(c, result.objectives) for c in within)


def test_search_finds_the_exact_optimum_under_a_latency_budget(tmp_path):
    net, data = trained_net(), digits()
    space = small_space(net)
    result = search(net, data, space, ("accuracy", "latency"), "latency=0.6x", trials=space.size, strategy="grid",
                    out_dir=tmp_path, latency_table=fake_table(), **FAST)  # fmt: skip
    limit, judged, feasible, expected = exhaustive_optimum(net, data, space, 0.6)
    assert len(result.trials) == space.size == 8
    assert result.limits["latency"] == pytest.approx(limit)
    assert_found(result, expected.policy)
    assert result.best.feasible and result.best.latency_ms <= limit
    assert result.pareto[0].policy == expected.policy and result.pareto[0].accuracy == expected.accuracy
    assert len(feasible) < len(judged)  # the budget did exclude policies
    assert all(c.feasible for c in result.pareto)
    front = {(c.accuracy, c.latency_ms) for c in result.pareto}
    assert not any(a >= fa and ms <= fms and (a, ms) != (fa, fms) for a, ms in front for fa, fms in front)
    assert result.dense.policy == space.dense() and result.dense.latency_ms == pytest.approx(limit / 0.6)
    assert result.uniform is not None and result.uniform.latency_ms <= limit
    assert result.cost["trials"] == 8 and result.cost["cpu_s"] > 0 and result.cost["energy_kwh"] > 0


def test_an_interrupted_search_resumes_without_repeating_trials(tmp_path):
    net, data = trained_net(), digits()
    space = small_space(net)
    seen = []

    def interrupt_third(c):
        seen.append(c.trial)
        if len(seen) == 3:
            raise KeyboardInterrupt

    args = (net, data, space, ("accuracy", "latency"), "latency=0.8x")
    with pytest.raises(KeyboardInterrupt):
        search(*args, trials=6, strategy="random", seed=1, out_dir=tmp_path, latency_table=fake_table(),
               on_trial=interrupt_third, **FAST)  # fmt: skip
    study = optuna.load_study(study_name="deepslim-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))  # fmt: skip
    first = {t.number: t.params for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert len(first) == 2 and not (tmp_path / "recipe.yaml").exists()
    resumed = []
    result = search(*args, trials=6, strategy="random", seed=1, out_dir=tmp_path, latency_table=fake_table(),
                    on_trial=lambda c: resumed.append(c.trial), **FAST)  # fmt: skip
    assert len(result.trials) == 6 and len(resumed) == 4  # the 2 finished trials were not run again
    assert {c.trial: c.policy.params() for c in result.trials if c.trial in first} == first
    assert not set(resumed) & set(first)
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == [seen[2]] and interrupted[0].state.name == "FAIL"


def test_the_written_recipe_reruns_to_the_same_model(tmp_path):
    from deepslim.pipeline import load_recipe, run_recipe

    net, data = trained_net(), digits()
    space = small_space(net)
    policy = space.policy({"keep:0": 4, "keep:3": 4, "int8:3": True})
    ev = Evaluator(net, data, space, fake_table(), finetune_epochs=1, lr=2e-3, seed=3)
    searched, _ = ev.build(policy, "finetune")
    recipe = load_recipe(policy_recipe(space, policy, finetune_epochs=1, lr=2e-3, seed=3))
    rerun = run_recipe(recipe, tmp_path / "run", model=trained_net(), data=data).model
    expected = searched.state_dict()
    got = rerun.state_dict()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert rerun[0].out_channels == 4 and rerun[3].out_channels == 4


def test_an_infeasible_budget_is_refused_before_searching_and_names_the_smallest_value(tmp_path):
    net, data = trained_net(), digits()
    with pytest.raises(ConfigError, match=r"tighter than the smallest policy in this space allows \(0\.\d+ ms, "
                                          r"0\.\d\dx of dense, as the layer table predicts it: 8 of 16 channels "
                                          r"kept, 1 of 1 layers int8\)"):  # fmt: skip
        search(net, data, small_space(net), budget="latency=0.05x", trials=3, out_dir=tmp_path,
               latency_table=fake_table(), **FAST)  # fmt: skip
    assert not (tmp_path / "study.journal").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"objectives": ("accuracy", "speed")}, "unknown objective 'speed'; choose from accuracy, latency, size"),
    ({"strategy": "annealing"}, "unknown strategy 'annealing'; choose one of tpe, nsga2, random, grid"),
    ({"runtime": "tvm"}, "unknown runtime 'tvm' for latency tables; choose one of onnxruntime"),
    ({"budget": "power=3W"}, "unknown budget 'power'; choose from latency, size"),
])  # fmt: skip
def test_unknown_names_are_refused_with_the_valid_ones(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        search(trained_net(), digits(), ("prune",), trials=2, out_dir=tmp_path, **kwargs)
