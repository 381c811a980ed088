"""Dropout and max pooling for on-device training: autograd's gradients, a fraction of what stock layers keep."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepslim.analysis.training import measure_peak_bytes, measure_saved_bytes, training_profile
from deepslim.models import load_model
from deepslim.train.ondevice import CompactMaxPool2d, PackedDropout, bias_only_, efficient_, uncovered_layers


def _run(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = module(x)
    out.backward(upstream)
    assert x.grad is not None
    return out.detach(), x.grad


def _assert_same(stock: nn.Module, efficient: nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    upstream = torch.randn_like(stock(x))
    for a, b in zip(_run(stock, x, upstream, 7), _run(efficient, x, upstream, 7), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


def _efficient(module: nn.Module) -> nn.Module:
    return efficient_(nn.Sequential(copy.deepcopy(module)))[0]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_packed_dropout_draws_the_stock_mask_and_gives_autograds_gradients(p: float) -> None:
    stock = nn.Dropout(p)
    packed = _efficient(stock)
    assert isinstance(packed, PackedDropout)
    _assert_same(stock, packed, torch.randn(3, 5, 7, 9))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(3, stride=1),
                                  nn.MaxPool2d(2, stride=2, ceil_mode=True), nn.MaxPool2d(3, 2, 1, dilation=2),
                                  nn.MaxPool2d((2, 3), stride=(1, 2))])  # fmt: skip
def test_compact_max_pooling_gives_autograds_gradients_also_with_overlapping_windows(pool: nn.MaxPool2d) -> None:
    compact = _efficient(pool)
    assert isinstance(compact, CompactMaxPool2d)
    _assert_same(pool, compact, torch.randn(2, 3, 11, 10))
    _assert_same(pool, compact, torch.randn(3, 9, 8))  # unbatched


def test_max_pooling_that_returns_indices_stays_stock() -> None:
    model = efficient_(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True)))
    assert type(model[1]) is nn.MaxPool2d and uncovered_layers(model) == {"1": "MaxPool2d"}


@pytest.mark.parametrize("layer, stock_bytes, kept", [
    (nn.Dropout(0.3), 4 * 2 * 16 * 12 * 12, (2 * 16 * 12 * 12 + 7) // 8),  # float noise -> bits
    (nn.MaxPool2d(2), 4 * 2 * 16 * 12 * 12 + 8 * 2 * 16 * 6 * 6, 2 * 16 * 6 * 6),  # input + int64 -> bytes
])  # fmt: skip
def test_the_efficient_layers_keep_a_fraction_by_the_oracle_and_the_planner_agrees(layer: nn.Module,
                                                                                  stock_bytes: int,
                                                                                  kept: int) -> None:  # fmt: skip
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), layer)
    x = torch.randn(2, 3, 12, 12)
    base = measure_saved_bytes(stock, x, trainable="all") - stock_bytes  # what the conv keeps, the same in both
    assert base > 0
    efficient = efficient_(copy.deepcopy(stock))
    assert measure_saved_bytes(efficient, x, trainable="all") == base + kept
    assert training_profile(efficient, x, trainable="all").saved_bytes == base + kept


def test_efficient_lenet5_planned_peak_is_within_ten_percent_of_the_trace() -> None:
    torch.manual_seed(0)
    model = bias_only_(load_model("lenet5"))
    assert uncovered_layers(model) == {}
    x = torch.randn(8, 1, 28, 28)
    planned = training_profile(model, x, trainable="current")
    assert planned.saved_bytes == measure_saved_bytes(model, x, trainable="current")
    measured = measure_peak_bytes(copy.deepcopy(model), x, trainable="current")
    assert abs(planned.peak_bytes / measured - 1) <= 0.10
