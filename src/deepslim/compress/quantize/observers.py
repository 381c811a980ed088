"""Calibration: choosing the clipping range of activations from sample data.

- ``minmax``: the observed extremes.
- ``percentile``: the 99.99th percentile of |x| (robust to rare outliers).
- ``mse``: the clipping threshold that minimizes the quantization mean-squared error on the samples.
- ``entropy``: the threshold that minimizes the KL divergence between the original and quantized histograms
  (Migacz, "8-bit Inference with TensorRT", GTC 2017).
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch

from deepslim.compress.quantize._fakequant import affine_params, fake_quantize, qrange


class Calibration(Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"


class Observer:
    """Accumulates statistics of one tensor over calibration batches, then proposes (lo, hi)."""

    max_samples = 1 << 18

    def __init__(self, method: Calibration, bits: int, percentile: float = 99.99):
        self.method, self.bits, self.percentile = method, bits, percentile
        self.lo, self.hi = float("inf"), float("-inf")
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.gen = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if self.method is not Calibration.MINMAX:
            take = min(x.numel(), self.max_samples // 8)
            idx = torch.randint(0, x.numel(), (take,), generator=self.gen) if take < x.numel() else slice(None)
            self.samples.append(x[idx].cpu())
        self.count += 1

    def range(self) -> tuple[float, float]:
        if self.count == 0:
            raise RuntimeError("observer saw no data")
        if self.method is Calibration.MINMAX or self.hi <= self.lo:
            return self.lo, self.hi
        data = torch.cat(self.samples)
        if self.method is Calibration.PERCENTILE:
            lo = float(torch.quantile(data, 1 - self.percentile / 100)) if self.lo < 0 else 0.0
            return min(lo, 0.0), float(torch.quantile(data, self.percentile / 100))
        if self.method is Calibration.MSE:
            return _mse_range(data, self.lo, self.hi, self.bits)
        return _entropy_range(data, self.lo, self.hi, self.bits)


def _mse_range(data: torch.Tensor, lo: float, hi: float, bits: int) -> tuple[float, float]:
    signed = lo < 0
    qmin, qmax = qrange(bits, False)
    best, best_err = (lo, hi), float("inf")
    for frac in np.linspace(0.05, 1.0, 96):
        clo, chi = lo * frac, hi * frac
        scale, zero = affine_params(torch.tensor(clo), torch.tensor(chi), bits, symmetric=False, signed=False)
        err = float((fake_quantize(data, scale, zero, qmin, qmax) - data).pow(2).mean())
        if err < best_err:
            best, best_err = (clo if signed else min(clo, 0.0), chi), err
    return best


def _entropy_range(data: torch.Tensor, lo: float, hi: float, bits: int, bins: int = 2048) -> tuple[float, float]:
    """TensorRT's KL calibration on |x|, applied symmetrically around zero (one-sided for non-negative data).

    Two departures from the algorithm as published, each of which made it clip most of the data: exact zeros (a
    ReLU's spike) are left out of the histogram -- zero is a grid point of every candidate, so they are represented
    exactly and add nothing to any divergence, but they sat in one bin whose mass the merged levels smeared, and
    only candidates whose first level held that bin alone escaped; and the candidate distribution is not
    renormalised over the kept bins -- the clipped mass is missing from it, which costs log(1 / kept fraction), so
    that data far from zero cannot be clipped into one bin for free (values in [0.4, 2.9] gave 0.402).
    """
    amax = max(abs(lo), abs(hi))
    mags = data.abs().numpy().astype(np.float64)
    mags = mags[mags > 0]
    if mags.size == 0:
        return (-amax if lo < 0 else 0.0), amax
    hist, edges = np.histogram(mags, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    levels = 2 ** (bits - 1) if lo < 0 else 2**bits
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        kl = _clipped_kl(hist, i, levels)
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = float(edges[best_i])
    return (-threshold if lo < 0 else 0.0), threshold


def _clipped_kl(hist: np.ndarray, i: int, levels: int) -> float:
    """KL(p || q) of the threshold at bin ``i``: p is the histogram with the tail clipped into bin i - 1, q the first i
    bins merged into ``levels`` equal levels and spread back over the bins where p is non-zero, both divided by the
    whole count (q then sums to the kept fraction). Infinite where p has mass that q lacks, as in the definition
    (the clipped tail alone in a level: a small floor there made such clipping nearly free)."""
    total = hist.sum()
    p = hist[:i].copy()
    p[i - 1] += hist[i:].sum()
    q = np.zeros(i)
    for c in np.array_split(np.arange(i), levels):
        nonzero = p[c] > 0
        if nonzero.any():
            q[c[nonzero]] = hist[c].sum() / nonzero.sum()
    mask = p > 0
    if not (q[mask] > 0).all():  # clipped mass in a level that holds no kept sample: q cannot produce it
        return float("inf")
    return float(np.sum(p[mask] / total * np.log(p[mask] / q[mask])))
