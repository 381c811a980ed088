"""search() with an energy budget on a named device, and finalists recovered as the recipe recovers them when no
epoch is fine-tuned (batch-norm re-estimation): the exact optimum under the budget, the refusals."""


import pytest

from deepslim.errors import ConfigError
from deepslim.search import search
from deepslim.search.evaluate import Evaluator
from tests.search._tiny import FAST, digits, fake_table, small_space, tiny_net, trained_net

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")



def test_an_energy_budget_on_a_named_device_finds_the_exact_optimum_and_bn_recovers_the_finalist(tmp_path):
    net, data = trained_net(), digits()
    space = small_space(net)
    result = search(net, data, space, ("accuracy", "energy"), "energy=0.12x", trials=space.size, strategy="grid",
                    out_dir=tmp_path, latency_table=fake_table(), device="rpi4", **FAST)  # fmt: skip
    # the oracle: every policy judged alike on the same device, the most accurate within budget
    ev = Evaluator(net, data, space, fake_table(), device="rpi4")
    limit = 0.12 * ev.evaluate(space.dense(), recovery="none").value("energy")
    judged = [ev.evaluate(p) for p in space.all_policies()]
    feasible = [c for c in judged if c.value("energy") <= limit]
    expected = min(feasible, key=lambda c: (-c.accuracy, c.value("energy")))
    assert 0 < len(feasible) < len(judged)
    assert result.limits["energy"] == pytest.approx(limit) and result.study["device"] == "rpi4"
    assert result.best.policy == expected.policy and result.best.feasible
    assert result.best.measurement.device == "rpi4" and result.best.value("energy") <= limit
    # zero fine-tuning epochs: the finalist's batch norms are re-estimated (as the recipe's recalibrate stage
    # does), so it keeps the accuracy its trial was judged with instead of the pruned model's stale statistics
    assert space.configs(result.best.policy)[0] is not None
    assert result.best.recovery == "finetune" and result.best.accuracy == expected.accuracy
    stale = ev.evaluate(result.best.policy, recovery="none").accuracy
    assert stale != expected.accuracy


def test_an_infeasible_energy_budget_and_an_unknown_device_are_refused_before_searching(tmp_path):
    net, data = trained_net(), digits()
    with pytest.raises(ConfigError, match=r"the energy budget [0-9.e-]+ µJ is tighter than the smallest policy in "
                                          r"this space allows"):  # fmt: skip
        search(net, data, small_space(net), budget="energy=0.01x", trials=2, out_dir=tmp_path, device="rpi4",
               latency_table=fake_table(), **FAST)  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown device 'pi9'; known devices: .*rpi4"):
        search(tiny_net(), data, ("prune",), budget="energy=0.5x", trials=2, out_dir=tmp_path, device="pi9")
    assert not (tmp_path / "study.journal").exists()
