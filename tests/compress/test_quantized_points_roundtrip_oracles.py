"""A statically quantized model with activation points (a residual addition) saved as .pt and as .dsz loads back
with the same points, calibrated the same, and computes exactly what it computed before saving."""

import pytest
import torch

import deepslim as ds
from deepslim.compress.quantize import LinearQuantConfig, quantize_
from deepslim.compress.quantize._points import points_of

FACTORY = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        return self.head(h + torch.relu(self.mix(h)))


def make():
    return Residual()
"""


@pytest.mark.parametrize("suffix", [".pt", ".dsz"])
def test_a_quantized_model_with_points_round_trips_through_its_file(tmp_path, suffix):
    (tmp_path / "net.py").write_text(FACTORY)
    arch = f"{tmp_path / 'net.py'}:make"
    torch.manual_seed(0)
    model = ds.load_model(arch).eval()
    quantize_(model, LinearQuantConfig(min_cosine=0.0), calib_data=[torch.randn(64, 8)])
    points = [(float(p.scale), int(p.zero), p.enabled) for p in points_of(model)]
    assert points and all(enabled for _, _, enabled in points)
    x = torch.randn(5, 8)
    with torch.no_grad():
        before = model(x)
    path = ds.save_model(model, tmp_path / f"m{suffix}", example_input=x)
    back = ds.load_model(path, arch=arch).eval()
    assert [(float(p.scale), int(p.zero), p.enabled) for p in points_of(back)] == points
    with torch.no_grad():
        assert torch.equal(back(x), before)
