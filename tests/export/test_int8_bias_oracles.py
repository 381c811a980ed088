"""The fake-quantized layers add the bias an integer runtime adds: int32 codes at float32(s_x · s_w), as the QDQ
exporter writes it, so ONNX Runtime and PyTorch compute the same int8 model."""

import numpy as np
import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.export.onnx import run_onnx


def _off_grid_(layer, shift=0.4):
    """Move the layer's bias ``shift`` of a bias step off the int32 grid (a float bias rarely sits on it); its step."""
    step = float(layer.act_scale) * layer.weight_codes()[1].reshape(-1).double()
    with torch.no_grad():
        layer.bias.copy_(((torch.round(layer.bias.double() / step) + shift) * step).float())
    return step


@pytest.mark.parametrize("per_channel", [True, False])
def test_an_int8_file_computes_exactly_what_the_fake_quantized_model_does(per_channel, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    ds.quantize_(model, ds.LinearQuantConfig(per_channel=per_channel, accept_low_fidelity=True), calib_data=calib)
    step = min(float(_off_grid_(model[0]).min()), float(_off_grid_(model[2]).min()))
    x = torch.randn(4, 3, 8, 8)
    ds.export_onnx(model, tmp_path / "m.onnx", example_input=x)
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = run_onnx(tmp_path / "m.onnx", (x.numpy(),))
    assert np.abs(theirs - ours).max() < 0.1 * step  # with the float bias: 0.4 of a step off


def test_the_bias_is_rounded_only_where_activations_are_integer_and_gradients_reach_the_float_bias():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    weight_only = ds.quantize_(nn.Sequential(nn.Linear(6, 3)), ds.LinearQuantConfig(activation_bits=None))[0]
    assert weight_only.quantized_bias() is weight_only.bias  # float activations: the float bias
    model = ds.quantize_(nn.Sequential(layer), ds.LinearQuantConfig(accept_low_fidelity=True),
                         calib_data=[torch.randn(32, 6)])  # fmt: skip
    q = model[0]
    step = _off_grid_(q, 0.3).float()
    rounded = q.quantized_bias()
    assert torch.allclose(rounded, torch.round(q.bias.detach().double() / step.double()).float() * step)
    assert not torch.equal(rounded, q.bias.detach())  # 0.3 of a step moved back onto the grid
    rounded.sum().backward()
    assert torch.equal(q.bias.grad, torch.ones(3))  # straight through
