"""Pruning schedules with non-default arguments (start > 0, initial > 0, uneven epochs), checked against the formulas
of Zhu & Gupta and Han et al. written out here, and against which weights a hook actually pruned at each step."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune.masks import current_mask
from deepslim.compress.prune.schedule import (
    GradualPruner,
    gradual_prune_,
    iterative_prune_,
    iterative_sparsities,
    map_sparsity,
    polynomial_sparsity,
)


def _zhu_gupta(t, *, final, initial, start, end):
    if t <= start:
        return initial
    if t >= end:
        return final
    return final + (initial - final) * (1 - (t - start) / (end - start)) ** 3


@pytest.mark.parametrize("t", [0, 10, 11, 15, 24, 25, 40])
def test_polynomial_sparsity_with_a_late_start_and_a_nonzero_initial(t):
    got = polynomial_sparsity(t, final=0.8, initial=0.2, start=10, end=25)
    assert got == pytest.approx(_zhu_gupta(t, final=0.8, initial=0.2, start=10, end=25), abs=1e-12)
    assert polynomial_sparsity(15, final=0.8, initial=0.2, start=10, end=25) == pytest.approx(0.8 - 0.6 * (2 / 3) ** 3)


def test_iterative_sparsities_remove_the_same_fraction_of_survivors_each_round():
    steps = iterative_sparsities(0.875, 3)
    assert steps == pytest.approx([0.5, 0.75, 0.875])  # keep 1/2 of the survivors per round: (1/2)^3 = 1/8 left
    assert iterative_sparsities(0.6, 1) == pytest.approx([0.6])
    with pytest.raises(ds.ConfigError, match="rounds must be >= 1, got 0"):
        iterative_sparsities(0.5, 0)


def test_map_sparsity_moves_the_default_and_every_override_towards_its_own_target_but_keeps_skips():
    config = ds.MagnitudePruneConfig(sparsity=0.8, overrides={"a": 0.4, "b": None, "c": 0.0})
    mapped = map_sparsity(config, lambda final: final * final + 0.01)
    assert mapped.sparsity == pytest.approx(0.65)
    assert mapped.overrides == (("a", pytest.approx(0.17)), ("b", None), ("c", pytest.approx(0.01)))
    assert mapped.scope is config.scope


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))  # 100 weights per layer


def _zeros(model):
    return int((model[0].weight == 0).sum())


def test_gradual_pruner_with_a_late_start_prunes_on_its_grid_only():
    model = _model()
    pruner = GradualPruner(ds.MagnitudePruneConfig(sparsity=0.5), start=4, end=10, every=3, initial=0.1)
    seen = []
    for _ in range(12):
        pruner.after_step(model)
        seen.append(_zeros(model))
    # masks change at steps 4 and 7 (on the grid from start) and at 10 (end); nothing before start
    expected = {4: 0.1, 7: _zhu_gupta(7, final=0.5, initial=0.1, start=4, end=10), 10: 0.5}
    last = 0
    for step, zeros in enumerate(seen, start=1):
        if step in expected:
            last = round(expected[step] * 100)
        assert zeros == last, (step, seen)
    assert pruner.current() == 0.5 and pruner.step == 12


def test_gradual_pruner_masks_only_grow():
    model = _model()
    pruner = GradualPruner(ds.MagnitudePruneConfig(sparsity=0.6), end=6, every=1)
    previous = torch.zeros(10, 10, dtype=torch.bool)
    for _ in range(6):
        pruner.after_step(model)
        with torch.no_grad():
            model[0].parametrizations.weight.original.add_(torch.randn(10, 10))  # training moves the weights
        pruned = ~current_mask(model[0]).mask
        assert (pruned >= previous).all()  # a pruned weight stays pruned
        previous = pruned
    assert int(previous.sum()) == 60


@pytest.mark.parametrize(("start", "end", "every"), [(-1, 5, 1), (5, 5, 1), (0, 5, 0)])
def test_gradual_pruner_refuses_bad_steps(start, end, every):
    with pytest.raises(ds.ConfigError, match="0 <= start < end and every >= 1"):
        GradualPruner(ds.MagnitudePruneConfig(sparsity=0.5), start=start, end=end, every=every)


def test_gradual_prune_spreads_the_schedule_over_three_quarters_of_the_steps():
    model = _model()
    calls = []

    def fit(epochs, hooks):
        (pruner,) = hooks
        calls.append((epochs, pruner.start, pruner.end, pruner.every))
        for _ in range(epochs * 200):
            pruner.after_step(model)

    assert gradual_prune_(model, ds.MagnitudePruneConfig(sparsity=0.7), epochs=2, steps_per_epoch=200, fit=fit) is model
    assert calls == [(2, 0, 300, 4)]  # 3/4 of 400 steps, about 100 updates
    assert _zeros(model) == 70
    with pytest.raises(ds.ConfigError, match="needs epochs > 0"):
        gradual_prune_(model, ds.MagnitudePruneConfig(sparsity=0.7), epochs=0, steps_per_epoch=10, fit=fit)


def test_iterative_prune_shares_the_epochs_out_and_prunes_before_each_round():
    model = _model()
    rounds = []

    def fit(epochs, hooks):
        rounds.append((epochs, _zeros(model), tuple(hooks)))

    config = ds.MagnitudePruneConfig(sparsity=0.875, overrides={"2": None})
    assert iterative_prune_(model, config, rounds=3, epochs=7, fit=fit) is model
    assert rounds == [(3, 50, ()), (2, 75, ()), (2, 88, ())]  # 7 epochs: 3 + 2 + 2; 0.5, 0.75, 0.875 of 100
    assert current_mask(model[2]) is None  # the override skips the layer in every round


def test_iterative_prune_at_zero_sparsity_prunes_nothing():
    model = _model()
    rounds = []
    iterative_prune_(model, ds.MagnitudePruneConfig(sparsity=0.0), rounds=2, epochs=2,
                     fit=lambda epochs, hooks: rounds.append(_zeros(model)))  # fmt: skip
    assert rounds == [0, 0]


def test_iterative_prune_reaches_an_overridden_layers_own_sparsity_when_the_default_is_zero():
    model = _model()
    iterative_prune_(model, ds.MagnitudePruneConfig(sparsity=0.0, overrides={"0": 0.5}), rounds=2, epochs=2,
                     fit=lambda epochs, hooks: None)  # fmt: skip
    assert _zeros(model) == 50


def test_the_gradual_pruner_takes_an_overridden_layer_to_its_own_sparsity_when_the_default_is_zero():
    model = _model()
    pruner = GradualPruner(ds.MagnitudePruneConfig(sparsity=0.0, overrides={"0": 0.5}), end=4, every=2)
    pruner.after_step(model)
    assert _zeros(model) == 0  # step 1 is off the grid
    pruner.after_step(model)
    assert _zeros(model) == 44  # step 2 of 4: 0.5 * (1 - (1 - 1/2)^3) = 0.4375 of 100 weights, rounded
    pruner.after_step(model), pruner.after_step(model)
    assert _zeros(model) == 50 and int((model[2].weight == 0).sum()) == 0


@pytest.mark.parametrize(("epochs", "steps_per_epoch", "end", "every"), [(1, 1, 1, 1), (1, 10, 7, 1), (1, 450, 337, 4)])
def test_gradual_prune_schedule_for_short_and_uneven_runs(epochs, steps_per_epoch, end, every):
    seen = []
    gradual_prune_(_model(), ds.MagnitudePruneConfig(sparsity=0.5), epochs=epochs, steps_per_epoch=steps_per_epoch,
                   fit=lambda e, hooks: seen.append((e, hooks[0].end, hooks[0].every)))  # fmt: skip
    assert seen == [(epochs, end, every)] and isinstance(seen[0][2], int)
    with pytest.raises(ds.ConfigError, match="^a gradual schedule prunes while it trains: it needs epochs > 0$"):
        gradual_prune_(_model(), ds.MagnitudePruneConfig(sparsity=0.5), epochs=0, steps_per_epoch=1, fit=None)
