"""The peak memory of a training step, from the planner's per-operator record, and its measured counterpart.

Steady-state training (the optimizer's state exists; gradients are set to None between steps) holds the weights and
the optimizer state throughout, and on top of them, at the worst moment, one of:

- forward: every activation alive at that operator, where a saved activation lives to the end of the forward;
- backward, at operator i (in reverse): what operators ≤ i saved, the gradients flowing through operator i (of its
  outputs and of its inputs), the parameter gradients accumulated for operators > i, and the larger of operator
  i's scratch and its own parameter gradients (made once the scratch is freed);
- the optimizer step: every parameter gradient.

The input batch is held by the caller throughout. Convolutions on the CPU (oneDNN) also allocate an output-sized
scratch buffer in the forward and an input-sized one in the backward (measured with the allocation trace); those are
counted as workspace of the operator. :func:`measured_peak_bytes` is the check: a real step (after one
warm-up step) under ``torch.profiler`` with ``profile_memory``, whose allocation trace gives the peak.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepslim.errors import UnsupportedModelError


@dataclass
class OpRecord:
    """What one operator did, for the peak: activations read and first written, and the gradients it produces."""

    reads: set[Hashable] = field(default_factory=set)
    writes: dict[Hashable, int] = field(default_factory=dict)
    saved_so_far: int = 0  # saved bytes (input batch excluded) once this operator has run
    grad_bytes: int = 0  # gradients flowing through it in backward: of its outputs and of its differentiable inputs
    workspace: int = 0  # kernel scratch alive only during the operator (forward), e.g. oneDNN's reordered output
    backward_workspace: int = 0  # the same for its backward
    params: dict[Hashable, int] = field(default_factory=dict)  # trainable parameters it reads, by storage
    param_grad_bytes: int = 0  # gradients of the trainable parameters it reads for the last time in the forward


def activation_peak(ops: list[OpRecord], inputs: dict[Hashable, int], outputs: set[Hashable],
                    saved: set[Hashable], private: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:  # fmt: skip
    """(forward peak, backward peak) of activation and gradient bytes, on top of weights and optimizer state.

    ``private``: (operator number from 1, bytes) of saved buffers no operator output stands for (a packed mask,
    a copy an in-place operator keeps): alive from that operator to the end of the forward, like every saved tensor.
    """
    n = len(ops)
    first: dict[Hashable, int] = {}
    last: dict[Hashable, int] = {}
    size: dict[Hashable, int] = {}
    for i, op in enumerate(ops, start=1):
        for key, nbytes in op.writes.items():
            if key not in first and key not in inputs:
                first[key], size[key] = i, nbytes
            last[key] = i
        for key in op.reads:
            last[key] = max(last.get(key, 0), i)
    delta = [0] * (n + 3)
    for i, op in enumerate(ops, start=1):
        delta[i] += op.workspace
        delta[i + 1] -= op.workspace
    for key, start in first.items():
        end = n + 1 if key in saved or key in outputs else last[key]
        delta[start] += size[key]
        delta[end + 1] -= size[key]
    for start, nbytes in private:
        delta[min(start, n + 1)] += nbytes
        delta[n + 2] -= nbytes
    live, forward = 0, 0
    for d in delta[: n + 2]:
        live += d
        forward = max(forward, live)
    held = sum(inputs.values())
    param_grads, backward = 0, 0
    for op in reversed(ops):
        # an operator's own parameter gradients are made after its backward scratch is freed (oneDNN's weight
        # gradient comes out of its blocked copy): the two do not add up
        own = op.param_grad_bytes
        backward = max(backward, op.saved_so_far + op.grad_bytes + max(op.backward_workspace, own) + param_grads)
        param_grads += own
    return held + forward, held + backward


def measured_peak_bytes(model: nn.Module, step: Callable[[], Any], optimizer: torch.optim.Optimizer,
                        inputs_bytes: int) -> int:  # fmt: skip
    """Peak bytes of one steady-state training step, measured: ``step()`` runs forward, backward and the update.

    One warm-up step creates the optimizer state; the measured step starts with gradients set to None. The result
    is the parameters, the optimizer state and the input batch, plus the highest point of the allocation trace.
    """
    from torch.profiler import ProfilerActivity, profile

    step()
    model.zero_grad(set_to_none=True)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:
        raise UnsupportedModelError("this torch's profiler gives no allocation trace; measure the peak another way")
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    model.zero_grad(set_to_none=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + state + inputs_bytes + peak
