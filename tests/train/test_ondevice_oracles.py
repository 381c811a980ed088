"""On-device training pieces the whole-package mutation sample found untested: a non-square block pooling kernel
clamped per side to a smaller input, which pooling layers efficient_() swaps (global ones only), the sparse update's
candidate units restricted to the chosen layers, and the budget check planning bias-only training with the optimizer
asked for (Adam's state makes a different peak from SGD's)."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import ConfigError
from deepslim.train.ondevice import efficient_
from deepslim.train.ondevice.modules import BlockAvgPool2d

finetune = importlib.import_module("deepslim.train.ondevice.finetune")
sparse = importlib.import_module("deepslim.train.ondevice.sparse")


@pytest.mark.parametrize("grad", [False, True])
def test_a_non_square_kernel_is_clamped_to_the_input_on_each_side(grad):
    # kernel (4, 2) on a 3 x 6 map: the height clamps to 3, the width stays 2 -> one row of 3 blocks
    x = torch.randn(2, 3, 3, 6, requires_grad=grad)
    ref_x = x.detach().clone().requires_grad_(grad)
    out = BlockAvgPool2d((4, 2))(x)
    ref = F.avg_pool2d(ref_x, (3, 2), (3, 2))
    assert out.shape == (2, 3, 1, 3)
    torch.testing.assert_close(out, ref)
    if grad:
        up = torch.randn_like(ref)
        out.backward(up)
        ref.backward(up)
        torch.testing.assert_close(x.grad, ref_x.grad)


def test_efficient_swaps_global_average_pooling_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d((1, 1)),
                          nn.Flatten(), nn.Linear(4, 2))  # fmt: skip
    single = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before, before_single = model(x), single(x)
    efficient_(model)
    efficient_(single)
    assert type(model[1]) is nn.AdaptiveAvgPool2d  # a 2 x 2 output is not a global pool: kept
    assert isinstance(model[3], BlockAvgPool2d) and model[3].kernel is None
    assert isinstance(single[1], BlockAvgPool2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
        torch.testing.assert_close(single(x), before_single)


def test_sparse_update_candidates_are_the_chosen_layers_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.BatchNorm1d(2))
    assert sparse._units(model, ["2", "3"]) == {"2:weight": ["2.weight"], "3:weight": ["3.weight"],
                                                "3:bias": ["3.bias"]}  # fmt: skip
    assert set(sparse._units(model, None)) == {"0:weight", "0:bias", "2:weight", "3:weight", "3:bias"}
    with pytest.raises(ConfigError, match="no candidate layer with parameters"):
        sparse._units(model, ["1"])


class _Plan:
    peak_bytes = 10**12  # over any budget


def test_the_budget_check_plans_bias_only_training_with_the_optimizer_asked_for():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))  # fmt: skip
    example = torch.randn(2, 3, 16, 16)
    sgd, adam = (finetune.smallest_peak(model, example, optimizer=o) for o in ("sgd", "adam"))
    assert sgd != adam  # Adam keeps two moments of every trained bias
    for optimizer, least in (("sgd", sgd), ("adam", adam)):
        with pytest.raises(ConfigError, match=rf"bias-only needs {least} \("):
            finetune._check_budget(_Plan(), model, example, "tinytl", least, optimizer)  # fmt: skip
        with pytest.raises(ConfigError, match=rf"smallest achievable peak is {least} bytes"):
            finetune._check_budget(_Plan(), model, example, "tinytl", least - 1, optimizer)


def test_efficient_swaps_a_nested_global_pool_in_its_own_parent():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    efficient_(model)
    assert isinstance(model[0][1], BlockAvgPool2d) and not hasattr(model, "0.1")
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
