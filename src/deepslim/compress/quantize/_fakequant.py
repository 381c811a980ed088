"""Affine (linear) quantization arithmetic, computed exactly as integer runtimes and PyTorch's fake-quant do.

q = clamp(round(x / s) + z, qmin, qmax);  x̂ = (q − z) · s, with round half to even and the division done as a
multiplication by 1/s (as ``torch.fake_quantize_per_*_affine``), so the simulation agrees bit for bit.
Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
"""

from __future__ import annotations

import torch


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code: signed symmetric codes leave out −2^(b−1) (so +/− are balanced)."""
    if signed:
        return -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, *, symmetric: bool,
                  signed: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Scale and zero point covering [lo, hi] (per tensor, or per channel when lo/hi are vectors).

    The range always contains 0 so that zero (padding, ReLU output, pruned weights) is represented exactly.
    """
    qmin, qmax = qrange(bits, signed)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        bound = torch.maximum(-lo, hi)
        scale = bound / ((qmax - qmin) / 2)
        zero = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = (qmin - torch.round(lo / scale.clamp_min(1e-12))).clamp(qmin, qmax).to(torch.int32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor: any scale represents it
    return scale.float(), zero


def _per_axis(x: torch.Tensor, t: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None:
        return t
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.view(shape)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
                   axis: int | None = None) -> torch.Tensor:  # fmt: skip
    """The integer codes of ``x`` (as floats holding integers), per channel along ``axis`` for vector scales."""
    inv = 1.0 / _per_axis(x, scale, axis)
    return torch.clamp(torch.round(x * inv) + _per_axis(x, zero, axis), qmin, qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
                  axis: int | None = None) -> torch.Tensor:  # fmt: skip
    """Quantize and dequantize ``x``; per channel along ``axis`` when scale/zero are vectors."""
    q = quantize_codes(x, scale, zero, qmin, qmax, axis)
    return (q - _per_axis(x, zero, axis)) * _per_axis(x, scale, axis)


def sqnr_db(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x - approx).double().pow(2).sum()
    return float(10 * torch.log10(x.double().pow(2).sum() / noise.clamp_min(1e-30)))
