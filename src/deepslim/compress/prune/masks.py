"""Unstructured and N:M sparsity with persistent masks.

Magnitude pruning: Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015.
N:M semi-structured sparsity: Mishra et al., "Accelerating Sparse Deep Neural Networks" (NVIDIA Ampere 2:4), 2021.

A mask is a parametrization (``torch.nn.utils.parametrize``): the layer's effective weight is ``original * mask`` at
every forward, so the gradient of a masked weight is zero and no optimizer step can bring it back. ``bake_masks_``
writes the masked weights into plain parameters and removes the parametrization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim.config import Config, Overrides, coerce_enum, freeze_overrides, lookup, skip_only, unmatched
from deepslim.errors import ConfigError
from deepslim.models.adapters import layer_kind, weight_layers, weight_of

log = logging.getLogger(__name__)
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the built-in kinds; any registered layer kind is prunable


class Scope(Enum):
    LAYER = "layer"  # every layer loses the same fraction of its weights
    GLOBAL = "global"  # one magnitude threshold for the whole model


@dataclass(frozen=True, kw_only=True)
class MagnitudePruneConfig(Config):
    """Zero the ``sparsity`` fraction of smallest-magnitude weights (per layer, or under one global threshold).

    ``overrides`` maps layer names or ``re:`` patterns to their own sparsity, or None to leave the layer dense.
    """

    sparsity: float
    scope: Scope = Scope.LAYER
    overrides: Overrides[float | None] = ()

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        coerce_enum(self, "scope", Scope)
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, _check_fraction))


@dataclass(frozen=True, kw_only=True)
class NMPruneConfig(Config):
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input (reduction) dimension."""

    n: int = 2
    m: int = 4
    overrides: Overrides[None] = ()  # layer -> None skips it

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ConfigError(f"N:M sparsity needs integers 0 < n < m, got {self.n}:{self.m}")
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, skip_only("NMPruneConfig")))


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value}")


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask``; the mask is a buffer, so it is saved and moved with the model."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask: torch.Tensor
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # where, not multiply: a pruned weight is +0.0 (w · 0 would give −0.0 for negative w, and the archive's sparse
        # layout stores +0.0 implicitly); the gradient of a pruned weight is still zero
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weight maps input to output channels: convolutions, linear layers and their subclasses, HF
    ``Conv1D`` and every layer kind registered with ``register_layer_kind`` (a weight parametrized by weight_norm
    is masked after it is computed). Weights tied to another module (an LM head sharing the embedding table) are
    left out and logged: a mask would prune one of the two uses only."""
    layers = {name: m for name, (m, _) in weight_layers(model).items()}
    holders: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name)
    tied = {n for names in holders.values() if len(names) > 1 for n in names if n in layers}
    if tied:
        log.warning("left unpruned (weight tied with another module): %s", ", ".join(sorted(tied)))
    return {n: m for n, m in layers.items() if n not in tied}


def current_mask(m: nn.Module) -> WeightMask | None:
    if parametrize.is_parametrized(m, "weight"):
        plist: Any = m.parametrizations
        return next((p for p in plist["weight"] if isinstance(p, WeightMask)), None)
    return None


def set_mask_(m: nn.Module, mask: torch.Tensor) -> None:
    """Install or tighten the layer's mask (an existing mask is intersected: pruned weights stay pruned)."""
    existing = current_mask(m)
    if existing is not None:
        existing.mask &= mask.to(device=existing.mask.device, dtype=torch.bool)
    else:
        parametrize.register_parametrization(m, "weight", WeightMask(mask.to(weight_of(m).device)))


def magnitude_masks(model: nn.Module, config: MagnitudePruneConfig) -> dict[str, torch.Tensor]:
    layers = prunable_layers(model)
    _check_overrides(config.overrides, layers)
    targets = {n: lookup(config.overrides, n, default=...) for n in layers}
    masks: dict[str, torch.Tensor] = {}
    pooled = [n for n, t in targets.items() if t is ...]
    if config.scope is Scope.GLOBAL and pooled and config.sparsity > 0:
        magnitudes = torch.cat([weight_of(layers[n]).detach().abs().flatten().float().cpu() for n in pooled])
        k = int(round(config.sparsity * magnitudes.numel()))
        threshold = torch.kthvalue(magnitudes, k).values.item() if k > 0 else -1.0
        for n in pooled:
            masks[n] = weight_of(layers[n]).detach().abs() > threshold
    else:
        targets.update(dict.fromkeys(pooled, config.sparsity))
    for n, sparsity in targets.items():
        if n in masks or sparsity is None or sparsity is ...:
            continue
        masks[n] = _layer_mask(weight_of(layers[n]).detach(), sparsity)
    return masks


def _layer_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(round(sparsity * w.numel()))
    if k == 0:
        return torch.ones_like(w, dtype=torch.bool)
    order = w.abs().flatten().argsort()  # ties broken by position: exactly k weights go
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    mask[order[:k]] = False
    return mask.view_as(w)


def nm_masks(model: nn.Module, config: NMPruneConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Masks for every layer whose reduction dimension divides by m; the others are listed as skipped."""
    layers = prunable_layers(model)
    _check_overrides(config.overrides, layers)
    masks, skipped = {}, []
    for name, m in layers.items():
        if lookup(config.overrides, name, default=...) is None:
            continue
        kind = layer_kind(m)
        if kind is None or kind.in_dim is None:
            continue  # prunable_layers holds only layers with input channels
        w, in_dim = weight_of(m).detach(), kind.in_dim
        # reduction dimension last: (out, in) for Linear; (out, k…, in) for convolutions (channels-last, as kernels use)
        wl = w.movedim(in_dim, -1)
        if wl.shape[-1] % config.m:
            skipped.append(f"{name} ({wl.shape[-1]} inputs not divisible by {config.m})")
            continue
        blocks = wl.abs().reshape(-1, config.m)
        keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, blocks.topk(config.n, dim=1).indices, True)
        keep = keep.view_as(wl)
        masks[name] = keep.movedim(-1, in_dim)
    return masks, skipped


def _check_overrides(overrides: tuple[tuple[str, Any], ...], layers: dict[str, nn.Module]) -> None:
    bad = unmatched(overrides, layers)
    if bad:
        raise ConfigError(f"no prunable layer matches {', '.join(map(repr, bad))}; prunable: {', '.join(layers)}")


def bake_masks_(model: nn.Module) -> nn.Module:
    """Make masked weights plain parameters (zeros included) and drop the masks."""
    for m in model.modules():
        if current_mask(m) is not None:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable layer (masked or baked)."""
    return {n: 1.0 - float(torch.count_nonzero(weight_of(m))) / weight_of(m).numel()
            for n, m in prunable_layers(model).items()}  # fmt: skip
