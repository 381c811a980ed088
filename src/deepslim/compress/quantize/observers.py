"""Calibration: choosing the clipping range of activations from sample data.

- ``minmax``: the observed extremes.
- ``percentile``: the 99.99th percentile of |x| (robust to rare outliers).
- ``mse``: the clipping threshold that minimizes the quantization mean-squared error on the samples.
- ``entropy``: the range that minimizes the KL divergence between the clipped and the quantized histograms
  (Migacz, "8-bit Inference with TensorRT", GTC 2017), on the grid the range is deployed with (u8, asymmetric).
- ``dynamic``: no calibrated range at all: each batch's input is quantized over its own range at run time, as ONNX
  Runtime's ``DynamicQuantizeLinear`` does (u8, [min(x, 0), max(x, 0)] per tensor), with s8 per-channel weights;
  exported as ONNX Runtime's dynamic int8 (``MatMulInteger``/``QAttention``), for transformer encoders whose
  activations no fixed range fits (see :mod:`deepslim.compress.quantize._dynamic`).
- ``auto`` (the default): ``dynamic`` for a model whose encoder ONNX Runtime fuses into its ``Attention`` kernel
  (a Hugging Face BERT-style :class:`~deepslim.models.hf.SentenceEncoder`), ``minmax`` for everything else.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch

from deepslim.compress.quantize._fakequant import affine_params, fake_quantize, qrange
from deepslim.errors import ConfigError


class Calibration(Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"
    DYNAMIC = "dynamic"  # per-batch ranges at run time (ONNX Runtime's dynamic int8); no observer
    AUTO = "auto"  # resolved per model by quantize_: DYNAMIC for a fusable transformer encoder, else MINMAX


class Observer:
    """Accumulates statistics of one tensor over calibration batches, then proposes (lo, hi)."""

    max_samples = 1 << 18

    def __init__(self, method: Calibration, bits: int, percentile: float = 99.99):
        if method in (Calibration.AUTO, Calibration.DYNAMIC):  # AUTO resolves first; DYNAMIC observes nothing
            raise ConfigError(f"an Observer calibrates static ranges (minmax, percentile, mse, entropy), not "
                              f"{method.value!r}: resolve calibration='auto' first (quantize_ does)")  # fmt: skip
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
    """The range [a, b] whose quantization loses the least information: TensorRT's KL divergence between the clipped
    histogram and its quantized version, over 2048 bins of [min(lo, 0), max(hi, 0)]; each end is a fraction f of its
    extreme, f on the published candidate grid (every ~1/256 of the way from ``2^bits`` bins to all of them), found by
    scaling both ends together, then the upper end alone, then the lower end alone.

    Three departures from the algorithm as published, each of which made it clip most of some layer's data. The
    levels are the deployed quantizer's: ``2^bits`` rounding cells of the asymmetric grid over [a, b] with an integer
    zero point, not equal chunks of |x| from 0 -- signed data that is not symmetric (a normalized image: a spike at
    the background value -0.81 and bright pixels up to 2.02) was given (-0.81, 0.81), clipping every bright pixel.
    Exact zeros (a ReLU's spike) are left out -- zero is a grid point of every candidate, so they are represented
    exactly; smeared over their level they made the search pick the first level narrow enough to hold them alone
    (0.087 of 11.2 at 4 bits). And the quantized distribution is not renormalised over the kept bins: the clipped
    mass is missing from it, which costs log(1 / kept fraction), so that data far from zero cannot be clipped into
    one level for free (values in [0.4, 2.9] gave 0.402).
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    x = data.numpy().astype(np.float64)
    x = x[x != 0]
    if x.size == 0:
        return lo, hi
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centres, counts, levels = (edges[:-1] + edges[1:]) / 2, hist.astype(np.float64), 2**bits
    fractions = [i / bins for i in range(min(levels, bins), bins + 1, max(1, (bins - levels) // 256))]

    def best(candidates: list[tuple[float, float]]) -> tuple[float, float]:
        kls = [_clipped_kl(counts, centres, a, b, levels) for a, b in candidates]
        return candidates[int(np.argmin(kls))]  # the first of equals

    # both ends scaled together, then the upper end and the lower end on their own (a lone outlier on one side)
    a, b = best([(lo * f, hi * f) for f in fractions])
    b = best([(a, hi * f) for f in fractions if hi * f > 0 or hi == 0])[1]
    a = best([(lo * f, b) for f in fractions if lo * f < 0 or lo == 0])[0]
    return a, b


def _clipped_kl(hist: np.ndarray, centres: np.ndarray, a: float, b: float, levels: int) -> float:
    """KL(p || q) of the range [a, b]: p is the histogram of the bins inside it with the mass outside clipped into its
    first and last bins; q gives each quantization level (the bins whose centres round to it) its count inside the
    range, spread evenly over the level's bins where p is non-zero; both are divided by the whole count, so q sums to
    the kept fraction. Infinite where p has mass that q lacks (clipped mass alone in a level), as in the definition."""
    inside = (centres >= a) & (centres <= b)
    first, last = int(np.argmax(inside)), len(inside) - 1 - int(np.argmax(inside[::-1]))
    kept = hist[first : last + 1]
    p = kept.copy()
    p[0] += hist[:first].sum()
    p[-1] += hist[last + 1 :].sum()
    scale = (b - a) / (levels - 1)
    zero = min(max(round(-a / scale), 0), levels - 1)
    level = np.clip(np.round(centres[first : last + 1] / scale) + zero, 0, levels - 1).astype(np.int64)
    mass = np.bincount(level, weights=kept, minlength=levels)
    shared = np.bincount(level, weights=(p > 0).astype(np.float64), minlength=levels)
    mask = p > 0
    q = mass[level[mask]] / shared[level[mask]]
    if not (q > 0).all():
        return float("inf")
    return float(np.sum(p[mask] / hist.sum() * np.log(p[mask] / q)))
