"""A refused quantization leaves the model as it was: its own class and forward (the traced one with points gone),
no points, no fidelity record, and the calibration record it had before (or none) — and the same outputs. Also: a
point's zero point is an int32 buffer (what an integer runtime's zero point is), before and after calibration."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from deepslim.compress.quantize import LinearQuantConfig, QuantizationError, quantize_
from deepslim.compress.quantize._fidelity import FIDELITY_ATTR
from deepslim.compress.quantize._points import POINTS_ATTR, ActPoint, points_of, remove_points_
from deepslim.compress.quantize.observers import Calibration


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        return self.head(h + torch.relu(self.mix(h)))  # a residual addition: quantization points go in


def _refused_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(embed=nn.Linear(16, 32), act=nn.ReLU(), mix=nn.Linear(32, 32),
                                      act2=nn.ReLU(), head=nn.Linear(32, 10))).eval()  # fmt: skip
    with torch.no_grad():  # one channel ~1000x the others: per-tensor u8 activations round the rest to 0
        model.embed.bias[0] = 2000.0
        model.mix.weight[:, 0] = 0.0
    return model


@pytest.mark.parametrize("previous", [None, Calibration.PERCENTILE])
def test_a_refused_quantization_puts_back_the_class_the_points_and_the_calibration_record(previous):
    model = _refused_model()
    if previous is not None:
        model.deepslim_calibration = previous
    x = torch.randn(8, 16)
    before = model(x)
    with pytest.raises(QuantizationError):
        quantize_(model, LinearQuantConfig(min_cosine=0.99), calib_data=[torch.randn(32, 16)])
    assert type(model) is nn.Sequential and not hasattr(model, POINTS_ATTR)
    assert not hasattr(model, FIDELITY_ATTR) and not list(points_of(model))
    assert getattr(model, "deepslim_calibration", None) is previous
    assert torch.equal(model(x), before)


def test_removing_all_points_gives_the_model_its_class_back_and_removing_some_disables_them():
    torch.manual_seed(0)
    model = _Residual().eval()
    x = torch.randn(4, 16)
    quantize_(model, LinearQuantConfig(min_cosine=0.0), calib_data=[x])
    points = list(points_of(model))
    assert len(points) >= 2 and type(model) is not _Residual and isinstance(model, _Residual)
    partial = copy.deepcopy(model)
    remove_points_(model, points)
    assert type(model) is _Residual and not hasattr(model, POINTS_ATTR)
    some = list(points_of(partial))
    for p in some:
        p.enabled = True
    remove_points_(partial, some[:1])
    assert type(partial) is not _Residual and hasattr(partial, POINTS_ATTR)  # the others still there
    assert [p.enabled for p in points_of(partial)] == [False] + [True] * (len(some) - 1)
    remove_points_(partial, [])  # nothing to do
    assert hasattr(partial, POINTS_ATTR)


def test_a_points_zero_point_is_an_int32_buffer_before_and_after_calibration():
    p = ActPoint()
    assert p.zero.dtype == torch.int32 and p.scale.dtype == torch.float32
    p.observer = __import__("deepslim.compress.quantize.observers", fromlist=["Observer"]).Observer(
        Calibration.MINMAX, 8)
    p(torch.tensor([-1.0, 3.0]))
    p.freeze()
    assert p.zero.dtype == torch.int32 and int(p.zero) == 64 and p.enabled
    assert p.extra_repr() == "scale=0.01569, zero=64"
