"""Channel pruning on Hugging Face models built from configs: each is pruned (fewer parameters, and removing channels
whose outgoing weights were zeroed changes nothing) or refused by name — never a model that crashes."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import channel
from deepslim.models.adapters import LayerKind, layer_kind, register_layer_kind, unregister_layer_kind
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


def _zero_removed_(model: nn.Module, graph, keep) -> None:
    """Zero the input columns that read the channels the plan removes: removing them must then change nothing."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, layout in graph.consumers:
            idx = channel._indices(layout, graph, keep)
            if idx is not None:
                m, dim = modules[name], layer_kind(modules[name]).in_dim
                gone = torch.ones(m.weight.shape[dim], dtype=torch.bool)
                gone[idx] = False
                m.weight.index_fill_(dim, gone.nonzero().flatten(), 0.0)


# (model, layers to keep whole for the exact oracle: a layer norm's statistics depend on how many channels it sees)
ORACLE = {"resnet": (), "regnet": (), "vit": (), "bert": ("re:.*word_embeddings",), "gpt2": (), "llama": (),
          "wav2vec2": ("re:.*conv_layers.2.conv",)}  # fmt: skip


@needs_hf
@pytest.mark.parametrize("name", sorted(ORACLE))
def test_hf_model_is_pruned_and_removing_dead_channels_changes_nothing(name):
    model, x = hf.build(name)
    (graph, keep), plan = channel._plan(model, ds.ChannelPruneConfig(ratio=0.3, ignore=ORACLE[name]), x, None)
    assert plan.capture == "torch.export"  # none of these traces with torch.fx
    assert sum(g.keep < g.width for g in plan.groups) >= 1
    _zero_removed_(model, graph, keep)
    before, params = model(*x), sum(p.numel() for p in model.parameters())
    channel._apply(graph, dict(model.named_modules()), keep)  # the surgery prune_ runs (then checks and may undo)
    assert sum(p.numel() for p in model.parameters()) < params
    torch.testing.assert_close(model(*x), before, rtol=1e-4, atol=1e-4)


@needs_hf
@pytest.mark.parametrize("name", ["resnet", "llama"])
def test_hf_model_pruned_through_the_public_verb_runs_smaller(name):
    model, x = hf.build(name)
    params, shape = sum(p.numel() for p in model.parameters()), model(*x).shape
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.3), example_input=x)
    assert sum(p.numel() for p in model.parameters()) < params and model(*x).shape == shape


@needs_hf
def test_bert_hidden_size_shrinks_with_every_embedding_and_layer_norm():
    model, x = hf.build("bert")
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.25), example_input=x)
    bert = model.model.bert
    assert bert.embeddings.word_embeddings.embedding_dim == bert.embeddings.position_embeddings.embedding_dim == 24
    assert bert.embeddings.LayerNorm.normalized_shape == (24,) and bert.encoder.layer[1].output.dense.out_features == 24
    assert bert.encoder.layer[0].attention.self.query.out_features == 32  # heads are reshaped: left whole
    assert model(*x).shape == (2, 3)


@needs_hf
def test_gpt2_conv1d_is_pruned_as_a_transposed_linear_and_the_tied_head_is_left_whole():
    model, x = hf.build("gpt2")
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    mlp = model.model.transformer.h[0].mlp
    assert mlp.c_fc.weight.shape == (32, 64) and mlp.c_fc.nf == 64  # (in, out): 128 -> 64 outputs
    assert mlp.c_proj.weight.shape == (64, 32) and mlp.c_proj.nx == 64
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    assert any("shared with" in s and "lm_head" in s for s in result.skipped)
    assert model(*x).shape == (2, 12, 100)


class Dense(nn.Module):
    """A layer storing its weight (in, out) and reshaping with a count that pruning does not know about."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight, self.width = nn.Parameter(torch.randn(n_in, n_out)), n_out

    def forward(self, x):
        return (x @ self.weight).reshape(-1, self.width)


class WithDense(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.fc = Dense(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.dense(x)))


def test_a_pruned_model_that_would_crash_is_restored_and_refused_by_group():
    register_layer_kind(Dense, LayerKind(name="dense", out_dim=1, in_dim=0, per_channel=()))
    try:
        model, x = WithDense(), torch.randn(2, 4)
        before, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ds.UnsupportedModelError, match=r"would break WithDense .*dense out ⇒ fc in.*ignore="):
            ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=x)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert model.dense.weight.shape == (4, 8) and torch.equal(model(x), before)
        result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5, ignore=("dense",)), x)
        assert all(g.keep == g.width for g in result.groups)
    finally:
        unregister_layer_kind(Dense)


def test_a_group_that_breaks_the_model_is_left_whole_and_the_others_are_pruned():
    register_layer_kind(Dense, LayerKind(name="dense", out_dim=1, in_dim=0, per_channel=()))
    try:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), WithDense())
        x = torch.randn(2, 4)
        result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
        assert model[0].out_features == 4 and model[2].in_features == 4 and model[2].out_features == 2  # healthy groups
        assert model[3].dense.weight.shape == (2, 8) and model(x).shape == (2, 3)  # its inputs went, not its outputs
        assert any("3.dense out" in s and "broke the model" in s for s in result.skipped)
    finally:
        unregister_layer_kind(Dense)


def test_weight_norm_layer_is_left_whole_and_named():
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3)),
                          nn.ReLU(), nn.Conv1d(8, 4, 1), nn.Flatten())  # fmt: skip
    x = torch.randn(2, 2, 9)
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5), x)
    assert any(s.startswith("2: its weight is computed by _WeightNorm") for s in result.skipped)
    assert model[2].weight.shape == (8, 8, 3) and model[0].out_channels == 8  # its inputs and outputs stay
    assert model(x).shape == (2, 20)
