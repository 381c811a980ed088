"""Tucker factorization leaves 1x1 and grouped convolutions whole, naming why (a 1x1 convolution is a matrix: Tucker
would only add two layers around it), and factorizes the others."""

import torch
from torch import nn

from deepslim.compress.lowrank import TuckerConfig, factorize_


def test_one_by_one_and_grouped_convolutions_are_kept_whole_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Conv2d(16, 16, 3, padding=1))  # fmt: skip
    x = torch.randn(2, 8, 6, 6)
    result = factorize_(model, TuckerConfig(rank_ratio=0.5))
    assert isinstance(model[2], nn.Conv2d) and model[2].kernel_size == (1, 1)
    assert isinstance(model[4], nn.Conv2d) and model[4].groups == 4
    assert isinstance(model[5], nn.Sequential) and len(model[5]) == 3  # the plain 3x3 one is factorized
    text = str(result)
    assert "kept: 2: grouped or 1x1 convolution" in text and "kept: 4: grouped or 1x1 convolution" in text
    assert model(x).shape == (2, 16, 6, 6)
