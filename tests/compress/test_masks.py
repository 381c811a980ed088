"""Unstructured and N:M masks, schedules, and low-rank factorization."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import iterative_sparsities, polynomial_sparsity, sparsity


def _zeros(m):
    return (m.weight == 0).sum().item()


def test_layer_scope_is_exact_per_layer():
    model = ds.create_model("lenet300", in_features=64)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.8, overrides={"fc3": None}))
    assert _zeros(model.fc1) == round(0.8 * 64 * 300) and _zeros(model.fc2) == round(0.8 * 300 * 100)
    assert _zeros(model.fc3) == 0
    kept = model.fc1.weight.abs()[model.fc1.weight != 0].min()
    original = model.fc1.parametrizations.weight.original.detach().abs()
    assert (original[model.fc1.weight == 0] <= kept).all()  # the smallest magnitudes went


def test_global_scope_hits_the_overall_target():
    model = ds.create_model("lenet300", in_features=64)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9, scope="global"))
    total = sum(m.weight.numel() for m in (model.fc1, model.fc2, model.fc3))
    zeros = sum(_zeros(m) for m in (model.fc1, model.fc2, model.fc3))
    assert zeros == round(0.9 * total)
    assert len({round(v, 3) for v in sparsity(model).values()}) > 1  # layers differ under one threshold


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masks_survive_optimizer_steps(opt):
    data = ds.load_data("digits")
    model = ds.create_model("lenet300", in_features=64)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.7))
    masks = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    ds.fit(model, data, epochs=2, optimizer=opt, lr=1e-2, weight_decay=1e-3)
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert (m.weight[masks[n]] == 0).all()
    ds.bake_masks_(model)
    assert all(not hasattr(m, "parametrizations") for m in model.modules())
    assert all(abs(v - 0.7) < 1e-3 for v in sparsity(model).values())
    assert set(model.state_dict()) == set(ds.create_model("lenet300", in_features=64).state_dict())


def test_pruning_twice_only_tightens():
    model = ds.create_model("lenet300", in_features=64)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    first = model.fc1.weight == 0
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.75))
    assert (model.fc1.weight[first] == 0).all() and abs(sparsity(model)["fc1"] - 0.75) < 1e-3


def test_nm_pattern_and_skipped_layers(caplog):
    model = ds.create_model("resnet20")
    with caplog.at_level("WARNING"):
        ds.prune_(model, ds.NMPruneConfig(n=2, m=4))
    w = model.layer1[0].conv1.weight.movedim(1, -1).reshape(-1, 4)  # groups of 4 along input channels
    assert ((w != 0).sum(1) == 2).all()
    assert "conv1 (3 inputs not divisible by 4)" in caplog.text  # listed, not silently skipped
    assert not hasattr(model.conv1, "parametrizations")


def test_profile_counts_nonzeros_of_masked_layers():
    model = ds.create_model("lenet300", in_features=64)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    prof = ds.profile(model)
    weights = 64 * 300 + 300 * 100 + 100 * 10
    assert prof.params == weights + 410 and prof.nonzero_params == weights // 2 + 410
    assert prof.layer("fc1").type == "ParametrizedLinear" and prof.macs == weights


def test_schedules():
    assert polynomial_sparsity(0, final=0.9, end=100) == 0.0
    assert polynomial_sparsity(50, final=0.9, end=100) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert polynomial_sparsity(100, final=0.9, end=100) == polynomial_sparsity(150, final=0.9, end=100) == 0.9
    steps = iterative_sparsities(0.9, 3)
    assert steps[-1] == pytest.approx(0.9) and steps[0] == pytest.approx(1 - 0.1 ** (1 / 3))
    data = ds.load_data("digits")
    model = ds.create_model("lenet300", in_features=64)
    pruner = ds.GradualPruner(ds.MagnitudePruneConfig(sparsity=0.8), end=2 * len(data.train), every=5)
    ds.fit(model, data, epochs=3, hooks=[pruner])
    assert all(abs(v - 0.8) < 1e-3 for v in sparsity(model).values())


def test_mask_config_errors():
    with pytest.raises(ds.ConfigError, match="sparsity must be in"):
        ds.MagnitudePruneConfig(sparsity=1.5)
    with pytest.raises(ds.ConfigError, match="scope must be"):
        ds.MagnitudePruneConfig(sparsity=0.5, scope="everything")
    with pytest.raises(ds.ConfigError, match="0 < n < m"):
        ds.NMPruneConfig(n=4, m=4)
    with pytest.raises(ds.ConfigError, match="no prunable layer matches 'fc9'"):
        ds.prune_(ds.create_model("lenet300"), ds.MagnitudePruneConfig(sparsity=0.5, overrides={"fc9": 0.1}))
    with pytest.raises(ds.ConfigError, match="prune_ takes one of"):
        ds.prune_(ds.create_model("lenet300"), ds.SVDConfig(rank_ratio=0.5))


def test_svd_matches_torch_linalg_svd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30))
    w = model[0].weight.detach().clone()
    s = torch.linalg.svdvals(w)
    result = ds.factorize_(model, ds.SVDConfig(rank_ratio=0.25))  # rank 8 of 30: 8 x 70 < 1200 parameters
    first, second = model[0][0], model[0][1]
    approx = (second.weight @ first.weight).detach()
    # Eckart–Young: the truncated SVD's error is exactly the energy of the discarded singular values
    assert torch.linalg.matrix_norm(w - approx).item() == pytest.approx(s[8:].pow(2).sum().sqrt().item(), rel=1e-4)
    assert result.layers[0].ranks == (8,) and result.params_saved == (1200 + 30) - (8 * 40 + 30 * 8 + 30)


def test_energy_rank_and_mac_budget():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(50, 50))
    v, _ = torch.linalg.qr(torch.randn(40, 40))
    s = torch.tensor([10.0, 5.0, 1.0] + [0.01] * 37)
    layer = nn.Linear(40, 50)
    with torch.no_grad():
        layer.weight.copy_(u[:, :40] @ torch.diag(s) @ v.T)
    model = nn.Sequential(layer)
    assert ds.factorize_(model, ds.SVDConfig(energy=0.99)).layers[0].ranks == (2,)  # 125/126.0 of the energy
    model = nn.Sequential(nn.Linear(100, 100))
    result = ds.factorize_(model, ds.SVDConfig(mac_ratio=0.3))
    assert result.layers[0].macs_after <= 0.3 * 100 * 100 < result.layers[0].macs_after + 200


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny"])  # resnet18's Tucker took minutes on a loaded machine
def test_reported_savings_equal_the_profilers(name):
    model, x = ds.create_model(name), ds.example_input(name)
    before = ds.profile(model, x)
    config = ds.TuckerConfig(mac_ratio=0.5) if name == "resnet20" else ds.SVDConfig(rank_ratio=0.25)
    result = ds.factorize_(model, config, example_input=x)
    after = ds.profile(model, x)
    assert result.macs_saved == before.macs - after.macs > 0
    assert result.params_saved == before.params - after.params


def test_tucker_full_rank_is_exact():
    conv = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1))
    x = torch.randn(1, 6, 9, 9)
    expected = conv(x)
    result = ds.factorize_(conv, ds.TuckerConfig(rank_ratio=1.0))
    assert result.layers == () and "would not save" in result.skipped[0]  # full rank saves nothing: kept
    ds.factorize_(conv, ds.TuckerConfig(rank_ratio=0.5))
    assert conv[0][1].weight.shape == (4, 3, 3, 3) and conv[0](x).shape == expected.shape


def test_factorize_errors():
    with pytest.raises(ds.ConfigError, match="exactly one of"):
        ds.SVDConfig(rank_ratio=0.5, energy=0.9)
    with pytest.raises(ds.ConfigError, match="in \\(0, 1\\]"):
        ds.SVDConfig(energy=0.0)
    with pytest.raises(ds.ConfigError, match="no Linear layer matches"):
        ds.factorize_(ds.create_model("lenet300"), ds.SVDConfig(rank_ratio=0.5, overrides={"conv": None}))


def test_sensitivity_table():
    data = ds.load_data("digits")
    model = ds.create_model("lenet300", in_features=64)
    ds.fit(model, data, epochs=5, lr=2e-3)
    table = ds.sensitivity(model, data, ds.MagnitudePruneConfig(sparsity=0.5), levels=(0.0, 0.99))
    assert table.layers() == ["fc1", "fc2", "fc3"]
    assert all(table.drop(layer, 0.0) == 0.0 for layer in table.layers())
    assert table.drop("fc3", 0.99) > 0.1  # the 10-way classifier cannot lose 99% of its weights
    assert sum(p.numel() for p in model.parameters()) == 50_610 and "fc1" in str(table)
    channel = ds.sensitivity(model, data, ds.ChannelPruneConfig(ratio=0.5), levels=(0.5,))
    assert channel.layers() == ["fc1", "fc2"]
    with pytest.raises(ds.ConfigError, match="cannot be compressed"):
        ds.sensitivity(model, data, ds.ChannelPruneConfig(ratio=0.5), layers=["fc3"])
