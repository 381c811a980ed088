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


def test_a_single_image_conv_with_a_kernel_over_3x3_is_counted_on_onednn():
    import pytest

    from deepslim.analysis._training_trace import _uses_onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN not built in")
    x, small = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)

    def call(x, k, groups=1):
        return [x, torch.zeros(4 * groups, 3 // groups if groups == 1 else 1, k, k), None, (1, 1), None, (1, 1), None,
                None, groups]  # fmt: skip

    assert _uses_onednn(call(x, 5)) and not _uses_onednn(call(small, 3))  # 5x5 kernel: oneDNN; 3x3, batch 1: native
