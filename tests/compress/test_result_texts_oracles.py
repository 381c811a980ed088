"""Golden texts of what the structural techniques did: channel pruning (groups with their widths, what was kept and
why), factorization (ranks, parameters and MACs before and after, the savings) and head/FFN pruning (per block)."""

from __future__ import annotations

import torch
from torch import nn

import deepslim as ds


def test_the_channel_pruning_result_names_each_group_and_each_kept_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))  # fmt: skip
    result = ds.compress.prune.prune_channels_(model, ds.ChannelPruneConfig(ratio=0.5, ignore=["3"]),
                                               torch.randn(2, 3, 8, 8))  # fmt: skip
    assert str(result).splitlines() == ["8 -> 4 channels: 0 out ⇒ 1 ⇒ 3 in (8 channels)",
                                        "kept: 7 out (2 channels; not prunable: reaches the model output)"]
    assert (model[0].out_channels, model[1].num_features, model[3].in_channels, model[3].out_channels) == (4, 4, 4, 6)


def test_the_factorization_result_gives_ranks_and_the_savings_per_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    result = ds.factorize_(model, ds.SVDConfig(rank_ratio=0.5))
    # rank 3 of min(6, 8): 6x3 + 3x8 + 8 bias = 50 params (from 56); rank 2 of min(8, 4): 8x2 + 2x4 + 4 = 28 (from 36)
    assert str(result).splitlines() == ["0: ranks (3,), params 56 -> 50, MACs 48 -> 42",
                                        "2: ranks (2,), params 36 -> 28, MACs 32 -> 24",
                                        "saved 14 parameters and 14 MACs"]  # fmt: skip


def test_the_head_pruning_result_gives_heads_and_hidden_units_per_block():
    torch.manual_seed(0)
    model = ds.load_model("bert_mini", num_classes=2).eval()
    result = ds.prune_heads_(model, ds.HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.25, importance="magnitude"))
    # ranked over the whole model: exactly 8 of the 16 heads and 1024 of the 4096 hidden units go
    assert str(result).splitlines() == [
        "layers.0.attn: 4 -> 2 heads", "layers.0.mlp: 1024 -> 784 hidden units",
        "layers.1.attn: 4 -> 3 heads", "layers.1.mlp: 1024 -> 760 hidden units",
        "layers.2.attn: 4 -> 2 heads", "layers.2.mlp: 1024 -> 760 hidden units",
        "layers.3.attn: 4 -> 1 heads", "layers.3.mlp: 1024 -> 768 hidden units"]  # fmt: skip
