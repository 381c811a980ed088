"""``deepslim.profile`` counts a Hugging Face BERT sentence encoder's attention exactly: the four projections, QKᵀ and
PV per layer (the eager attention's two batched matrix products), and the feed-forward block — and, after head and
hidden-unit pruning, exactly what the slimmed layers still compute (per layer, from their new widths)."""

import pytest
import torch

import deepslim as ds
from deepslim.compress.prune import HeadPruneConfig

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")

B, T, H = 2, 12, 32  # batch, tokens, width


def _encoder() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=120, hidden_size=H, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return hf.SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False).eval(), max_positions=40).eval()


def _expected_macs(model: torch.nn.Module) -> int:
    """Per layer: Q, K, V (H -> A), the output projection (A -> H), QKᵀ and PV (T x T x A each), the FFN (H -> I -> H),
    with A = heads x head size and I the hidden units the layer has now."""
    total = 0
    for layer in model.encoder.encoder.layer:
        a = layer.attention.self.num_attention_heads * layer.attention.self.attention_head_size
        i = layer.intermediate.dense.out_features
        total += B * (3 * T * H * a + T * a * H + 2 * T * T * a + 2 * T * H * i)
    return total


def test_profile_counts_a_bert_encoders_attention_and_ffn_exactly_before_and_after_head_pruning():
    model = _encoder()
    ids = torch.randint(5, 120, (B, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # padded tokens are still computed (eager attention masks, it does not skip)
    before = ds.profile(model, (ids, mask))
    assert before.macs == _expected_macs(model) == 3 * B * (4 * T * H * H + 2 * T * T * H + 2 * T * H * 64)
    attn = {layer.name: layer.macs for layer in before.layers if layer.name.endswith("attention.self")}
    assert list(attn.values()) == [B * 2 * T * T * H] * 3  # QKᵀ and PV, counted on the attention module itself
    ds.prune_(model, HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.25, importance="magnitude"))
    widths = [layer.attention.self.num_attention_heads for layer in model.encoder.encoder.layer]
    assert sum(widths) == 6 and all(w >= 1 for w in widths)
    after = ds.profile(model, (ids, mask))
    assert after.macs == _expected_macs(model) < before.macs
