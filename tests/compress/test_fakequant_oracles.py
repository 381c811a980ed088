"""Affine quantization arithmetic against PyTorch's own observers and fake-quant kernels, on signed and skewed data,
per tensor and per channel, at bit widths other than 8 (the ranges come from PyTorch's observers, not from ours)."""

import math

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from deepslim.compress.quantize._fakequant import affine_params, fake_quantize, qrange, quantize_codes, sqnr_db


def test_qrange_golden_values():
    assert qrange(8, True) == (-127, 127) and qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-7, 7) and qrange(4, False) == (0, 15) and qrange(2, True) == (-1, 1)


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 3.0), (-5.0, -2.0), (0.5, 2.0), (-0.3, 0.1)])
@pytest.mark.parametrize("bits", [8, 4])
def test_asymmetric_parameters_match_pytorchs_minmax_observer(lo, hi, bits):
    qmin, qmax = qrange(bits, False)
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=qmin, quant_max=qmax)
    obs(torch.tensor([lo, hi]))
    ref_scale, ref_zero = obs.calculate_qparams()
    scale, zero = affine_params(torch.tensor(lo), torch.tensor(hi), bits, symmetric=False, signed=False)
    assert scale.item() == pytest.approx(ref_scale.item(), rel=1e-6) and zero.item() == ref_zero.item()
    assert zero.dtype == torch.int32


@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_signed_parameters_match_pytorchs_observer(bits):
    qmin, qmax = qrange(bits, True)
    x = torch.tensor([-0.7, 0.2, 2.5])
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=qmin, quant_max=qmax)
    obs(x)
    ref_scale, ref_zero = obs.calculate_qparams()
    scale, zero = affine_params(x.min(), x.max(), bits, symmetric=True, signed=True)
    assert scale.item() == pytest.approx(ref_scale.item(), rel=1e-6) and zero.item() == ref_zero.item() == 0
    # symmetric unsigned codes centre zero: 8 bits -> 128, 4 bits -> 8
    _, zero_u = affine_params(x.min(), x.max(), bits, symmetric=True, signed=False)
    assert zero_u.item() == 2 ** (bits - 1)
    assert scale.item() == pytest.approx(2.5 / ((qmax - qmin) / 2))


@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_bound_is_the_larger_magnitude_even_when_it_is_negative(bits):
    qmin, qmax = qrange(bits, True)
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=qmin, quant_max=qmax)
    obs(torch.tensor([-3.0, 1.0]))
    ref_scale, _ = obs.calculate_qparams()
    scale, zero = affine_params(torch.tensor(-3.0), torch.tensor(1.0), bits, symmetric=True, signed=True)
    assert scale.item() == pytest.approx(ref_scale.item(), rel=1e-6) == pytest.approx(3.0 / qmax)
    assert zero.dtype == torch.int32 and zero.item() == 0
    _, zero_u = affine_params(torch.tensor(-3.0), torch.tensor(1.0), bits, symmetric=True, signed=False)
    assert zero_u.dtype == torch.int32 and zero_u.item() == 2 ** (bits - 1)


def test_asymmetric_signed_parameters_match_pytorchs_qint8_observer():
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-127, quant_max=127)
    obs(torch.tensor([-0.4, 2.0]))
    ref_scale, ref_zero = obs.calculate_qparams()
    scale, zero = affine_params(torch.tensor(-0.4), torch.tensor(2.0), 8, symmetric=False, signed=True)
    assert scale.item() == pytest.approx(ref_scale.item(), rel=1e-6) and zero.item() == ref_zero.item() == -85


def test_per_channel_parameters_match_pytorchs_per_channel_observer():
    torch.manual_seed(0)
    w = torch.randn(6, 5) * torch.tensor([0.1, 1.0, 3.0, 0.01, 2.0, 0.5])[:, None] + torch.linspace(-1, 1, 6)[:, None]
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine)
    obs(w)
    ref_scale, ref_zero = obs.calculate_qparams()
    scale, zero = affine_params(w.amin(1), w.amax(1), 8, symmetric=False, signed=False)
    torch.testing.assert_close(scale, ref_scale.float(), rtol=1e-6, atol=0)
    assert torch.equal(zero.long(), ref_zero.long())


def test_an_all_zero_range_gets_scale_one_and_zero_stays_exact():
    scale, zero = affine_params(torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]), 8, symmetric=True, signed=True)
    assert scale.tolist() == [1.0, pytest.approx(1 / 127), 1.0] and zero.tolist() == [0, 0, 0]
    # a range that excludes 0 is widened to include it, so 0 quantizes to itself
    scale, zero = affine_params(torch.tensor(2.0), torch.tensor(4.0), 8, symmetric=False, signed=False)
    assert scale.item() == pytest.approx(4 / 255) and zero.item() == 0
    assert fake_quantize(torch.tensor([0.0]), scale, zero, 0, 255).item() == 0.0


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (8, True), (4, False), (3, True)])
def test_fake_quantize_per_tensor_matches_torch_on_skewed_signed_data(bits, signed):
    torch.manual_seed(1)
    x = torch.cat([torch.randn(500) * 0.2 - 0.3, torch.rand(20) * 4])  # mostly negative, a long positive tail
    qmin, qmax = qrange(bits, signed)
    scale, zero = affine_params(x.min(), x.max(), bits, symmetric=signed, signed=signed)
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero.item()), qmin, qmax)
    assert torch.equal(fake_quantize(x, scale, zero, qmin, qmax), ref)
    codes = quantize_codes(x, scale, zero, qmin, qmax)
    assert codes.min() >= qmin and codes.max() <= qmax and torch.equal(codes, codes.round())
    assert codes.min() == qmin or codes.max() == qmax  # the range is used up to one end


@pytest.mark.parametrize("axis", [0, 1])
def test_fake_quantize_per_channel_matches_torch_along_either_axis(axis):
    torch.manual_seed(2)
    x = torch.randn(4, 6) * torch.arange(1, 7) - 0.5
    lo, hi = x.amin(1 - axis), x.amax(1 - axis)
    scale, zero = affine_params(lo, hi, 8, symmetric=False, signed=False)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zero, axis, 0, 255)
    assert torch.equal(fake_quantize(x, scale, zero, 0, 255, axis=axis), ref)


def test_clamping_and_round_half_to_even_codes():
    scale, zero = torch.tensor(0.5), torch.tensor(2, dtype=torch.int32)
    x = torch.tensor([-10.0, -0.25, 0.25, 0.75, 1.25, 100.0])
    # x/s = -20, -0.5, 0.5, 1.5, 2.5, 200 -> round half even -20, -0, 0, 2, 2, 200; +2; clamp to [0, 7]
    assert quantize_codes(x, scale, zero, 0, 7).tolist() == [0.0, 2.0, 2.0, 4.0, 4.0, 7.0]
    assert fake_quantize(x, scale, zero, 0, 7).tolist() == [-1.0, 0.0, 0.0, 1.0, 1.0, 2.5]


def test_sqnr_golden_values():
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert sqnr_db(x, torch.tensor([1.0, -1.0, 1.0, 0.0])) == pytest.approx(10 * math.log10(4))
    assert sqnr_db(x, x * 0.9) == pytest.approx(20.0)  # noise power 1% of the signal's
    assert sqnr_db(x, x) == pytest.approx(10 * math.log10(4 / 1e-30))  # no noise: bounded, not inf
