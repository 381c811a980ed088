"""A frozen batch norm computes eval batch norm with its own epsilon, on both of its paths: stock batch norm when
gamma trains, the folded affine when only beta does (an epsilon other than PyTorch's default 1e-5 shows a slip)."""

import copy

import pytest
import torch
from torch import nn

from deepslim.train.ondevice import FrozenBatchNorm2d


@pytest.mark.parametrize("gamma_trains", [True, False], ids=["stock-path", "folded-path"])
def test_a_frozen_batch_norm_matches_eval_batch_norm_with_a_large_epsilon(gamma_trains):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, eps=0.5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.05, 0.2)  # small variances: epsilon matters
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval().weight.requires_grad_(gamma_trains)
    frozen = copy.deepcopy(bn)
    frozen.__class__ = FrozenBatchNorm2d
    frozen.refresh().train()
    x = torch.randn(2, 3, 4, 4)
    expected = (x - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + 0.5)
    expected = expected * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(frozen(x), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(frozen.running_mean, bn.running_mean)  # statistics frozen in train mode
