"""``fit`` refuses a bad schedule before touching the model or the data, each with its own message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "epochs must be >= 0, got -1"),
    ({"epochs": 1, "lr": 0.0}, "lr must be positive, got 0.0"),
    ({"epochs": 1, "lr": float("nan")}, "lr must be positive, got nan"),
    ({"epochs": 1, "optimizer": "lbfgs"}, "optimizer must be one of ['adam', 'sgd'], got 'lbfgs'"),
])  # fmt: skip
def test_a_bad_schedule_is_refused_before_the_data_is_read(kwargs, message):
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ds.ConfigError) as err:
        ds.fit(model, None, **kwargs)  # the data is never read: None would fail at the first batch
    assert str(err.value) == message and torch.equal(model.weight, before)
