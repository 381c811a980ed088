"""recalibrate_statistics_ (AdaBN): frozen batch norms re-estimate their statistics on the new task, without grads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepslim.errors import ConfigError
from deepslim.train.ondevice import FrozenBatchNorm2d, bias_only_, recalibrate_statistics_


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 2))  # fmt: skip


def test_frozen_batch_norm_takes_the_new_tasks_statistics_and_computes_with_them() -> None:
    model = bias_only_(_model())
    model.train()
    batches = [torch.randn(5, 3, 6, 6) * 2 + 3 for _ in range(3)]  # a shifted, wider domain
    with torch.no_grad():
        conv_out = torch.cat([model[0](b) for b in batches])
    recalibrate_statistics_(model, batches)
    bn = model[1]
    assert isinstance(bn, FrozenBatchNorm2d) and model.training and bn.momentum == 0.1
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    per_batch_var = torch.stack([c.var((0, 2, 3)) for c in conv_out.split(5)])  # unbiased, as batch norm keeps it
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(0), rtol=1e-5, atol=1e-5)
    reference = nn.BatchNorm2d(4).eval()
    reference.load_state_dict({k: v for k, v in bn.state_dict().items()})
    x = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(bn(x), reference(x), rtol=1e-5, atol=1e-5)  # the folded affine was refreshed


def test_recalibration_changes_only_the_statistics_and_keeps_the_mode() -> None:
    model = bias_only_(_model().eval())
    before = copy.deepcopy(model.state_dict())
    recalibrate_statistics_(model, [torch.randn(4, 3, 6, 6)])
    after = model.state_dict()
    assert not model.training
    for key, value in before.items():
        same = torch.equal(value, after[key])
        assert same == (not key.startswith("1.running") and key != "1.num_batches_tracked"), key


def test_no_batches_is_refused_before_anything_changes() -> None:
    model = bias_only_(_model())
    before = model[1].running_mean.clone()
    with pytest.raises(ConfigError, match="at least one batch"):
        recalibrate_statistics_(model, [])
    assert torch.equal(model[1].running_mean, before)
