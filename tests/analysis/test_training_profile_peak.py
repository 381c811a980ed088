"""The planned peak's finer points, each against a measured allocation trace: Adam's update temporaries, a linear
layer's weight gradient counted once, and oneDNN's blocked copies in a convolution's backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepslim.analysis.training import measure_peak_bytes, training_profile


def _ratio(model: nn.Module, x: torch.Tensor, trainable: str, optimizer: str = "adam") -> float:
    planned = training_profile(model, x, trainable=trainable, optimizer=optimizer).peak_bytes
    return planned / measure_peak_bytes(copy.deepcopy(model), x, trainable=trainable, optimizer=optimizer)


def test_adams_update_of_a_big_layer_is_the_peak_and_is_planned_within_2_percent() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 4))  # the update needs 2 × 512 KB extra
    x = torch.randn(2, 64)
    assert _ratio(model, x, "all") == pytest.approx(1.0, abs=0.02)
    adam = training_profile(model, x, trainable="all", optimizer="adam")
    update = adam.weight_bytes + adam.optimizer_bytes + adam.grad_bytes + 2 * 64 * 2048 * 4  # + sqrt and div
    assert adam.peak_bytes >= update


def test_a_linear_weights_gradient_is_counted_once_although_the_trace_sees_it_and_its_transpose() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
    x = torch.randn(4, 512)
    prof = training_profile(model, x, trainable="all", optimizer="sgd")
    grads = sum(p.numel() * 4 for p in model.parameters())
    # weights + their gradients + the batch and a few activations: not the weights' gradients twice
    assert prof.peak_bytes < prof.weight_bytes + grads + 64 * 1024
    assert _ratio(model, x, "all", "sgd") == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("trainable", ["bias", "all"])
def test_a_convolutions_blocked_backward_copies_are_planned_within_2_percent(trainable: str) -> None:
    torch.manual_seed(0)  # 20 -> 50 channels: oneDNN pads both to 32 and 64 in its blocked copies
    model = nn.Sequential(nn.Conv2d(3, 20, 3), nn.ReLU(), nn.Conv2d(20, 50, 5), nn.Flatten(), nn.Linear(50 * 8 * 8, 4))
    x = torch.randn(8, 3, 14, 14)
    assert _ratio(model, x, trainable) == pytest.approx(1.0, abs=0.02)


def test_a_convolutions_forward_reorders_of_input_and_weight_are_planned_within_2_percent() -> None:
    from deepslim.train.ondevice import bias_only_

    torch.manual_seed(0)  # frozen weight, input without gradient: the forward's scratch is the step's peak
    model = bias_only_(nn.Sequential(nn.Conv2d(20, 50, 3)))
    x = torch.randn(16, 20, 12, 12)
    prof = training_profile(model, x, trainable="current")
    reorders = 16 * 32 * 12 * 12 * 4 + 64 * 32 * 9 * 4  # input and weight, channels padded to 16s
    assert prof.peak_bytes >= prof.weight_bytes + x.numel() * 4 + reorders + 16 * 64 * 10 * 10 * 4
    assert _ratio(model, x, "current") == pytest.approx(1.0, abs=0.02)


def test_private_saved_buffers_such_as_packed_masks_stay_alive_to_the_end_of_the_forward() -> None:
    from deepslim.analysis._training_peak import OpRecord, activation_peak

    # a -> b -> c, where the second operator also keeps a 50-byte packed mask (no operator output stands for it)
    ops = [OpRecord(writes={"a": 100}), OpRecord(reads={"a"}, writes={"b": 10}),
           OpRecord(reads={"b"}, writes={"c": 10}), OpRecord(reads={"c"}, writes={"d": 1})]  # fmt: skip
    without, _ = activation_peak(ops, {}, {"d"}, set())
    forward, _ = activation_peak(ops, {}, {"d"}, set(), [(2, 50)])
    assert (without, forward) == (110, 160)
    late, _ = activation_peak(ops, {}, {"d"}, set(), [(3, 500)])  # alive from the third operator to the end
    assert late == 10 + 10 + 500  # b, c and the buffer at the third (c, d and the buffer at the fourth: 511)


def test_a_frozen_convolutions_input_gradient_scratch_is_planned_within_2_percent() -> None:
    from deepslim.train.ondevice import bias_only_

    torch.manual_seed(0)  # the second conv's input gradient: oneDNN's blocked copies of the 50-channel gradient
    model = bias_only_(nn.Sequential(nn.Conv2d(3, 20, 3), nn.Conv2d(20, 50, 1), nn.Conv2d(50, 4, 1)))
    x = torch.randn(16, 3, 18, 18)
    assert _ratio(model, x, "current") == pytest.approx(1.0, abs=0.02)
