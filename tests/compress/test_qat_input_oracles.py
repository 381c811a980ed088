"""QAT learns the activation scale with LSQ's gradient scaled by 1/sqrt(N * Qp) (Esser et al., 2020: N features per
example, Qp the top code), not by 1: the scale's gradient must equal that of the learnable fake-quantizer given that
factor, and differ from the unscaled one."""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepslim as ds


def test_the_activation_scale_learns_with_lsqs_gradient_scale():
    torch.manual_seed(0)
    x = torch.randn(32, 6) * 2.0 - 0.5  # negative values too: an asymmetric range with a zero point
    model = nn.Sequential(nn.Linear(6, 4))
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, qat=True),
                 calib_data=DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=8))  # fmt: skip
    layer = model[0]
    assert isinstance(layer.act_scale, nn.Parameter)
    batch = x[:8].clone()
    layer.quantized_input(batch).pow(2).sum().backward()
    got = layer.act_scale.grad.clone()

    def reference(factor):
        s = layer.act_scale.detach().clone().view(1).requires_grad_(True)
        out = torch._fake_quantize_learnable_per_tensor_affine(batch, s, layer.act_zero.float().view(1), 0, 255, factor)
        out.pow(2).sum().backward()
        return s.grad

    lsq = reference(1.0 / math.sqrt(6 * 255))
    torch.testing.assert_close(got.view(1), lsq)
    assert not torch.allclose(lsq, reference(1.0))
