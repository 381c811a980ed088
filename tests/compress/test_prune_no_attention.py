"""Head pruning on a model whose attention class no adapter describes (its name lacks "attention", so the
class-name check that refuses unknown attention modules does not see it) is refused in one line, naming the modules
shaped like attention — never a silent "0 heads removed"."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune.heads import prune_heads_
from deepslim.errors import UnsupportedModelError


class MHSA(nn.Module):  # a user's self-attention: fused queries, keys and values
    def __init__(self, d: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.qkv, self.o = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, d))


def _bert_with_user_attention() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=20)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    for layer in bert.encoder.layer:
        layer.attention = Wrapped()
    return bert


class Wrapped(MHSA):  # BERT's layer expects a tuple from its attention
    def forward(self, hidden_states, attention_mask=None, **_):  # type: ignore[override]
        return (super().forward(hidden_states), None)


def test_head_pruning_without_a_described_attention_module_names_the_lookalikes():
    model = _bert_with_user_attention()  # its feed-forward blocks are described: the old code pruned only them
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(UnsupportedModelError, match=r"head_ratio=0.5 but no attention module of BertModel .*shaped "
                       r"like one: encoder.layer.0.attention \(Wrapped\), encoder.layer.1.attention \(Wrapped\); "
                       r"register its class") as err:  # fmt: skip
        prune_heads_(model, ds.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude"))
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # untouched
    result = prune_heads_(model, ds.HeadPruneConfig(ffn_ratio=0.5, importance="magnitude"))  # no heads asked: fine
    assert model.encoder.layer[0].intermediate.dense.out_features == 16 and result.heads() == (0, 0)


def test_ignoring_some_layers_still_refuses_but_ignoring_every_attention_prunes_the_ffn():
    model = _bert_with_user_attention()
    with pytest.raises(UnsupportedModelError, match=r"shaped like one: encoder.layer.0.attention \(Wrapped\); regi"):
        prune_heads_(model, ds.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude",
                                               ignore=("encoder.layer.1",)))  # fmt: skip
    every = ("encoder.layer.0.attention", "encoder.layer.1.attention")  # the user's own choice: heads stay
    result = prune_heads_(model, ds.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude",
                                                    ignore=every))  # fmt: skip
    assert result.heads() == (0, 0) and model.encoder.layer[1].intermediate.dense.out_features == 16


def test_described_attention_all_ignored_prunes_the_ffn_whatever_else_is_shaped_like_attention():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=20)  # fmt: skip
    torch.manual_seed(0)
    model = nn.Module()
    model.bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.a, model.b, model.c = nn.Linear(16, 2), nn.Linear(16, 3), nn.Linear(16, 5)  # three task heads, not attention
    ignore = (r"re:bert\.encoder\.layer\.\d\.attention.*",)  # every attention module, on purpose
    result = prune_heads_(model, ds.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5, importance="magnitude",
                                                    ignore=ignore))  # fmt: skip
    assert result.heads() == (0, 0) and model.bert.encoder.layer[0].intermediate.dense.out_features == 16
