"""Switching a model to inference mode and back, for every kind of module deepslim accepts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block, then each submodule's own training flag back.

    Programs loaded from ``torch.export`` (.pt2) refuse ``eval()``: their mode was fixed when they were exported, so
    for them this does nothing.
    """
    flags = {m: m.training for m in model.modules()}
    with contextlib.suppress(NotImplementedError):
        model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag
