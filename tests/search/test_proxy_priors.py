"""Session 8 (issue 14): the trials' fine-tune proxy (``short_finetune_``, ``proxy_steps``), group roles and the
role-structured priors a study starts from, and the distilled default recovery in the recipe."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepslim.errors import ConfigError, DataError
from deepslim.search import frame as frame_mod
from deepslim.search import recovery as recovery_mod
from deepslim.search import search
from deepslim.search.evaluate import Evaluator
from deepslim.search.recipe import policy_recipe
from deepslim.search.recovery import short_finetune_
from deepslim.search.space import SearchSpace
from tests.search._tiny import FAST, digits, fake_table, small_space, trained_net

RATIOS = (1.0, 0.75, 0.5, 0.25)


class InvertedResidual(nn.Module):
    """A stem, one MobileNetV2 block (1x1 expansion, 3x3 depthwise, 1x1 projection, residual addition) and a wide
    last 1x1 layer before the classifier (MobileNetV2's 1280 channels)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.last = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.last(x + self.project(self.dw(self.expand(x)))))


def ir_space(net: nn.Module) -> SearchSpace:
    return SearchSpace.from_model(net, digits().example_input, kinds=("prune",), keep_ratios=RATIOS, round_to=2)


def test_group_roles_tell_expansion_from_residual_channels_and_by_role_prunes_each_at_its_ratio():
    space = ir_space(InvertedResidual().eval())
    roles = {g.name: g.role for g in space.groups}
    assert roles == {"stem.0": "residual", "expand.0": "depthwise", "last.0": "plain"}
    policy = space.by_role({"depthwise": 0.25})
    assert policy.keep == {"stem.0": 8, "expand.0": 4, "last.0": 16}  # only the expansion pruned, to a quarter
    assert space.by_role({"depthwise": 0.5, "residual": 0.5, "plain": 0.5}) == space.uniform(0.5)
    with pytest.raises(ConfigError, match="unknown group role 'hidden'; choose from depthwise, residual, plain"):
        space.by_role({"hidden": 0.5})
    with pytest.raises(ConfigError, match=r"keep ratios must be in \(0, 1\]"):
        space.by_role({"depthwise": 0.0})


def test_structured_priors_are_the_widest_expansion_that_meets_the_budget_found_by_bisection():
    net, data = InvertedResidual().eval(), digits()
    space = ir_space(net)
    ev = Evaluator(net, data, space, fake_table())
    member = space.by_role({"depthwise": 0.5, "plain": 0.5})
    limit = ev.build(member, "none")[1]  # the budget falls exactly on the 0.5 member
    calls = []
    build = ev.build
    ev.build = lambda p, r=None: (calls.append(p), build(p, r))[1]  # type: ignore[method-assign]
    priors = frame_mod.structured_priors(ev, {"latency": limit}, RATIOS)
    # the oracle: for each wide ratio and role kept at it, scan the others' ratios from the widest: first that fits
    expected, bound = [], 0
    for outer in frame_mod.PRIOR_OUTER:
        for kept in ("residual", "depthwise", "plain"):
            below = sorted((r for r in RATIOS if r < outer), reverse=True)
            bound += math.ceil(math.log2(len(below) + 1))
            for inner in below:
                p = space.by_role({role: outer if role == kept else inner for role in ("residual", "depthwise",
                                                                                       "plain")})  # fmt: skip
                if build(p, "none")[1] <= limit:
                    expected += [p] if p not in expected else []
                    break
    assert list(priors) == expected and priors[0] == member and len(priors) >= 2
    assert priors[0].keep["expand.0"] < 16 and priors[0].keep["stem.0"] == 8  # not a uniform policy
    assert len(calls) <= bound < sum(len([r for r in RATIOS if r < o]) for o in frame_mod.PRIOR_OUTER) * 3
    assert frame_mod.structured_priors(ev, {}, RATIOS) == ()  # no latency budget: nothing to aim at
    plain = Evaluator(trained_net(), data, small_space(trained_net()), fake_table())
    assert frame_mod.structured_priors(plain, {"latency": 1e9}, RATIOS) == ()  # a single role: nothing to structure


@pytest.mark.parametrize("priors", [True, False])
def test_a_new_study_tries_the_hidden_heavy_prior_right_after_the_best_uniform_policy(tmp_path, priors):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    net, data = InvertedResidual().eval(), digits()
    space = ir_space(net)
    ev = Evaluator(net, data, space, fake_table())
    prior = space.by_role({"depthwise": 0.5, "plain": 0.5})
    ratio = ev.build(prior, "none")[1] / ev.build(space.dense(), "none")[1] * (1 + 1e-6)  # just within: it fits
    result = search(net, data, space, ("accuracy", "latency"), f"latency={ratio:.6f}x", trials=4, strategy="random",
                    seed=3, out_dir=tmp_path, latency_table=fake_table(), priors=priors, **FAST)  # fmt: skip
    by_number = {c.trial: c.policy for c in result.trials}
    assert (by_number[1] == prior) is priors  # trial 0: the best uniform policy within budget


def _counting(net: nn.Module) -> list[int]:
    calls: list[int] = []
    net.register_forward_hook(lambda m, i, o: calls.append(int(m.training)))
    return calls


def test_short_finetune_takes_exactly_the_steps_asked_cycling_through_the_batches():
    net, data = trained_net(), digits()
    calls = _counting(net)
    batches = len(data.train)
    assert short_finetune_(net, data, steps=batches + 3, seed=0) == batches + 3
    assert sum(calls) == batches + 3  # training-mode forwards: one per step (re-estimation runs in eval mode)
    before = copy.deepcopy(net.state_dict())
    assert short_finetune_(net, data, steps=0) == 0
    trained = [k for k in net.state_dict() if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], net.state_dict()[k]) for k in trained)
    with pytest.raises(ConfigError, match="steps must be an integer >= 0, got -1"):
        short_finetune_(net, data, steps=-1)


def test_short_finetune_refuses_an_empty_training_loader_and_leaves_the_teachers_mode_alone():
    net, data = trained_net(), digits()
    xs, ys = next(iter(DataLoader(data.train.dataset, batch_size=8)))
    empty = SimpleNamespace(train=DataLoader(TensorDataset(xs, ys), batch_size=16, drop_last=True), calib=data.calib,
                            task=data.task)  # fmt: skip
    with pytest.raises(DataError, match="yielded no batches after 0 of 3 proxy steps"):
        short_finetune_(net, empty, steps=3)  # looped forever before
    teacher = trained_net().train()
    short_finetune_(net, data, steps=2, teacher=teacher)
    assert teacher.training and all(m.training for m in teacher.modules())  # the caller's dense model, as it was


def test_a_group_role_counts_producers_not_names_that_start_with_out():
    from deepslim.search.space import GroupChoice

    plain = GroupChoice("outer.0", 8, (4, 8), "outer.0 out ⇒ outer.1 ⇒ output.0 in (8 channels)")
    tied = GroupChoice("a.0", 8, (4, 8), "a.0 out ⇒ b.0 out ⇒ output.0 in (8 channels)")
    dw = GroupChoice("e.0", 8, (4, 8), "e.0 out ⇒ dw.0 (depthwise) ⇒ outlet.0 in (8 channels)")
    assert (plain.role, tied.role, dw.role) == ("plain", "residual", "depthwise")


def test_distilling_with_alpha_one_follows_the_teacher_alone_whatever_the_labels():
    data = digits()
    xs, ys = next(iter(DataLoader(data.train.dataset, batch_size=256)))
    wrong = (ys + 1) % 10

    def bundle(labels):
        return SimpleNamespace(train=DataLoader(TensorDataset(xs, labels), batch_size=32), calib=data.calib,
                               task=data.task)  # fmt: skip

    def trained(labels, teacher):
        net = trained_net()
        short_finetune_(net, bundle(labels), steps=5, lr=1e-2, seed=0, teacher=teacher, alpha=1.0)
        return net.state_dict()

    teacher = trained_net()
    a, b = trained(ys, teacher), trained(wrong, teacher)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, d = trained(ys, None), trained(wrong, None)  # on the labels alone, they do matter
    assert not all(torch.equal(c[k], d[k]) for k in c)


def test_trials_are_judged_after_the_proxy_steps_distilled_from_the_dense_model(monkeypatch):
    net, data = trained_net(), digits()
    space = small_space(net)
    seen = []
    real = recovery_mod.short_finetune_
    monkeypatch.setattr(recovery_mod, "short_finetune_", lambda m, d, **kw: (seen.append(kw), real(m, d, **kw))[1])
    ev = Evaluator(net, data, space, fake_table(), proxy_steps=4, lr=2e-3, temperature=2.0)
    assert ev.trial_recovery == "steps"
    policy = space.uniform(0.5)
    proxied, _ = ev.build(policy)
    assert len(seen) == 1 and seen[0]["steps"] == 4 and seen[0]["temperature"] == 2.0
    assert seen[0]["lr"] == 2e-3
    inputs, _, ref = seen[0]["batches"][0]  # distilled from the dense model: its outputs, computed once per search
    with torch.no_grad():
        assert torch.allclose(ref, net.eval()(inputs))
    ev.build(space.uniform(0.75))
    assert seen[1]["batches"] is seen[0]["batches"]  # the next trial trains on the same batches, teacher not re-run
    bn_only, _ = ev.build(policy, "bn")
    assert not torch.equal(proxied[0].weight, bn_only[0].weight)  # the proxy trained; re-estimation does not
    assert Evaluator(net, data, space, fake_table()).trial_recovery == "bn"
    with pytest.raises(ConfigError, match="proxy_steps must be an integer >= 0"):
        Evaluator(net, data, space, fake_table(), proxy_steps=-5)


def test_the_recipe_distills_from_the_dense_model_when_the_search_recovery_does():
    space = small_space(trained_net())
    doc = policy_recipe(space, space.uniform(0.5), finetune_epochs=2, lr=1e-3, temperature=4.0)
    prune, distill = doc["stages"][0]["prune"], doc["stages"][1]["distill"]
    assert prune["epochs"] == 0 and distill == {"epochs": 2, "teacher": "trained", "lr": 1e-3, "temperature": 4.0}
    plain = policy_recipe(space, space.uniform(0.5), finetune_epochs=2)
    assert plain["stages"][0]["prune"]["epochs"] == 2 and len(plain["stages"]) == 1


def test_the_cli_passes_the_proxy_steps_and_the_distillation_temperature_to_the_search(capsys, tmp_path, monkeypatch):
    import sys

    from deepslim.cli import main

    search_mod = sys.modules["deepslim.search"]  # the package (deepslim.search is also the function's name)

    seen = {}

    def fake_search(*args, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(search_mod, "search", fake_search)
    code = main(["search", "lenet5", "--data", "digits", "--out", str(tmp_path / "s"), "--proxy-steps", "7",
                 "--temperature", "2.5", "--trials", "1"])  # fmt: skip
    assert code == 2 and "stopped by the test" in capsys.readouterr().err
    assert seen["proxy_steps"] == 7 and seen["temperature"] == 2.5
