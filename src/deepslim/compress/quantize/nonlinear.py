"""Non-linear weight encodings: k-means weight sharing, power-of-two, binary and ternary weights.

- k-means weight sharing: Han et al., "Deep Compression", ICLR 2016 — per layer a codebook of 2^bits shared values
  (linear initialization, which the paper found best) and an index per weight. Fine-tuning updates each centroid by
  the summed gradient of its members; zeros of a pruned layer stay zero and are not a cluster.
- power-of-two (logarithmic): Miyashita et al., "Convolutional Neural Networks using Logarithmic Data
  Representation", 2016 — each weight becomes ±2^k, so multiplications become shifts.
- binary: Rastegari et al., "XNOR-Net", ECCV 2016 (binary-weight form): W ≈ α·sign(W), α = mean |W| per filter.
- ternary: Li & Liu, "Ternary Weight Networks", 2016: W ∈ {−α, 0, +α}, threshold Δ = 0.7·mean |W|.
All are parametrizations of the layer's weight, so training (straight-through estimator) works through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim.config import Config, Overrides, coerce_enum, freeze_overrides, skip_only
from deepslim.errors import ConfigError


class KMeansInit(Enum):
    LINEAR = "linear"  # evenly spaced between min and max (Deep Compression's choice)
    DENSITY = "density"  # at quantiles of the weight distribution
    RANDOM = "random"  # random weights of the layer (Forgy)


@dataclass(frozen=True, kw_only=True)
class KMeansConfig(Config):
    """Share ``bits``-bit codebooks per layer; ``overrides`` maps layers to their own bit-width or None (skip)."""

    bits: int = 5
    init: KMeansInit = KMeansInit.LINEAR
    iterations: int = 30
    share_bias: bool = False  # biases get a codebook of their own too (with the layer's bit-width)
    overrides: Overrides[int | None] = ()

    def __post_init__(self) -> None:
        _check_range("bits", self.bits, 1, 8)
        coerce_enum(self, "init", KMeansInit)
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, lambda w, v: _check_range(w, v, 1, 8)))


@dataclass(frozen=True, kw_only=True)
class PowerOfTwoConfig(Config):
    """Each weight becomes 0 or ±2^k with ``bits`` bits per weight (1 sign bit, the rest the exponent)."""

    bits: int = 4
    overrides: Overrides[int | None] = ()

    def __post_init__(self) -> None:
        _check_range("bits", self.bits, 2, 8)
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, lambda w, v: _check_range(w, v, 2, 8)))


@dataclass(frozen=True, kw_only=True)
class BinaryConfig(Config):
    """Weights α·sign(W) with one α per output channel (1 bit per weight); ``overrides`` can skip layers (None)."""

    overrides: Overrides[None] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, skip_only("binary")))


@dataclass(frozen=True, kw_only=True)
class TernaryConfig(Config):
    """Weights in {−α, 0, +α} per output channel, threshold ``threshold_factor``·mean|W| (2 bits per weight)."""

    threshold_factor: float = 0.7
    overrides: Overrides[None] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold_factor < 2.0:
            raise ConfigError(f"threshold_factor must be in (0, 2), got {self.threshold_factor}")
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, skip_only("ternary")))


def _check_range(what: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")


# -- k-means weight sharing ---------------------------------------------------------------------------------------


def kmeans_1d(values: torch.Tensor, k: int, init: KMeansInit, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on scalars: (centroids (k,), assignment of each value)."""
    v = values.double()
    k = min(k, v.numel())
    if init is KMeansInit.LINEAR:
        centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    elif init is KMeansInit.DENSITY:
        centroids = torch.quantile(v, torch.linspace(0, 1, k, dtype=torch.float64))
    else:
        gen = torch.Generator().manual_seed(0)
        centroids = v[torch.randperm(v.numel(), generator=gen)[:k]].clone()
    assign = torch.zeros(v.numel(), dtype=torch.long)
    for _ in range(iterations):
        # sorted centroids: each value's nearest is found by binary search on the midpoints
        centroids, _ = centroids.sort()
        mids = (centroids[1:] + centroids[:-1]) / 2
        new = torch.searchsorted(mids, v)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, new, v)
        counts = torch.bincount(new, minlength=k).double()
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(new, assign) and torch.allclose(updated, centroids):
            break
        assign, centroids = new, updated
    return centroids.float(), assign


class SharedWeight(nn.Module):
    """Parametrization whose trainable tensor is the codebook: weight = codebook[index] (0 where pruned).

    Because the weight is an indexing of the codebook, backpropagation sums the gradients of all members of a
    cluster into its centroid — Deep Compression's centroid fine-tuning — and the number of distinct values never
    grows.
    """

    def __init__(self, index: torch.Tensor, keep: torch.Tensor, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("index", index)
        self.register_buffer("keep", keep)

    index: torch.Tensor
    keep: torch.Tensor

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, codebook[self.index], torch.zeros((), dtype=codebook.dtype))

    def right_inverse(self, codebook: torch.Tensor) -> torch.Tensor:
        return codebook

    def deepslim_storage_bytes(self, original: torch.Tensor, weight: torch.Tensor) -> int:
        """Indices plus the fp32 codebook (the profiler reads this through the parametrization)."""
        return _code_bytes(weight, self.bits) + 4 * original.numel()


def share_weights_(m: nn.Module, bits: int, init: KMeansInit, iterations: int, name: str = "weight") -> None:
    w = getattr(m, name).detach()
    keep = w != 0
    values = w[keep].flatten().float().cpu()
    if values.numel() == 0:
        return
    centroids, assign = kmeans_1d(values, 2**bits, init, iterations)
    index = torch.zeros(w.shape, dtype=torch.long)
    index[keep.cpu()] = assign
    param = SharedWeight(index.to(w.device), keep, bits)
    # register with the codebook as the stored tensor: right_inverse receives it as the "weight"
    with torch.no_grad():
        setattr(m, name, nn.Parameter(centroids.to(w.device, w.dtype)))
    parametrize.register_parametrization(m, name, param, unsafe=True)


# -- elementwise encodings (straight-through estimator) ------------------------------------------------------------


def _code_bytes(weight: torch.Tensor, bits: int) -> int:
    return math.ceil(weight.numel() * bits / 8)


class _Elementwise(nn.Module):
    bits: int
    scaled = False  # one fp32 α per output channel stored beside the codes

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def deepslim_storage_bytes(self, original: torch.Tensor, weight: torch.Tensor) -> int:
        return _code_bytes(weight, self.bits) + (4 * weight.shape[0] if self.scaled else 0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # straight-through estimator; written so the forward value is exactly the encoding (w − w is exactly 0)
        return self.encode(w).detach() + (w - w.detach())


class PowerOfTwo(_Elementwise):
    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        levels = 2 ** (self.bits - 1) - 1  # exponents available besides zero
        top = torch.floor(torch.log2(w.abs().max().clamp_min(1e-30)))
        exp = torch.round(torch.log2(w.abs().clamp_min(1e-30)))
        exp = exp.clamp(max=top)
        zero = exp < top - levels + 1  # below the smallest representable power: zero
        return torch.where(zero, torch.zeros_like(w), torch.sign(w) * torch.exp2(exp))


class Binary(_Elementwise):
    bits, scaled = 1, True

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        alpha = w.abs().flatten(1).mean(1).view(-1, *([1] * (w.ndim - 1)))
        return alpha * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


class Ternary(_Elementwise):
    bits, scaled = 2, True

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.abs().flatten(1)
        delta = (self.factor * flat.mean(1)).view(-1, *([1] * (w.ndim - 1)))
        mask = w.abs() > delta
        alpha = (w.abs() * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        return torch.sign(w) * mask * alpha.view_as(delta)


