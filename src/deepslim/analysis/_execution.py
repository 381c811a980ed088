"""Running a model for the profiler without paying for its activations.

MACs, shapes, bytes and liveness need no values, so the profiler runs the model on fake tensors
(``torch._subclasses.FakeTensorMode``): every operator computes its output's shape, dtype and storage on the meta
device and nothing else. The weights stay where they are (real tensors are wrapped on the fly, never copied), and an
input that the profiler makes itself is never allocated at all: ResNet-18 on a 4000×4000 image costs the process
almost nothing, where a real run held 8.5 GB.

A model whose forward needs values (``.item()``, ``nonzero``, Python branches on a tensor, operators without a
shape function) stops the fake run; the profiler then runs it for real, but only within the memory that is free
(:func:`available_memory_bytes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._pytree import tree_map

from deepslim._memory import available_memory_bytes  # noqa: F401  (the profiler's budget reads it from here)

_Tree = TypeVar("_Tree")  # a tensor or a nested structure of them (an example input)


def fake_mode() -> FakeTensorMode:
    """A fake-tensor mode that accepts the model's real weights (wrapped, not copied) as operator inputs."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def to_fake(mode: FakeTensorMode, tree: _Tree) -> _Tree:
    """``tree`` with every real tensor replaced by a fake one of the same shape, dtype, strides and device."""
    return tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor)
                    else t, tree)  # fmt: skip


def runs_on_meta(model: nn.Module, tensors: list[torch.Tensor]) -> bool:
    """Whether the model or its input already lives on the meta device (then running it computes nothing)."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers(), *tensors))


def has_lazy_parameters(model: nn.Module) -> bool:
    """Lazy modules create their weights in the first forward: that must happen for real."""
    return any(nn.parameter.is_lazy(p) for p in model.parameters())


_T = TypeVar("_T", bound=torch.Tensor)


def _put_back(now: dict[str, _T | None], before: dict[str, _T | None]) -> None:
    """Replace each fake tensor in ``now`` by its entry in ``before``, or remove it if it is new."""
    for key in [k for k, v in now.items() if isinstance(v, FakeTensor)]:
        if key in before:
            now[key] = before[key]
        else:
            del now[key]


@contextlib.contextmanager
def fake_state_undone(model: nn.Module) -> Iterator[None]:
    """Undo what a fake run stores on the model's modules.

    A forward may assign tensors to its module (a hook-based ``weight_norm`` sets ``module.weight``, a cache of rotary
    tables, a buffer replaced rather than updated in place); on a fake run those are fake tensors, which must not
    outlive the run. Each one is put back to what it was before, or removed if it is new.
    """
    saved = [(m, dict(m._parameters), dict(m._buffers), {k: v for k, v in vars(m).items()
              if isinstance(v, torch.Tensor)}) for m in model.modules()]  # fmt: skip
    try:
        yield
    finally:
        for module, params, buffers, attrs in saved:
            _put_back(module._parameters, params)
            _put_back(module._buffers, buffers)
            for key in [k for k, v in vars(module).items() if isinstance(v, FakeTensor)]:
                if key in attrs:
                    module.__dict__[key] = attrs[key]
                else:
                    del module.__dict__[key]

