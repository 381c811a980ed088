"""Masks checked element by element against a NumPy oracle: which weights were kept, on signed weights, with
non-default N:M patterns, per-layer overrides, and the edge cases of the threshold (k = 0 and k = 1)."""

import numpy as np
import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune.masks import current_mask, magnitude_masks, nm_masks, prunable_layers, sparsity


def _signed_weights(*shape: int, seed: int = 0) -> torch.Tensor:
    """Distinct magnitudes in shuffled order with random signs, so ties and the sign never decide."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    mags = rng.permutation(np.arange(1, n + 1)) / n
    return torch.tensor(mags * rng.choice([-1.0, 1.0], n), dtype=torch.float32).view(shape)


def _two_linears() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight.copy_(_signed_weights(6, 8, seed=1))
        model[2].weight.copy_(_signed_weights(4, 6, seed=2) * 3)  # larger: a global threshold spares it
    return model


def _keep_largest(w: np.ndarray, k: int) -> np.ndarray:
    """Oracle: zero the k smallest |w|."""
    keep = np.ones(w.size, dtype=bool)
    keep[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = False
    return keep.reshape(w.shape)


@pytest.mark.parametrize("sparsity_", [0.5, 0.75, 0.03])  # 0.03 of 48 weights rounds to one weight (k = 1)
def test_layer_scope_keeps_exactly_the_largest_magnitudes_of_signed_weights(sparsity_):
    model = _two_linears()
    w0, w2 = model[0].weight.detach().numpy().copy(), model[2].weight.detach().numpy().copy()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=sparsity_))
    for layer, w in ((model[0], w0), (model[2], w2)):
        expected = _keep_largest(w, round(sparsity_ * w.size))
        np.testing.assert_array_equal(current_mask(layer).mask.numpy(), expected)
        np.testing.assert_array_equal(layer.weight.detach().numpy(), np.where(expected, w, 0.0))


@pytest.mark.parametrize("sparsity_", [0.6, 1 / 72, 0.004])  # k = 43, k = 1 and k = 0 of the 72 weights
def test_global_scope_uses_one_threshold_over_all_layers(sparsity_):
    model = _two_linears()
    ws = [model[0].weight.detach().numpy().copy(), model[2].weight.detach().numpy().copy()]
    pooled = np.concatenate([np.abs(w).ravel() for w in ws])
    k = round(sparsity_ * pooled.size)
    threshold = np.sort(pooled)[k - 1] if k else -1.0
    masks = magnitude_masks(model, ds.MagnitudePruneConfig(sparsity=sparsity_, scope="global"))
    for name, w in zip(("0", "2"), ws, strict=True):
        np.testing.assert_array_equal(masks[name].numpy(), np.abs(w) > threshold)
    assert sum(int((~m).sum()) for m in masks.values()) == k
    assert all(m.dtype == torch.bool for m in masks.values())


def test_global_scope_honours_overrides_beside_the_pooled_layers():
    model = _two_linears()
    w2 = model[2].weight.detach().numpy().copy()
    masks = magnitude_masks(model, ds.MagnitudePruneConfig(sparsity=0.9, scope="global", overrides={"2": 0.25}))
    np.testing.assert_array_equal(masks["2"].numpy(), _keep_largest(w2, 6))  # its own sparsity, per layer
    assert int((~masks["0"]).sum()) == round(0.9 * 48)  # the one pooled layer takes the global target alone
    assert "0" not in magnitude_masks(model, ds.MagnitudePruneConfig(sparsity=0.5, overrides={"0": None}))


def test_pruning_again_at_zero_sparsity_keeps_the_masks():
    model = _two_linears()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    before = current_mask(model[0]).mask.clone()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.0))  # an all-true mask intersected with the old one
    assert current_mask(model[0]).mask.dtype == torch.bool and torch.equal(current_mask(model[0]).mask, before)


def _nm_oracle(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest |w| of every m consecutive inputs; w is (out, ..., in) with the inputs last."""
    groups = np.abs(w).reshape(-1, m)
    keep = np.zeros_like(groups, dtype=bool)
    top = np.argsort(-groups, axis=1, kind="stable")[:, :n]
    np.put_along_axis(keep, top, True, axis=1)
    return keep.reshape(w.shape)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8)])
def test_nm_keeps_the_largest_of_each_group_along_the_inputs(n, m):
    model = nn.Sequential(nn.Linear(16, 3), nn.Conv2d(16, 2, 3))
    with torch.no_grad():
        model[0].weight.copy_(_signed_weights(3, 16, seed=3))
        model[1].weight.copy_(_signed_weights(2, 16, 3, 3, seed=4))
    lin, conv = model[0].weight.detach().numpy().copy(), model[1].weight.detach().numpy().copy()
    masks, skipped = nm_masks(model, ds.NMPruneConfig(n=n, m=m))
    assert skipped == []
    np.testing.assert_array_equal(masks["0"].numpy(), _nm_oracle(lin, n, m))
    # convolutions group the input channels of each (out, kh, kw) position
    conv_last = np.moveaxis(conv, 1, -1)
    np.testing.assert_array_equal(np.moveaxis(masks["1"].numpy(), 1, -1), _nm_oracle(conv_last, n, m))


def test_nm_twice_is_idempotent_and_honours_overrides():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    dense = model[0].weight.detach().clone()
    config = ds.NMPruneConfig(n=2, m=4, overrides={"0": None})
    ds.prune_(model, config)
    once = {n: current_mask(model[int(n)]).mask.clone() for n in ("2", "4")}
    ds.prune_(model, config)
    assert current_mask(model[0]) is None and torch.equal(model[0].weight, dense)  # skipped, untouched
    for name, mask in once.items():  # the layers after the skipped one are pruned, and pruning again changes nothing
        assert current_mask(model[int(name)]).mask.dtype == torch.bool
        assert torch.equal(current_mask(model[int(name)]).mask, mask) and int(mask.sum()) == mask.numel() // 2


def test_nm_names_the_layers_it_skips_with_their_input_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 5), nn.Conv2d(8, 4, 1))
    masks, skipped = nm_masks(model, ds.NMPruneConfig())
    assert skipped == ["0 (3 inputs not divisible by 4)"] and set(masks) == {"1"}


def test_mask_configs_refuse_out_of_range_values():
    for bad in (1.0, -0.1):
        with pytest.raises(ds.ConfigError, match="sparsity must be in"):
            ds.MagnitudePruneConfig(sparsity=bad)
    with pytest.raises(ds.ConfigError, match="override 'fc1' must be in"):
        ds.MagnitudePruneConfig(sparsity=0.5, overrides={"fc1": 1.5})
    with pytest.raises(ds.ConfigError, match="0 < n < m"):
        ds.NMPruneConfig(n=0, m=4)
    with pytest.raises(ds.ConfigError, match="NMPruneConfig overrides may only map layers to None"):
        ds.NMPruneConfig(overrides={"fc1": 0.5})
    assert ds.NMPruneConfig(n=1, m=4).n == 1 and ds.MagnitudePruneConfig(sparsity=0.0).sparsity == 0.0


def test_sparsity_reports_each_layers_zero_fraction():
    model = _two_linears()
    with torch.no_grad():
        model[0].weight[:3] = 0.0  # 3 of 6 rows: exactly half
    assert sparsity(model) == {"0": 0.5, "2": 0.0}
    assert list(prunable_layers(model)) == ["0", "2"]



def test_a_float_mask_is_stored_as_booleans_and_masks_double_weights_exactly():
    from deepslim.compress.prune.masks import set_mask_

    layer = nn.Linear(4, 2).double()
    w = layer.weight.detach().clone()
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    set_mask_(layer, keep)
    assert current_mask(layer).mask.dtype == torch.bool
    assert layer.weight.dtype == torch.float64 and torch.equal(layer.weight, torch.where(keep.bool(), w, 0.0))


def test_a_second_float_mask_is_intersected_like_the_first():
    from deepslim.compress.prune.masks import set_mask_

    layer = nn.Linear(4, 2)
    set_mask_(layer, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]))
    set_mask_(layer, torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]))
    assert current_mask(layer).mask.tolist() == [[False, False, True, False], [False, True, True, False]]


def test_a_second_mask_tightens_the_first_instead_of_stacking():
    from deepslim.compress.prune.masks import set_mask_

    layer = nn.Linear(4, 2)
    set_mask_(layer, torch.tensor([[True, False, True, False], [False, True, True, True]]))
    set_mask_(layer, torch.tensor([[False, True, True, True], [True, True, True, False]]))
    assert len(layer.parametrizations.weight) == 1
    assert current_mask(layer).mask.tolist() == [[False, False, True, False], [False, True, True, False]]


def test_a_layer_parametrized_elsewhere_has_no_weight_mask():
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    layer = nn.Linear(4, 2)
    torch.nn.utils.parametrize.register_parametrization(layer, "bias", Double())
    assert current_mask(layer) is None
    ds.prune_(nn.Sequential(layer), ds.MagnitudePruneConfig(sparsity=0.5))
    assert int(current_mask(layer).mask.sum()) == 4


def test_every_unmatched_override_is_named():
    with pytest.raises(ds.ConfigError, match="no prunable layer matches 'fc9', 'fc8'; prunable: 0, 2"):
        ds.prune_(_two_linears(), ds.MagnitudePruneConfig(sparsity=0.5, overrides={"fc9": 0.1, "fc8": None}))


def test_a_weight_tied_to_an_embedding_is_left_unpruned_and_named(caplog):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(10, 4))
    model[1].weight = model[0].weight  # an LM head sharing the embedding table: two holders of one tensor
    with caplog.at_level("WARNING"):
        assert list(prunable_layers(model)) == ["2"]
    assert "left unpruned (weight tied with another module): 1" in caplog.text
