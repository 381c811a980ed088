"""Pruning: unstructured magnitude, N:M, and structured channel pruning that physically shrinks the model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from deepslim.compress.prune.channel import (
    ChannelPruneConfig,
    ChannelPruneResult,
    Importance,
    dependency_groups,
    plan_channel_pruning,
    prune_channels_,
)
from deepslim.compress.prune.depth import BlockDropConfig, drop_blocks_, droppable_blocks
from deepslim.compress.prune.heads import HeadImportance, HeadPruneConfig, HeadPruneResult, prune_heads_
from deepslim.compress.prune.masks import (
    MagnitudePruneConfig,
    NMPruneConfig,
    Scope,
    bake_masks_,
    magnitude_masks,
    nm_masks,
    set_mask_,
    sparsity,
)
from deepslim.compress.prune.schedule import GradualPruner, iterative_sparsities, polynomial_sparsity
from deepslim.errors import ConfigError

log = logging.getLogger(__name__)
PruneConfig = MagnitudePruneConfig | NMPruneConfig | ChannelPruneConfig | HeadPruneConfig | BlockDropConfig


def _magnitude(model: nn.Module, config: MagnitudePruneConfig, **_: Any) -> None:
    for name, mask in magnitude_masks(model, config).items():
        set_mask_(model.get_submodule(name), mask)


def _nm(model: nn.Module, config: NMPruneConfig, **_: Any) -> None:
    masks, skipped = nm_masks(model, config)
    if skipped:
        log.warning("N:M sparsity skipped %d layer(s): %s", len(skipped), "; ".join(skipped))
    for name, mask in masks.items():
        set_mask_(model.get_submodule(name), mask)


def _channel(model: nn.Module, config: ChannelPruneConfig, *, example_input: torch.Tensor | None,
             calib_data: Iterable[Any] | None) -> None:  # fmt: skip
    if example_input is None:
        raise ConfigError("channel pruning needs example_input (to trace the model and find coupled layers)")
    result = prune_channels_(model, config, example_input, calib_data)
    log.info("channel pruning:\n%s", result)


def _heads(model: nn.Module, config: HeadPruneConfig, *, calib_data: Iterable[Any] | None, **_: Any) -> None:
    prune_heads_(model, config, calib_data)


def _depth(model: nn.Module, config: BlockDropConfig, *, example_input: torch.Tensor | None,
           calib_data: Iterable[Any] | None) -> None:  # fmt: skip
    if example_input is None:
        raise ConfigError("dropping blocks needs example_input (to find the residual blocks and their shapes)")
    drop_blocks_(model, config, example_input, calib_data)


_HANDLERS: dict[type, Callable[..., None]] = {
    MagnitudePruneConfig: _magnitude,
    NMPruneConfig: _nm,
    ChannelPruneConfig: _channel,
    HeadPruneConfig: _heads,
    BlockDropConfig: _depth,
}


def prune_(model: nn.Module, config: PruneConfig, *, example_input: torch.Tensor | None = None,
           calib_data: Iterable[Any] | None = None) -> nn.Module:  # fmt: skip
    """Prune ``model`` in place and return it.

    Magnitude and N:M configs install persistent masks (fine-tuning keeps pruned weights at zero; ``bake_masks_``
    makes them plain zeros). ``ChannelPruneConfig`` removes channels for real and needs ``example_input``;
    ``importance='taylor'`` also needs ``calib_data`` (batches of inputs and labels). ``HeadPruneConfig`` removes
    attention heads and feed-forward hidden units of any attention class an adapter describes (Hugging Face ones
    too); its default importance reads ``calib_data`` (batches of model inputs). ``BlockDropConfig`` replaces whole
    residual blocks by ``nn.Identity`` (elastic depth) and needs ``example_input``; drop blocks before pruning
    channels.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"prune_ takes one of {', '.join(t.__name__ for t in _HANDLERS)}, "
                          f"not {type(config).__name__}")  # fmt: skip
    handler(model, config, example_input=example_input, calib_data=calib_data)
    return model


__all__ = [
    "BlockDropConfig", "ChannelPruneConfig", "ChannelPruneResult", "GradualPruner", "HeadImportance", "HeadPruneConfig",
    "HeadPruneResult", "Importance", "MagnitudePruneConfig", "NMPruneConfig", "Scope", "bake_masks_",
    "dependency_groups", "drop_blocks_", "droppable_blocks", "iterative_sparsities", "plan_channel_pruning",
    "polynomial_sparsity", "prune_", "prune_heads_", "sparsity",
]  # fmt: skip
