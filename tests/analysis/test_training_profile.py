"""training_profile: the planner's saved-for-backward bytes against autograd's own (saved_tensors_hooks), per regime."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from deepslim.analysis.training import measure_peak_bytes, measure_saved_bytes, training_profile
from deepslim.errors import ConfigError
from deepslim.models import load_model

_MODELS = {
    "lenet5": (dict(), (1, 28, 28)),
    "resnet20": (dict(), (3, 32, 32)),
    "mobilenet_v2": (dict(width_mult=0.25, num_classes=10, input_size=32), (3, 32, 32)),
    "vit_tiny": (dict(depth=2, dim=32, mlp_dim=64, num_heads=2), (3, 32, 32)),
}
_REGIMES = ["all", "bias", "last", "none", "sparse:bias:3,weight:2"]


@functools.cache
def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    options, shape = _MODELS[name]
    torch.manual_seed(0)
    return load_model(name, **options), torch.randn(3, *shape)


@pytest.mark.parametrize("regime", _REGIMES)
@pytest.mark.parametrize("name", list(_MODELS))
def test_planned_saved_bytes_equal_what_autograd_saves_at_two_batch_sizes(name: str, regime: str) -> None:
    model, x = _model(name)
    for batch in (2, 5):
        planned = training_profile(model, x, trainable=regime, batch_size=batch)
        measured = measure_saved_bytes(model, x, trainable=regime, batch_size=batch)
        assert planned.saved_bytes == measured, (name, regime, batch)
        assert planned.unknown_ops == ()


@pytest.mark.parametrize(("name", "regime"), [("mobilenet_v2", "all"), ("mobilenet_v2", "bias"), ("resnet20", "all")])
def test_the_planned_peak_is_within_10_percent_of_the_measured_allocation_trace(name: str, regime: str) -> None:
    import copy

    model, x = _model(name)
    planned = training_profile(model, x, trainable=regime, batch_size=8).peak_bytes
    measured = measure_peak_bytes(copy.deepcopy(model), x, trainable=regime, batch_size=8)
    assert abs(planned - measured) <= 0.1 * measured, (planned, measured)


def test_the_profile_puts_the_models_flags_and_modes_back() -> None:
    model, x = _model("resnet20")
    model.eval()
    model.fc.weight.requires_grad_(False)
    training_profile(model, x, trainable="all")
    assert not model.training and not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    model.fc.weight.requires_grad_(True)


def test_stock_bias_only_keeps_almost_as_much_as_full_fine_tuning() -> None:
    model, x = _model("mobilenet_v2")
    full = measure_saved_bytes(model, x, trainable="all", batch_size=8)
    bias = measure_saved_bytes(model, x, trainable="bias", batch_size=8)
    assert 0.9 * full < bias < full  # the "< 10% saving" that stock PyTorch delivers
    assert training_profile(model, x, trainable="bias", batch_size=8).saved_bytes == bias


def test_weights_gradients_and_adam_state_are_counted_per_trainable_byte() -> None:
    model, x = _model("lenet5")
    prof = training_profile(model, x, trainable="last", optimizer="adam")
    last = model.classifier[3]
    trainable = sum(p.numel() * 4 for p in last.parameters())
    assert prof.weight_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert prof.trainable_bytes == prof.grad_bytes == trainable
    assert prof.optimizer_bytes == 2 * trainable
    assert training_profile(model, x, trainable="last", optimizer="sgd-momentum").optimizer_bytes == trainable
    assert training_profile(model, x, trainable="last", optimizer="sgd").optimizer_bytes == 0
    assert prof.peak_bytes >= prof.weight_bytes + prof.grad_bytes + prof.optimizer_bytes + prof.saved_bytes
    assert prof.layer("classifier.3").trainable_bytes == trainable


def test_per_layer_rows_sum_to_the_totals_and_render() -> None:
    model, x = _model("resnet20")
    prof = training_profile(model, x, trainable="bias", batch_size=4, device="cortex-m7")
    assert sum(r.saved_bytes for r in prof.layers) == prof.saved_bytes
    assert sum(r.frozen_bytes + r.trainable_bytes for r in prof.layers) == prof.weight_bytes
    assert prof.layer("conv1").saved_bytes == 0  # its input (the image) needs no gradient and its weight is frozen
    # stock: bn1 keeps conv1's output; conv1's input is the ReLU output that layer1's first ReLU kept already
    assert prof.layer("layer1.0.bn1").saved_bytes == 4 * 16 * 32 * 32 * 4 + 2 * 16 * 4
    d = json.loads(json.dumps(prof.to_dict()))
    assert d["saved_bytes"] == prof.saved_bytes and len(d["layers"]) == len(prof.layers)
    assert prof.device == "cortex-m7" and prof.fits_sram is (prof.peak_bytes <= 1024 * 1024)
    assert "layer1.0.conv1" in str(prof) and "saved" in str(prof)


def test_a_big_batch_does_not_fit_a_microcontroller_and_costs_no_memory_to_plan() -> None:
    model, x = _model("mobilenet_v2")
    prof = training_profile(model, x, trainable="all", batch_size=256, device="cortex-m7")
    assert prof.fits_sram is False and prof.saved_bytes > 100 * 2**20
    assert prof.saved_bytes == measure_saved_bytes(model, x, trainable="all", batch_size=256, fake=True)


def test_in_place_relu6_keeps_a_copy_of_its_input() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(inplace=True), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    prof = training_profile(model, x, trainable="all")
    assert prof.saved_bytes == measure_saved_bytes(model, x, trainable="all")
    assert prof.layer("2").saved_bytes == 2 * 4 * 6 * 6 * 4  # a fresh copy: in place costs memory in training


class _Cumulative(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.fc(x), dim=1)


def test_an_operator_without_a_rule_is_named_and_never_undercounted() -> None:
    model, x = _Cumulative(), torch.randn(4, 6)
    prof = training_profile(model, x, trainable="all")
    assert prof.unknown_ops == ("cumprod",)
    assert prof.saved_bytes >= measure_saved_bytes(model, x, trainable="all")
    assert "cumprod" in str(prof)


def test_trainable_can_be_a_set_or_a_callable() -> None:
    model, x = _model("lenet5")
    by_set = training_profile(model, x, trainable={"classifier.3.weight", "classifier.3.bias"})
    by_fn = training_profile(model, x, trainable=lambda n, p: n.startswith("classifier.3."))
    last = training_profile(model, x, trainable="last")
    assert by_set.saved_bytes == by_fn.saved_bytes == last.saved_bytes
    assert by_set.grad_bytes == last.grad_bytes


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(trainable="weights"), "unknown trainable"),
    (dict(trainable={"nope.weight"}), "unknown parameters"),
    (dict(trainable="sparse:nope"), "names no layer"),
    (dict(optimizer="lion"), "unknown optimizer"),
    (dict(batch_size=0), "batch_size"),
])  # fmt: skip
def test_bad_options_raise_config_errors(kwargs: dict, message: str) -> None:
    model, x = _model("lenet5")
    with pytest.raises(ConfigError, match=message):
        training_profile(model, x, **kwargs)
