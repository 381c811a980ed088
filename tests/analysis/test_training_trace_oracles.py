"""Training-memory details: oneDNN's blocked weight copy pads only the two channel dimensions (to 16 when 8 or more),
and the printed summary gives every total in bytes."""

import re

import torch
from torch import nn

from deepslim.analysis._training_trace import _blocked_weight_bytes
from deepslim.analysis.training import training_profile


def test_the_blocked_weight_copy_pads_the_channel_dimensions_only():
    assert _blocked_weight_bytes(torch.zeros(20, 9, 9, 9)) == 32 * 16 * 9 * 9 * 4  # a 9x9 kernel stays 9x9
    assert _blocked_weight_bytes(torch.zeros(4, 3, 3, 3)) == 4 * 3 * 3 * 3 * 4  # under 8: not padded
    assert _blocked_weight_bytes(torch.zeros(17, 8)) == 32 * 16 * 4


def test_the_summary_line_gives_each_total_in_bytes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    prof = training_profile(model, torch.randn(2, 3, 8, 8), trainable="all")
    last = str(prof).splitlines()[-1]
    amount = r"\d+(\.\d\d [KMG]i)? ?B"
    assert re.fullmatch(rf".*: weights {amount}, grads {amount}, optimizer {amount}, saved {amount}, peak {amount}",
                        last), last  # fmt: skip
