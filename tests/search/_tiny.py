"""A tiny convolutional net trained on digits, and a fake deterministic latency table, for the search tests."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

import deepslim as ds
from deepslim.search.latency import LatencyTable, LayerKey
from deepslim.search.space import SearchSpace


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )


@functools.cache
def digits():
    return ds.load_data("digits", seed=0, calib_size=128)


@functools.cache
def _trained_state():
    net = tiny_net()
    ds.fit(net, digits(), epochs=1, lr=1e-2, seed=0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def trained_net() -> nn.Module:
    net = tiny_net()
    net.load_state_dict(_trained_state())
    return net.eval()


def fake_ms(key: LayerKey) -> float:
    """Deterministic: 1 ms per million MACs, int8 at 0.4x, channel counts off the 4-block at 1.5x; a float<->int8
    conversion pair 2 ms per million elements."""
    if key.kind == "qdq":
        return 2e-6 * math.prod(key.in_shape)
    ms = key.macs / 1e6 * (0.4 if key.int8 else 1.0)
    return ms * (1.5 if key.out_channels % 4 else 1.0)


def fake_table() -> LatencyTable:
    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])


FAST = {"finetune_epochs": 0, "top_k": 1, "uniform_ratios": (1.0, 0.5)}  # search() settings of the tiny tests


def small_space(net: nn.Module) -> SearchSpace:
    """Channel counts 4 or 8 in both groups and the second convolution int8 or float: 8 policies."""
    full = SearchSpace.from_model(net, digits().example_input, keep_ratios=(1.0, 0.5), round_to=2)
    return SearchSpace(groups=full.groups, int8_layers=("3",), round_to=2)
