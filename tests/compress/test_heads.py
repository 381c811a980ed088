"""Head and feed-forward pruning through attention adapters: Hugging Face classes (BERT, ViT, GPT-2, Llama, ...) and
the zoo's own lose whole heads and hidden units, and removing units whose contribution was zeroed changes nothing."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import heads as hp
from deepslim.models.adapters import (
    AttentionAdapter,
    layer_kind,
    register_attention_adapter,
    unregister_attention_adapter,
)
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")
FAMILIES = ["bert", "roberta", "distilbert", "vit", "deit-distilled", "dinov2", "gpt2", "llama", "qwen2"]


def _zero_removed_(blocks, result) -> None:
    """Zero the output-projection columns of the units the plan removes: their contribution becomes exactly 0."""
    with torch.no_grad():
        for b, plan in zip(blocks, result.blocks, strict=True):
            gone = sorted(set(range(plan.width)) - set(plan.kept))
            if gone:
                cols = hp.rows(torch.tensor(gone), b.unit_width)
                b.output.weight.index_fill_(layer_kind(b.output).in_dim, cols, 0.0)


@needs_hf
@pytest.mark.parametrize("name", FAMILIES)
def test_hf_heads_and_hidden_units_removed_after_zeroing_change_nothing(name):
    model, x = hf.build(name)
    config = hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude", round_to=4)
    blocks, result = hp.plan_head_pruning(model, config)
    assert any(b.unit == "heads" and b.keep < b.width for b in result.blocks)
    assert any(b.unit == "hidden units" and b.keep < b.width for b in result.blocks)
    _zero_removed_(blocks, result)
    before, params = model(*x), sum(p.numel() for p in model.parameters())
    for b, plan in zip(blocks, result.blocks, strict=True):
        hp.apply_block(b, torch.tensor(plan.kept))
    assert sum(p.numel() for p in model.parameters()) < 0.85 * params
    torch.testing.assert_close(model(*x), before, rtol=1e-5, atol=1e-5)


@needs_hf
def test_grouped_query_attention_loses_whole_key_value_groups():
    model, x = hf.build("llama")
    attn = model.model.model.layers[0].self_attn
    heads, kv = attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim
    assert heads > kv  # the test model shares key/value heads
    ds.prune_(model, hp.HeadPruneConfig(head_ratio=0.5, importance="magnitude"))
    assert attn.k_proj.out_features == attn.head_dim * kv // 2
    assert attn.q_proj.out_features == attn.head_dim * heads // 2 == attn.o_proj.in_features
    assert attn.num_key_value_groups == heads // kv and model(*x).shape == (2, 12, 100)


@needs_hf
def test_sensitivity_ranks_a_silenced_head_lowest_and_removes_it():
    model, x = hf.build("bert")
    blocks, _ = hp.find_blocks(model)
    attn = next(b for b in blocks if b.is_attention)
    with torch.no_grad():
        attn.output.weight[:, 2 * attn.unit_width : 3 * attn.unit_width] = 0.0  # head 2 of layer 0 says nothing
    calib = [x, x]
    scores = hp.sensitivity(model, [attn], calib)[0]
    assert scores[2] == 0.0 and (scores[[0, 1, 3]] > 0).all()
    result = hp.prune_heads_(model, hp.HeadPruneConfig(head_ratio=0.25, global_ranking=False), calib_data=calib)
    first = next(b for b in result.blocks if b.unit == "heads")
    assert first.kept == (0, 1, 3) and all(b.keep == b.width for b in result.blocks if b.unit == "hidden units")
    assert model.model.bert.encoder.layer[0].attention.self.num_attention_heads == 3


@needs_hf
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_refit_brings_the_pruned_outputs_closer_to_the_original(name):
    model, x = hf.build(name)
    calib = [tuple(torch.cat([t, t.roll(1, 0)]) for t in x)]
    with torch.no_grad():
        reference = model(*calib[0])
    errors = {}
    for refit in (False, True):
        pruned, _ = hf.build(name)
        hp.prune_heads_(pruned, hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, round_to=4, refit=refit),
                        calib_data=calib)  # fmt: skip
        with torch.no_grad():
            errors[refit] = (pruned(*calib[0]) - reference).pow(2).mean().item()
    assert errors[True] < 0.7 * errors[False]


@needs_hf
def test_pruned_bert_exports_to_onnx_and_agrees_with_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = hf.build("bert")
    hp.prune_heads_(model, hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, round_to=4), calib_data=[x])
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, x, str(path), dynamo=False, input_names=["ids", "mask"], opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"ids": x[0].numpy(), "mask": x[1].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(*x).detach(), rtol=1e-4, atol=1e-4)


def test_zoo_vit_heads_pruned_globally_keep_one_head_per_layer():
    model = ds.create_model("vit_tiny", num_classes=10).eval() if "vit_tiny" in ds.list_models() else None
    if model is None:
        pytest.skip("no vit_tiny in the zoo")
    x = ds.example_input("vit_tiny", batch_size=2)
    result = hp.prune_heads_(model, hp.HeadPruneConfig(head_ratio=0.6, ffn_ratio=0.25), calib_data=[x])
    before, after = result.heads()
    layers = sum(b.unit == "heads" for b in result.blocks)
    assert round(before * 0.4) <= after <= round(before * 0.4) + layers  # raised only where a layer kept 0
    assert all(b.keep >= 1 for b in result.blocks)
    assert model.blocks[0].attn.num_heads == next(b.keep for b in result.blocks if b.unit == "heads")
    assert model(x).shape == (2, 10)


class WithTorchAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0])


def test_unsupported_attention_class_is_named_with_the_adapter_to_register():
    with pytest.raises(ds.errors.UnsupportedModelError, match=r"MultiheadAttention.*register_attention_adapter"):
        ds.prune_(WithTorchAttention(), hp.HeadPruneConfig(head_ratio=0.5, importance="magnitude"))


def test_a_registered_adapter_makes_a_new_attention_class_prunable():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(8, 8) for _ in range(4))
            self.size, self.n = 2, 4

        def forward(self, x):  # (B, T, 8)
            q, k, v = (p(x).unflatten(-1, (-1, self.size)).transpose(1, 2) for p in (self.wq, self.wk, self.wv))
            return self.wo(torch.softmax(q @ k.transpose(2, 3), -1).matmul(v).transpose(1, 2).flatten(2))

    register_attention_adapter(Mine, AttentionAdapter(name="mine", query="wq", key="wk", value="wv", output="wo",
                                                      head_dim="size", counts=(("n", "heads"),)))  # fmt: skip
    try:
        m = Mine()
        ds.prune_(m, hp.HeadPruneConfig(head_ratio=0.5, importance="magnitude"))
        assert m.n == 2 and m.wq.out_features == 4 and m(torch.randn(1, 3, 8)).shape == (1, 3, 8)
    finally:
        unregister_attention_adapter(Mine)


def test_bad_config_and_missing_calibration_data_are_clear_errors():
    with pytest.raises(ds.errors.ConfigError, match="head_ratio"):
        hp.HeadPruneConfig(head_ratio=1.0)
    with pytest.raises(ds.errors.ConfigError, match="calib_data"):
        hp.prune_heads_(ds.create_model("vit_tiny", num_classes=10), hp.HeadPruneConfig(head_ratio=0.5))
    assert hp.HeadPruneConfig.from_dict(hp.HeadPruneConfig(ffn_ratio=0.3).to_dict()).ffn_ratio == 0.3


def _silence_(block, units) -> None:
    """Zero the output-projection columns of ``units``: they say nothing, so their sensitivity is exactly 0."""
    with torch.no_grad():
        block.output.weight.index_fill_(layer_kind(block.output).in_dim, hp.rows(torch.tensor(units),
                                        block.unit_width), 0.0)  # fmt: skip


@needs_hf
def test_a_unit_costs_its_projection_weights_a_bert_head_as_much_as_sixteen_hidden_units_here():
    model, _ = hf.build("bert")  # hidden 32, 4 heads of 8, 64 hidden units, 2 layers
    blocks, _ = hp.find_blocks(model)
    assert {b.is_attention: b.unit_cost() for b in blocks} == {True: 4 * 32 * 8, False: 2 * 32}


@needs_hf
def test_flops_ratio_removes_the_silenced_head_and_hidden_units_first_and_changes_nothing():
    model, x = hf.build("bert")
    blocks, _ = hp.find_blocks(model)
    heads0, ffn1 = blocks[1], blocks[2]  # model order: each layer's feed-forward block, then its attention
    assert heads0.is_attention and not ffn1.is_attention and ffn1.name == "model.bert.encoder.layer.1"
    _silence_(heads0, [1])
    _silence_(ffn1, list(range(40, 48)))
    before = model(*x)
    share = (1024 + 8 * 64) / (2 * 4 * 1024 + 2 * 64 * 64)  # exactly the silenced weights
    result = hp.prune_heads_(model, hp.HeadPruneConfig(flops_ratio=share, refit=False), calib_data=[x, x])
    kept = [b.kept for b in result.blocks]
    assert kept[1] == (0, 2, 3) and kept[2] == tuple(range(40)) + tuple(range(48, 64))
    assert [b.keep for b in result.blocks] == [64, 3, 56, 4]
    assert result.macs() == (16384, 16384 - 1536)
    torch.testing.assert_close(model(*x), before, rtol=1e-5, atol=1e-5)


@needs_hf
def test_flops_ratio_keeps_head_ratio_as_the_least_share_of_heads_removed():
    model, x = hf.build("bert")
    result = hp.prune_heads_(model, hp.HeadPruneConfig(head_ratio=0.5, flops_ratio=0.01, refit=False),
                             calib_data=[x])  # fmt: skip
    assert result.heads() == (8, 4)
    assert result.macs()[1] == 16384 - 4 * 1024  # the minimum already removes more than 1 %


def test_flops_ratio_without_sensitivity_or_global_ranking_is_a_clear_error():
    with pytest.raises(ds.errors.ConfigError, match="flops_ratio.*sensitivity"):
        hp.HeadPruneConfig(flops_ratio=0.3, importance="magnitude")
    with pytest.raises(ds.errors.ConfigError, match="global_ranking"):
        hp.HeadPruneConfig(flops_ratio=0.3, global_ranking=False)
    with pytest.raises(ds.errors.ConfigError, match="flops_ratio"):
        hp.HeadPruneConfig(flops_ratio=1.0)


@needs_hf
def test_joint_ranking_compares_sensitivity_per_weight_not_per_unit():
    model, _ = hf.build("bert")
    blocks, _ = hp.find_blocks(model)  # ffn0, heads0, ffn1, heads1; a head costs 1024 weights, a hidden unit 64
    scores = [torch.ones(64), torch.tensor([10.0, 20, 30, 40]), torch.ones(64), torch.tensor([17.0, 25, 35, 45])]
    # per weight: head 0 of layer 0 10/1024 < a hidden unit's 1/64, though its score is ten times larger
    assert hp._joint_counts(blocks, scores, [64, 4, 64, 4], 1024 / 16384, 8) == [64, 3, 64, 4]
    # the next 1024 weights: 16 hidden units (2 chunks of 8, 1/64 each) before head 0 of layer 1 (17/1024)
    assert hp._joint_counts(blocks, scores, [64, 4, 64, 4], 2048 / 16384, 8) == [48, 3, 64, 4]
