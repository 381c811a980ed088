"""Tucker factorization under a MAC budget: the common rank fraction is the largest whole percent whose three
convolutions cost at most ``mac_ratio`` of the original, computed here from the definition for a layer with
different input and output widths (so the two ranks and the two widths cannot be swapped unnoticed), and the
factorized layer keeps to the budget while the next percent would not."""

import pytest
import torch
from torch import nn

from deepslim.compress.lowrank import TuckerConfig, factorize_


def _cost(f, i, o, k):
    r_in, r_out = round(f / 100 * i), round(f / 100 * o)
    return i * r_in + r_in * r_out * k + r_out * o


@pytest.mark.parametrize("mac_ratio", [0.25, 0.4, 0.7])
def test_tucker_takes_the_largest_rank_fraction_within_the_mac_budget(mac_ratio):
    i, o, k = 12, 20, 9
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(i, o, 3, padding=1))
    budget = mac_ratio * o * i * k
    f = max(f for f in range(1, 101) if _cost(f, i, o, k) <= budget)
    assert f < 100 and _cost(f + 1, i, o, k) > budget
    expected = (max(1, round(f / 100 * i)), max(1, round(f / 100 * o)))
    res = factorize_(model, TuckerConfig(mac_ratio=mac_ratio))
    (layer,) = res.layers
    assert layer.ranks == expected
    first, mid, last = model[0]
    r_in, r_out = expected
    assert (first.out_channels, mid.in_channels, mid.out_channels, last.in_channels) == (r_in, r_in, r_out, r_out)
    assert layer.params_after == i * expected[0] + expected[0] * expected[1] * k + expected[1] * o + o  # + bias
    assert layer.params_after - o <= budget


def test_per_example_macs_count_the_first_factor_at_the_input_positions_and_are_whole_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(12, 20, 3, stride=2, padding=1))
    x = torch.randn(2, 12, 8, 8)  # a batch of 2: counts are per example; 64 input and 16 output positions
    res = factorize_(model, TuckerConfig(rank_ratio=0.5), example_input=x)
    (layer,) = res.layers
    r_in, r_out = layer.ranks
    assert (r_in, r_out) == (6, 10)
    assert layer.macs_before == 20 * 12 * 9 * 16
    assert layer.macs_after == 12 * r_in * 64 + r_in * r_out * 9 * 16 + r_out * 20 * 16
    assert type(layer.macs_before) is int and type(layer.macs_after) is int  # reports print them with {:,}
