"""On-device training: efficient layers give autograd's gradients and really keep less (by the saved-tensor oracle)."""

from __future__ import annotations

import copy
import functools
import logging

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from deepslim.analysis.training import measure_peak_bytes, measure_saved_bytes, training_profile
from deepslim.errors import ConfigError
from deepslim.models import load_model
from deepslim.train.ondevice import (
    BlockAvgPool2d,
    FrozenBatchNorm2d,
    FrozenConv2d,
    FrozenLinear,
    PackedReLU,
    PackedReLU6,
    bias_only_,
    checkpoint_sequential_,
    efficient_,
    pack_bits,
    plan_sparse_update,
    sparse_update_,
    tinytl_,
    uncovered_layers,
    unpack_bits,
)


def _grads(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.backward(upstream)
    return [out.detach(), x.grad] + [p.grad.clone() for p in module.parameters() if p.requires_grad]


def _assert_same_gradients(stock: nn.Module, efficient: nn.Module, x: torch.Tensor) -> None:
    upstream = torch.randn_like(stock(x))
    for a, b in zip(_grads(stock, x, upstream), _grads(efficient, x, upstream), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


@functools.cache
def _mobilenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = load_model("mobilenet_v2", width_mult=0.25, num_classes=10, input_size=32)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    return model.eval(), x


@pytest.mark.parametrize("shape", [(13,), (3, 5, 7), (2, 8), (1,)])
def test_bit_packed_masks_round_trip_in_an_eighth_of_the_bytes(shape: tuple[int, ...]) -> None:
    mask = torch.rand(shape) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_bits_are_packed_most_significant_first() -> None:
    assert pack_bits(torch.tensor([True] + [False] * 7 + [False] * 7 + [True])).tolist() == [128, 1]


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(4, 8, 3, padding=2, dilation=2,
                                  groups=2), nn.Conv2d(4, 4, 3, groups=4, bias=False)])  # fmt: skip
def test_a_frozen_conv_gives_autograds_gradients(conv: nn.Conv2d) -> None:
    conv.weight.requires_grad_(False)
    frozen = copy.deepcopy(conv)
    frozen.__class__ = FrozenConv2d
    _assert_same_gradients(conv, frozen, torch.randn(2, 4, 9, 9))


def test_a_frozen_linear_gives_autograds_gradients_on_3d_inputs() -> None:
    linear = nn.Linear(5, 3)
    linear.weight.requires_grad_(False)
    frozen = copy.deepcopy(linear)
    frozen.__class__ = FrozenLinear
    _assert_same_gradients(linear, frozen, torch.randn(2, 4, 5))


def test_packed_relu_and_relu6_give_autograds_gradients_at_the_edges() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 6.0, 7.0, 3.0, -0.0, 6.5, 1e-8]).view(1, 1, 3, 3)
    for stock, efficient in ((nn.ReLU(), PackedReLU()), (nn.ReLU6(), PackedReLU6())):
        _assert_same_gradients(stock, efficient, x)
    _assert_same_gradients(nn.ReLU6(), PackedReLU6(), torch.randn(2, 3, 5, 5) * 5)


def test_a_frozen_batch_norm_gives_eval_batch_norms_gradients() -> None:
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval().weight.requires_grad_(False)
    frozen = copy.deepcopy(bn)
    frozen.__class__ = FrozenBatchNorm2d
    frozen.refresh().train()  # frozen statistics, in train mode too
    _assert_same_gradients(bn, frozen, torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize(("kernel", "stock"), [(2, nn.AvgPool2d(2)), (None, nn.AdaptiveAvgPool2d(1)),
                                               (3, nn.AvgPool2d(3))])  # fmt: skip
def test_block_average_pooling_gives_autograds_gradients(kernel: int | None, stock: nn.Module) -> None:
    _assert_same_gradients(stock, BlockAvgPool2d(kernel), torch.randn(2, 3, 7, 8))  # 7×8: pooling drops a border


@pytest.mark.parametrize(("module", "kept"), [(FrozenConv2d(3, 4, 3), 0), (FrozenLinear(48, 4), 0),
                                              (PackedReLU(), (2 * 3 * 4 * 4 + 7) // 8),
                                              (PackedReLU6(), (2 * 3 * 4 * 4 + 7) // 8)])  # fmt: skip
def test_efficient_layers_keep_what_they_declare(module: nn.Module, kept: int) -> None:
    for p in module.parameters():
        p.requires_grad_(p.dim() == 1)  # biases train, weights frozen
    x = torch.randn(2, 3, 4, 4)
    if isinstance(module, FrozenLinear):
        x = x.view(1, 2, 48)
    x.requires_grad_(True)
    model = nn.Sequential(module)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    oracle = measure_saved_bytes(model, x, trainable=trainable)
    assert oracle == kept
    assert training_profile(model, x, trainable=trainable).saved_bytes == kept


def test_stock_bias_only_saves_little_and_the_efficient_layers_make_the_saving_real() -> None:
    model, x = _mobilenet()
    full = measure_saved_bytes(model, x, trainable="all")
    stock_bias = measure_saved_bytes(model, x, trainable="bias")
    efficient = bias_only_(copy.deepcopy(model))
    efficient_bias = measure_saved_bytes(efficient, x, trainable="bias")
    assert stock_bias > 0.9 * full  # the anchor: stock PyTorch barely saves
    assert efficient_bias * 20 < full  # measured 54× fewer at batch 8, 53× at 4
    assert training_profile(efficient, x, trainable="bias").saved_bytes == efficient_bias


def test_tinytl_keeps_the_function_trains_the_right_tensors_and_saves_over_6_5x_less() -> None:
    model, x = _mobilenet()
    tiny = tinytl_(copy.deepcopy(model), example_input=x)
    torch.testing.assert_close(tiny.eval()(x), model(x), atol=1e-5, rtol=1e-5)  # zero-initialized side paths
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert training_profile(tiny, x, trainable="current").grad_bytes == sum(
        p.numel() * 4 for p in tiny.parameters() if p.requires_grad)
    assert all(n.endswith(".bias") or ".lite_residual." in n or n.startswith("classifier.1.") for n in trainable)
    assert any(".lite_residual." in n for n in trainable)
    saved = measure_saved_bytes(tiny, x, trainable=trainable)
    assert training_profile(tiny, x, trainable=trainable).saved_bytes == saved
    assert measure_saved_bytes(model, x, trainable="all") >= 6.5 * saved  # measured 22.8× at batch 8
    planned_peak = training_profile(tiny, x, trainable="current").peak_bytes
    measured_peak = measure_peak_bytes(copy.deepcopy(tiny), x, trainable="current")
    assert abs(planned_peak - measured_peak) <= 0.1 * measured_peak
    assert measured_peak * 2 < measure_peak_bytes(copy.deepcopy(model), x, trainable="all")  # measured 2.4× at batch 8
    tiny.train()(x).square().mean().backward()
    assert all(tiny.get_submodule(n.rsplit(".", 1)[0]).get_parameter(n.rsplit(".", 1)[1]).grad is not None
               for n in trainable)  # fmt: skip


def test_uncovered_layers_are_named_warned_and_counted_the_stock_way(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish(), nn.Conv2d(4, 2, 1), nn.ReLU())
    with caplog.at_level(logging.WARNING):
        efficient_(model)
    assert uncovered_layers(model) == {"1": "Hardswish"} and "1 (Hardswish)" in caplog.text
    x = torch.randn(2, 3, 8, 8)
    prof = training_profile(model, x, trainable="bias")
    assert prof.layer("1").saved_bytes == 2 * 4 * 6 * 6 * 4 and "1" in prof.stock_layers
    assert prof.saved_bytes == measure_saved_bytes(model, x, trainable="bias")


def test_checkpointing_keeps_only_segment_inputs_with_unchanged_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[m for _ in range(8) for m in (
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())])  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    plain = measure_saved_bytes(model, x, trainable="all")
    chk = checkpoint_sequential_(copy.deepcopy(model), "")
    assert len(chk) == 5  # ⌈√17⌉ segments
    saved = measure_saved_bytes(chk, x, trainable="all")
    assert training_profile(chk, x, trainable="all").saved_bytes == saved < plain / 2
    # the peak counts what backward recomputes (a segment's activations and its own backward), not only what is kept
    planned_peak = training_profile(chk, x, trainable="all").peak_bytes
    measured_peak = measure_peak_bytes(copy.deepcopy(chk), x, trainable="all")
    assert abs(planned_peak - measured_peak) <= 0.15 * measured_peak  # 8 channels: oneDNN's blocked copies
    model(x).sum().backward()
    chk(x).sum().backward()
    for a, b in zip(model.parameters(), chk.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-6)


def _task() -> tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = load_model("lenet5")
    x = torch.randn(4, 1, 28, 28)
    return model, x, [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(2)]


def test_a_sparse_update_plan_respects_its_budget_by_the_planner_and_the_oracle() -> None:
    model, x, batches = _task()
    weights = sum(p.numel() * 4 for p in model.parameters())
    full = training_profile(model, x, trainable="all", optimizer="sgd")
    bias = training_profile(model, x, trainable="bias", optimizer="sgd")
    budget = (full.peak_bytes + bias.peak_bytes) // 2
    plan = plan_sparse_update(model, batches, F.cross_entropy, budget_bytes=budget, example_batch=x)
    assert plan.peak_bytes <= budget < full.peak_bytes
    assert any(n.endswith(".weight") for n in plan.trainable)  # room for more than biases: some weights update
    sparse_update_(model, plan)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == plan.trainable
    oracle = measure_saved_bytes(model, x, trainable=set(plan.trainable))
    assert oracle == plan.saved_bytes
    grads = sum(p.numel() * 4 for n, p in model.named_parameters() if n in plan.trainable)
    assert weights + grads + oracle <= plan.peak_bytes <= budget  # sgd: no optimizer state


def test_a_budget_not_even_the_smallest_update_meets_names_the_smallest_figure() -> None:
    model, x, batches = _task()
    with pytest.raises(ConfigError, match=r"cannot be met: the smallest update .* needs \d+ bytes and bias-only \d+"):
        plan_sparse_update(model, batches, F.cross_entropy, budget_bytes=sum(p.numel() * 4 for p in model.parameters()),
                           example_batch=x)


def test_tinytl_refuses_to_size_branches_blind_or_to_convert_twice() -> None:
    model, x = _mobilenet()
    with pytest.raises(ConfigError, match="needs example_input"):
        tinytl_(copy.deepcopy(model))
    tiny = tinytl_(copy.deepcopy(model), example_input=x)
    with pytest.raises(ConfigError, match="convert a model only once"):
        tinytl_(tiny, example_input=x)
    with pytest.raises(ConfigError, match="not modules"):
        tinytl_(copy.deepcopy(model), example_input=x, blocks=["features.99"])


def test_a_lite_residuals_pointwise_conv_mixes_all_channels_unless_grouped() -> None:
    from deepslim.train.ondevice.modules import LiteResidual

    torch.manual_seed(0)
    dense, split = LiteResidual(8, 8), LiteResidual(8, 8, pointwise_groups=2)
    assert (dense.conv1.groups, dense.conv2.groups, split.conv2.groups) == (2, 1, 2)
    x = torch.zeros(1, 8, 4, 4)
    x[:, :4] = torch.rand(1, 4, 4, 4) + 0.1  # only the first half of the channels carries a signal
    for branch in (dense, split):
        torch.nn.init.ones_(branch.conv2.weight)
        torch.nn.init.ones_(branch.conv1.weight)
    assert dense(x, (4, 4))[:, 4:].abs().min() > 0  # the second half is corrected from the first
    assert split(x, (4, 4))[:, 4:].abs().max() == 0  # grouped: the halves never meet


def test_an_uncovered_layer_with_a_bias_trains_the_stock_way_and_its_memory_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    torch.manual_seed(0)  # GroupNorm has no efficient form: bias-only training keeps its input, and says so
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with caplog.at_level(logging.WARNING):
        bias_only_(model)
    assert uncovered_layers(model) == {"1": "GroupNorm"} and "1 (GroupNorm)" in caplog.text
    assert model[1].bias.requires_grad and not model[1].weight.requires_grad
    x = torch.randn(4, 3, 10, 10)
    prof = training_profile(model, x, trainable="current")
    assert "1" in prof.stock_layers and prof.layer("1").saved_bytes >= 4 * 8 * 8 * 8 * 4  # its whole input, at least
    assert prof.saved_bytes == measure_saved_bytes(model, x, trainable="current")
    model(x).sum().backward()
    assert model[1].bias.grad is not None and model[1].bias.grad.abs().sum() > 0
