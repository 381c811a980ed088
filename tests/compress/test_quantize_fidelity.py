"""quantize_ checks the quantized model against the float one on its calibration data: a model that quantization
breaks is refused (naming the layer and the ways out) and left in float, or accepted with a warning when asked;
models that quantize well are unaffected. Config fields round-trip through JSON."""

import copy
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import LinearQuantConfig, QuantizationError, quantization_report, quantize_
from deepslim.compress.quantize.linear import QuantMixin


def _outlier_model() -> nn.Sequential:
    """One channel of ``embed``'s output is ~1000x the others and ``mix`` ignores it: a per-tensor u8 quantizer of
    ``mix``'s input spends its whole range on that channel and rounds every other one to zero."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(embed=nn.Linear(16, 32), act=nn.ReLU(), mix=nn.Linear(32, 32),
                                      act2=nn.ReLU(), head=nn.Linear(32, 10)))  # fmt: skip
    with torch.no_grad():
        model.embed.bias[0] = 2000.0
        model.mix.weight[:, 0] = 0.0
    return model.eval()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), 0))


def test_a_model_broken_by_an_outlier_channel_is_refused_naming_the_layer_and_left_in_float():
    model, x = _outlier_model(), torch.randn(32, 16)
    with torch.no_grad():
        want = model(x)
    with pytest.raises(QuantizationError, match=r"noisiest layers: mix .*overrides=\{'mix': None") as err:
        quantize_(model, LinearQuantConfig(), calib_data=[x])
    assert isinstance(err.value, ds.DeepSlimError)
    assert "activation_bits=None" in str(err.value) and "accept_low_fidelity=True" in str(err.value)
    assert not any(isinstance(m, QuantMixin) for m in model.modules())
    assert type(model) is nn.Sequential and not hasattr(model, "deepslim_points")
    assert set(model.state_dict()) == set(_outlier_model().state_dict())  # no quantization buffers left behind
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_a_low_fidelity_model_is_returned_with_a_warning_when_accepted(caplog):
    model, x = _outlier_model(), torch.randn(32, 16)
    with torch.no_grad():
        want = model(x)
    with caplog.at_level(logging.WARNING, logger="deepslim.compress.quantize"):
        q = quantize_(model, LinearQuantConfig(accept_low_fidelity=True), calib_data=[x])
    fid = quantization_report(q).fidelity
    assert fid is not None and not fid.passed and fid.worst_layers[0][0] == "mix"
    assert fid.rows == 32 and fid.top1_agreement is not None and fid.top1_agreement < 0.8
    with torch.no_grad():
        assert abs(fid.cosine - _cosine(q(x), want)) < 1e-6  # the recorded number is the model's
    assert any("below the fidelity thresholds" in r.getMessage() for r in caplog.records)
    assert "accepted" in str(quantization_report(q))


def test_the_way_out_the_error_names_works():
    model, x = _outlier_model(), torch.randn(32, 16)
    with torch.no_grad():
        want = model(x)
    q = quantize_(model, LinearQuantConfig(overrides={"mix": None}), calib_data=[x])
    fid = quantization_report(q).fidelity
    assert fid is not None and fid.passed and fid.cosine >= 0.98 and not isinstance(q.mix, QuantMixin)
    with torch.no_grad():
        assert _cosine(q(x), want) >= 0.98


def test_a_model_that_quantizes_well_is_unaffected_by_the_check():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()  # fmt: skip
    x = torch.randn(16, 3, 8, 8)
    checked = quantize_(copy.deepcopy(model), LinearQuantConfig(), calib_data=[x])
    unchecked = quantize_(copy.deepcopy(model), LinearQuantConfig(min_cosine=0.0), calib_data=[x])
    fid = quantization_report(checked).fidelity
    assert fid is not None and fid.passed and fid.cosine > 0.99 and len(fid.worst_layers) == 3
    assert all(db > 25 for _, db in fid.worst_layers)
    assert quantization_report(unchecked).fidelity is None
    with torch.no_grad():
        assert torch.equal(checked(x), unchecked(x))


def test_fidelity_fields_round_trip_and_bad_values_are_config_errors():
    config = LinearQuantConfig(bits=6, min_cosine=0.9, min_agreement=0.5, accept_low_fidelity=True,
                               overrides={"re:fc.*": 4, "head": None})  # fmt: skip
    data = config.to_dict()
    assert data["overrides"] == {"re:fc.*": 4, "head": None} and data["min_cosine"] == 0.9
    assert LinearQuantConfig.from_dict(data) == config
    with pytest.raises(ds.ConfigError, match="min_cosine must be a number from 0 to 1"):
        LinearQuantConfig(min_cosine=1.5)
    with pytest.raises(ds.ConfigError, match="overrides"):
        LinearQuantConfig.from_dict({"overrides": {"fc": "eight"}})
    with pytest.raises(ds.ConfigError, match="may only map layers to None"):
        ds.Float16Config(overrides={"fc": 8})
