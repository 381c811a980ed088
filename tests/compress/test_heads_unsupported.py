"""Head pruning refuses a real Hugging Face attention class it has no adapter for (MPNet: the architecture of
sentence-transformers' all-mpnet-base-v2) by its module path and class, with the function to register one, and
leaves the model whole: no layer of a supported family beside it is pruned half-way."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune import heads as hp

transformers = pytest.importorskip("transformers", reason="Hugging Face attention classes need transformers")
MPNET_ATTN = r"encoder\.layer\.0\.attention\.attn \(transformers\.models\.mpnet\.modeling_mpnet\.MPNetSelfAttention\)"
CONFIG = hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude")


def _mpnet() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64)  # fmt: skip
    return transformers.MPNetModel(config, add_pooling_layer=False).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_an_hf_attention_class_without_an_adapter_is_named_with_its_path_and_the_adapter_to_register():
    model = _mpnet()
    before = _state(model)
    with pytest.raises(ds.errors.UnsupportedModelError,
                       match=rf"no attention adapter describes {MPNET_ATTN}; register one with deepslim\.models\."
                             r"adapters\.register_attention_adapter\(cls, AttentionAdapter\(\.\.\.\)\) or add it to "
                             r"ignore="):  # fmt: skip
        ds.prune_(model, CONFIG)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


class BertWithAttentionPooling(nn.Module):
    """A supported BERT whose token states are pooled by an attention class no adapter describes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, attn_implementation="eager")  # fmt: skip
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.pool = nn.MultiheadAttention(32, 2, batch_first=True)
        self.query = nn.Parameter(torch.randn(1, 1, 32))

    def forward(self, ids, mask):
        states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        return self.pool(self.query.expand(len(ids), -1, -1), states, states)[0][:, 0]


def test_one_unsupported_attention_refuses_the_whole_model_and_prunes_none_of_its_supported_layers():
    model = BertWithAttentionPooling().eval()
    ids, mask = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(1)), torch.ones(2, 9).long()
    with torch.no_grad():
        before, want = _state(model), model(ids, mask)
    with pytest.raises(ds.errors.UnsupportedModelError, match=r"pool \(torch\.nn\.modules\.activation\."
                                                              r"MultiheadAttention\); register one"):  # fmt: skip
        ds.prune_(model, CONFIG)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), want, rtol=0, atol=0)
    ds.prune_(model, hp.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude", ignore=("pool",)))
    attn = model.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.query.out_features == 2 * attn.attention_head_size == 16
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 32  # half of the 64 hidden units
    assert model.pool.embed_dim == 32 and model(ids, mask).shape == want.shape  # the ignored pool left whole
