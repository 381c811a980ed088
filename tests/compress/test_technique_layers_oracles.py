"""Which layers each registered technique says it works on (``Technique.candidates``: what a per-layer override may
name), the channel-alignment check, and the printed plans of channel and head pruning — exact lists and lines."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.prune.channel import ChannelPruneResult, GroupPlan, misaligned_layers
from deepslim.compress.prune.heads import BlockPlan, HeadPruneConfig, HeadPruneResult, head_blocks
from deepslim.errors import ConfigError
from deepslim.techniques import get_technique


def _convnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, (1, 3), padding=(0, 1)),
                         nn.Flatten(), nn.Linear(64, 5))  # fmt: skip


@pytest.mark.parametrize(("name", "layers"), [
    ("linear", ["0", "2", "3", "4", "6"]), ("half", ["0", "2", "3", "4", "6"]), ("pow2", ["0", "2", "3", "4", "6"]),
    ("binary", ["0", "2", "3", "4", "6"]), ("ternary", ["0", "2", "3", "4", "6"]),
    ("kmeans", ["0", "2", "3", "4", "6"]), ("magnitude", ["0", "2", "3", "4", "6"]),
    ("svd", ["6"]),  # linear layers only
    ("tucker", ["0", "4"]),  # spatial, ungrouped convolutions: not the 1x1 (2) nor the depthwise one (3)
    ("heads", []),
])  # fmt: skip
def test_each_technique_names_the_layers_it_works_on(name, layers):
    technique = get_technique(name)
    assert technique.candidates(_convnet(), None, torch.randn(1, 3, 4, 4)) == layers


@pytest.mark.parametrize("name", ["merge_tokens", "prune_tokens", "bn"])
def test_techniques_without_layers_refuse_per_layer_variation(name):
    with pytest.raises(ConfigError, match=f"technique '{name}' does not name the layers"):
        get_technique(name).candidates(_convnet(), None)


def test_head_pruning_names_attention_and_ffn_blocks_in_order_less_the_ignored():
    model = ds.create_model("vit_tiny", num_classes=3, input_size=8, depth=2, dim=24, num_heads=3, mlp_dim=32)
    assert get_technique("heads").candidates(model, HeadPruneConfig()) == ["blocks.0.attn", "blocks.0.mlp",
                                                                          "blocks.1.attn", "blocks.1.mlp"]
    assert head_blocks(model, HeadPruneConfig(ignore=("blocks.0.attn",))) == ["blocks.0.mlp", "blocks.1.attn",
                                                                              "blocks.1.mlp"]  # fmt: skip
    assert head_blocks(model) == head_blocks(model, HeadPruneConfig())


def test_misaligned_layers_are_convolutions_and_linears_off_the_channel_grid():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 12, 1), nn.Conv1d(4, 6, 1), nn.Linear(4, 16),
                          nn.Linear(4, 10), nn.BatchNorm2d(5), nn.ConvTranspose2d(3, 5, 1))  # fmt: skip
    assert misaligned_layers(model) == ["1 (12)", "2 (6)", "4 (10)"]
    assert misaligned_layers(model, multiple=4) == ["2 (6)", "4 (10)"]
    assert misaligned_layers(model, multiple=2) == []
    assert misaligned_layers(model, multiple=16) == ["0 (8)", "1 (12)", "2 (6)", "4 (10)"]


def test_a_channel_plan_prints_the_pruned_groups_then_the_kept_then_the_skipped():
    result = ChannelPruneResult(groups=(GroupPlan("conv1 -> bn1", 16, 8, "channels"),
                                        GroupPlan("untouched", 4, 4, "channels"),
                                        GroupPlan("attn", 4, 3, "heads")),
                                blocked=("fc (network output)",), skipped=("emb (tied)",))  # fmt: skip
    assert str(result) == ("16 -> 8 channels: conv1 -> bn1\n4 -> 3 heads: attn\nkept: fc (network output)\n"
                           "left whole: emb (tied)")  # fmt: skip
    assert str(ChannelPruneResult(groups=())) == ""
    whole = GroupPlan("g", 5, 2, "channels", kept=(0, 3)).whole()
    assert (whole.keep, whole.kept, whole.description) == (5, (0, 1, 2, 3, 4), "g")


def test_a_head_plan_prints_each_block_then_what_was_left_whole_and_counts_heads_only():
    result = HeadPruneResult(blocks=(BlockPlan("b0.attn", "heads", 4, 2, (0, 3)),
                                     BlockPlan("b0.mlp", "hidden units", 64, 48, tuple(range(48))),
                                     BlockPlan("b1.attn", "heads", 4, 4, (0, 1, 2, 3))),
                             skipped=("b1.mlp (ignored)",))  # fmt: skip
    assert str(result) == ("b0.attn: 4 -> 2 heads\nb0.mlp: 64 -> 48 hidden units\nb1.attn: 4 -> 4 heads\n"
                           "left whole: b1.mlp (ignored)")  # fmt: skip
    assert result.heads() == (8, 6)
    assert str(HeadPruneResult(blocks=())) == "" and HeadPruneResult(blocks=()).heads() == (0, 0)
