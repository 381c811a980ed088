"""The space's depth choice (kind ``"depth"``): per droppable residual block, keep it or drop it.

At a small input and batch 1 a network's time on ONNX Runtime is mostly per-node cost: the Fashion-MNIST ResNet-20
went no lower than 0.51× of dense with the fewest channels and every layer int8 (BENCHMARKS.md, session 6), so a
budget of 0.5× was out of reach of channels and precisions alone. Dropping a block removes its nodes (elastic depth,
Once-for-All; :mod:`deepslim.compress.prune.depth`). A policy carries ``drop: {block: bool}`` (True: dropped); it
becomes a :class:`BlockDropConfig` that runs *before* channel pruning, so the channel groups are those of the dropped
model. A group or layer that lies inside a dropped block has no say: its channel count, precision, sparsity and
k-means bits are left out of the configs (they would name a layer that is gone).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from deepslim.compress.prune import BlockDropConfig
from deepslim.compress.prune.depth import examine_blocks, inside

V = TypeVar("V")
log = logging.getLogger(__name__)


def blocks_of(model: nn.Module, example_input: Any) -> tuple[str, ...]:
    """The droppable blocks of ``model``: the space's depth choices, in model order. None found is logged as a
    warning with why not (the kind was asked for and adds nothing, as "prune" adds nothing without channel groups)."""
    found = examine_blocks(model, example_input)
    blocks = tuple(name for name, why in found.items() if why is None)
    if not blocks:
        why = "; ".join(f"{name}: {reason}" for name, reason in list(found.items())[:3]) + ("; …" if len(found) > 3
                                                                                             else "")  # fmt: skip
        log.warning("kind 'depth': %s has no droppable residual block (%s), so the space has no depth choice",
                    type(model).__name__, why or "no child of an nn.Sequential")  # fmt: skip
    return blocks


def dropped(drop: Mapping[str, bool]) -> tuple[str, ...]:
    """The blocks a policy drops."""
    return tuple(name for name, gone in drop.items() if gone)


def depth_config(drop: Mapping[str, bool]) -> BlockDropConfig | None:
    """The block drop that carries out ``drop`` (None: every block kept)."""
    gone = dropped(drop)
    return BlockDropConfig(blocks=gone) if gone else None


def settled(values: Mapping[str, V], drop: Mapping[str, bool], fill: Mapping[str, V]) -> dict[str, V]:
    """``values`` with each entry named by a layer (or group) inside a dropped block set to its value in ``fill``
    (the canonical one): the policy builds the same model either way, since :func:`alive` leaves it out."""
    gone = dropped(drop)
    return {name: fill.get(name, v) if gone and inside(name, gone) else v for name, v in values.items()}


def alive(values: Mapping[str, V], drop: Mapping[str, bool]) -> dict[str, V]:
    """``values`` without the entries named by a layer (or group) inside a dropped block."""
    gone = dropped(drop)
    return {name: v for name, v in values.items() if not inside(name, gone)} if gone else dict(values)
