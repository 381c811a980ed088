"""Golden texts of ``quantization_report``: each layer's encoding (bits, per channel or not, activation bits or
weight-only, k-means), the layers an override skipped, the resolved calibration, and the fidelity line (with the
note when a model below the thresholds was accepted)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 12), nn.ReLU(),
                         nn.Linear(12, 10))  # fmt: skip


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 6, 6, generator=g) for _ in range(3)]


def test_static_int8_with_a_skipped_layer_reports_encodings_calibration_and_fidelity():
    model = _model()
    ds.quantize_(model, ds.LinearQuantConfig(overrides={"3": None}, min_cosine=0.9, min_agreement=0.0),
                 calib_data=_calib())  # fmt: skip
    assert str(ds.quantization_report(model)).splitlines() == [
        "0: int8 w per-channel / u8 act",
        "5: int8 w per-channel / u8 act",
        "not quantized: 3 (skipped by an override)",
        "activation calibration: minmax",
        "fidelity to the float model: cosine 1.000, top-1 agreement 100% over 24 rows; noisiest layers: 0 (41.2 dB), "
        "5 (52.2 dB)",
    ]


def test_an_accepted_low_fidelity_model_says_so():
    model = _model()
    ds.quantize_(model, ds.LinearQuantConfig(bits=2, activation_bits=4, accept_low_fidelity=True, min_cosine=0.999),
                 calib_data=_calib())  # fmt: skip
    assert str(ds.quantization_report(model)).splitlines() == [
        "0: int2 w per-channel / u4 act",
        "3: int2 w per-channel / u4 act",
        "5: int2 w per-channel / u4 act",
        "activation calibration: minmax",
        "fidelity to the float model: cosine 0.888, top-1 agreement 50% over 24 rows; noisiest layers: 0 (5.8 dB), "
        "3 (6.9 dB), 5 (9.7 dB) (below the thresholds, accepted)",
    ]


def test_weight_only_and_k_means_reports_name_their_bits():
    model = _model()
    ds.quantize_(model, ds.LinearQuantConfig(bits=4, per_channel=False, activation_bits=None))
    assert str(ds.quantization_report(model)).splitlines() == [
        "0: int4 w (weight-only)", "3: int4 w (weight-only)", "5: int4 w (weight-only)",
        "activation calibration: minmax"]  # fmt: skip
    model = _model()
    ds.cluster_(model, ds.KMeansConfig(bits=3, overrides={"5": None}))
    assert str(ds.quantization_report(model)).splitlines() == [
        "0: k-means 3-bit", "3: k-means 3-bit", "not quantized: 5 (skipped by an override)"]


def test_quantize_refusals_say_what_to_pass_instead():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    takes = "quantize_ takes one of LinearQuantConfig, Float16Config, PowerOfTwoConfig, BinaryConfig, TernaryConfig"
    cases = [
        (lambda: ds.quantize_(model, ds.LinearQuantConfig()),
         "activation quantization needs calib_data (a few hundred representative inputs): pass calib_data=data.calib, "
         "or activation_bits=None for weight-only quantization"),
        (lambda: ds.quantize_(model, ds.KMeansConfig(bits=3)),
         f"{takes}, not KMeansConfig (k-means weight sharing is cluster_)"),
        (lambda: ds.quantize_(model, ds.ChannelPruneConfig(ratio=0.5)),
         f"{takes}, not ChannelPruneConfig (k-means weight sharing is cluster_)"),
        (lambda: ds.quantize_(model, ds.LinearQuantConfig(activation_bits=None, overrides={"fc9": None, "re:x.*": 4})),
         "no quantizable layer matches 'fc9', 're:x.*'"),
        (lambda: ds.cluster_(model, ds.KMeansConfig(bits=3, overrides={"nope": 2})),
         "no quantizable layer matches 'nope'"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ds.ConfigError) as err:
            call()
        assert str(err.value) == message
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)  # nothing was changed on the way
