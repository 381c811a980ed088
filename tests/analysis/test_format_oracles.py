"""Golden texts of the shared formatting helpers and of the pruning plan's group descriptions."""

import torch

import deepslim as ds
from deepslim.analysis._format import human
from deepslim.compress.prune.channel import ChannelPruneConfig, plan_channel_pruning


def test_bytes_use_binary_prefixes_up_to_gib_and_stay_in_gib_beyond():
    assert human(1023, "B") == "1023 B"
    assert human(1536, "B") == "1.50 KiB"
    assert human(3 * 2**20, "B") == "3.00 MiB"
    assert human(2**41, "B") == "2048.00 GiB"  # no TiB: the largest binary prefix is kept, never a decimal one
    assert human(1_234_567) == "1.23M" and human(5e15, "J") == "5e+03TJ"


def test_an_attention_group_is_described_in_heads():
    model = ds.load_model("bert_mini", num_classes=2).eval()
    example = (torch.randint(0, 100, (1, 8)), torch.ones(1, 8, dtype=torch.long))
    plan = plan_channel_pruning(model, ChannelPruneConfig(ratio=0.0), example)
    heads = [g.description for g in plan.groups if g.unit == "heads"]
    assert heads and heads[0] == "layers.0.attn heads (4 heads)"
    assert all(d.endswith(" channels)") for g in plan.groups if g.unit == "channels" for d in [g.description])
