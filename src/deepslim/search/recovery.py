"""Cheap recovery of a candidate's accuracy before it is judged: batch-norm re-estimation, or a short fine-tune.

Removing channels changes the statistics every later batch norm sees, and its running mean and variance — kept from
the dense model — are then wrong; re-estimating them on a few hundred training samples recovers much of the lost
accuracy at the cost of forward passes alone (Li et al., "Revisiting Random Channel Pruning", CVPR 2022, and the
"BN recalibration" of once-for-all networks: Cai et al., ICLR 2020). The search judges every trial after it; the few
best candidates then get the short fine-tune that the written recipe repeats.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def reestimate_bn_(model: nn.Module, batches: Any, *, task: Any = None, max_batches: int = 20) -> int:
    """Recompute every batch norm's running statistics from ``batches`` (a loader of (input, label) batches, or
    of inputs); the weights are unchanged. Returns the number of batches seen (0: no batch norm, nothing done)."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms:
        return 0
    saved = [m.momentum for m in norms]
    was = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all the batches seen
        m.train()
    seen = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                if task is not None:
                    task.forward(model, task.split(batch)[0])
                else:
                    model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was)
    return seen
