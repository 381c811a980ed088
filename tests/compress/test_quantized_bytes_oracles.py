"""The stored size of a linearly quantized layer, as the profiler and the cost model read it: ceil(weights x bits / 8)
bytes of codes, a 4-byte scale per channel (per tensor: one) plus a 1-byte zero point when asymmetric, and the float32
bias when there is one — checked layer by layer against that formula, with and without a bias."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deepslim as ds


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1, bias=False), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5, bias=False), nn.Linear(5, 3))  # fmt: skip


# (name, weights, output channels, bias elements)
LAYERS = [("0", 6 * 3 * 9, 6, 6), ("2", 4 * 6, 4, 0), ("4", 64 * 5, 5, 0), ("5", 5 * 3, 3, 3)]


@pytest.mark.parametrize("bits, per_channel, symmetric", [(8, True, True), (4, True, False), (3, False, True),
                                                          (5, False, False)])  # fmt: skip
def test_each_quantized_layer_stores_its_codes_scales_zero_points_and_bias(bits, per_channel, symmetric):
    model = _model()
    ds.quantize_(model, ds.LinearQuantConfig(bits=bits, per_channel=per_channel, symmetric=symmetric,
                                             activation_bits=None))  # fmt: skip
    prof = ds.profile(model, torch.randn(1, 3, 6, 6))
    got = {lp.name: lp.weight_bytes for lp in prof.layers}
    want = {}
    for name, weights, channels, bias in LAYERS:
        scales = (channels if per_channel else 1) * (4 if symmetric else 5)
        want[name] = math.ceil(weights * bits / 8) + scales + 4 * bias
    assert {n: got[n] for n in want} == want
    assert prof.weight_bytes == sum(want.values())
