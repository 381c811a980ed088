"""The sparse-update planner's refusals, word for word: no batch to score gradients on, and a budget that not even
the cheapest unit fits (with the figures a user needs to choose another)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from deepslim.train.ondevice import plan_sparse_update


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_no_batches_is_refused_before_planning():
    with pytest.raises(ds.ConfigError) as err:
        plan_sparse_update(_model(), [], F.cross_entropy, budget_bytes=10**6, example_batch=torch.randn(2, 4))
    assert str(err.value) == "the sparse-update analysis needs at least one batch"


def test_a_budget_below_the_cheapest_unit_names_it_and_the_bias_only_peak():
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(ds.ConfigError) as err:
        plan_sparse_update(_model(), batches, F.cross_entropy, budget_bytes=10, example_batch=torch.randn(2, 4))
    assert str(err.value) == ("a memory budget of 10 bytes cannot be met: the smallest update (only 2:bias) needs 173 "
                              "bytes and bias-only 204; raise the budget, lower the batch size or use a smaller "
                              "model")  # fmt: skip
    plan = plan_sparse_update(_model(), batches, F.cross_entropy, budget_bytes=173, example_batch=torch.randn(2, 4))
    assert plan.trainable == frozenset({"2.bias"}) and plan.peak_bytes <= 173  # the boundary fits
