"""Layer kinds: masks and factorization see subclasses, Hugging Face's Conv1D (weight stored (in, out)), registered
user layers and parametrized weights, hit their targets on each of them, and leave tied weights alone by name."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import sparsity
from deepslim.models.adapters import LayerKind, layer_kind, register_layer_kind, unregister_layer_kind
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


class MyConv(nn.Conv2d):
    pass


class Dense(nn.Module):
    """A user layer storing its weight (in, out)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return x @ self.weight


def test_subclasses_inherit_their_base_kind_and_unknown_layers_have_none():
    assert layer_kind(MyConv(3, 4, 3)).name == "conv2d" and layer_kind(nn.Conv1d(3, 4, 3)).name == "conv1d"
    assert layer_kind(nn.LayerNorm(4)).out_attr == "normalized_shape" and layer_kind(nn.GRU(2, 2)) is None
    assert layer_kind(Dense(2, 3)) is None


@needs_hf
def test_gpt2_magnitude_pruning_reaches_the_target_on_every_conv1d_and_skips_the_tied_head(caplog):
    model, x = hf.build("gpt2")
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    got = sparsity(model)
    conv1d = [n for n, m in model.named_modules() if any(c.__name__ == "Conv1D" for c in type(m).__mro__)]
    assert len(conv1d) == 8 and all(abs(got[n] - 0.5) < 1e-3 for n in conv1d)
    assert "model.lm_head" not in got and "model.lm_head" in caplog.text  # tied with the embedding: named, unmasked
    assert model(*x).shape == (2, 12, 100)


@needs_hf
def test_gpt2_nm_sparsity_runs_along_the_conv1d_input_dimension():
    model, _ = hf.build("gpt2")
    ds.prune_(model, ds.NMPruneConfig(n=2, m=4))
    w = model.model.transformer.h[0].mlp.c_fc.weight  # (in 32, out 128)
    kept_per_block = (w.T != 0).reshape(128, 8, 4).sum(-1)  # 4 consecutive inputs of each output
    assert torch.equal(kept_per_block, torch.full((128, 8), 2))


def test_registered_user_layer_is_masked_along_its_own_input_dimension():
    register_layer_kind(Dense, LayerKind(name="dense", out_dim=1, in_dim=0, per_channel=()))
    try:
        model = nn.Sequential(Dense(8, 8), nn.ReLU(), MyConv(8, 4, 1))
        ds.prune_(model, ds.NMPruneConfig(n=1, m=4))
        assert torch.equal((model[0].weight.T != 0).reshape(8, 2, 4).sum(-1), torch.ones(8, 2, dtype=torch.long))
        assert sparsity(model) == pytest.approx({"0": 0.75, "2": 0.75})  # the Conv2d subclass is pruned too
    finally:
        unregister_layer_kind(Dense)


def test_weight_norm_layer_is_masked_after_its_weight_is_computed_and_bakes_to_plain_zeros():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 8, 3))
    model, x = nn.Sequential(conv, nn.ReLU()), torch.randn(2, 4, 6, 6)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    assert sparsity(model)["0"] == pytest.approx(0.5)
    masked = model(x)
    ds.bake_masks_(model)
    assert isinstance(model[0].weight, nn.Parameter) and float((model[0].weight == 0).float().mean()) == 0.5
    torch.testing.assert_close(model(x), masked)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Embedding(64, 16), nn.Linear(16, 16), nn.Linear(16, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.embed(ids))))


def test_svd_leaves_a_tied_head_tied_and_names_it():
    model = TiedLM()
    params = sum(p.numel() for p in model.parameters())
    result = ds.factorize_(model, ds.SVDConfig(rank_ratio=0.25))
    assert model.head.weight is model.embed.weight and isinstance(model.head, nn.Linear)
    assert any(s.startswith("head: weight tied with embed") for s in result.skipped)
    assert sum(p.numel() for p in model.parameters()) == params - result.params_saved  # mix: 272 -> 132 (rank 4)
    assert [lay.name for lay in result.layers] == ["mix"]


@needs_hf
def test_svd_of_gpt2_conv1d_matches_the_truncated_svd_of_its_transposed_weight():
    model, x = hf.build("gpt2")
    layer = model.model.transformer.h[0].mlp.c_fc
    w, b = layer.weight.detach().T, layer.bias.detach()  # (out 128, in 32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    expected = (u[:, :8] * s[:8]) @ vh[:8]
    result = ds.factorize_(model, ds.SVDConfig(rank_ratio=0.25))
    new = model.model.transformer.h[0].mlp.c_fc
    h = torch.randn(5, 32)
    torch.testing.assert_close(new(h), h @ expected.T + b, rtol=1e-4, atol=1e-5)
    assert "model.transformer.h.0.mlp.c_fc" in [lay.name for lay in result.layers]
    assert model(*x).shape == (2, 12, 100) and model.model.lm_head.weight is model.model.transformer.wte.weight
