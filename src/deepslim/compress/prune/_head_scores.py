"""How head pruning scores and counts units: gates on the output projections and their sensitivity (the squared
output change when a unit is gated off, estimated with random projections), and how many units each block keeps
(globally by score, per block, or heads and hidden units together by sensitivity per weight). Split out of
:mod:`.heads`, which re-exports :func:`sensitivity`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.errors import ConfigError
from deepslim.tasks import call_model

if TYPE_CHECKING:
    from deepslim.compress.prune.heads import Block


def _gates(blocks: list[Block]) -> list[torch.Tensor]:
    """One gate per unit on the input of each block's output projection (1.0: the model unchanged), in the dtype
    and on the device of that projection."""
    out = []
    for b in blocks:
        p = next(b.output.parameters())
        out.append(torch.ones(b.units, dtype=p.dtype, device=p.device, requires_grad=True))
    return out


def _gate_hook(gate: torch.Tensor, width: int) -> Any:
    def hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * gate.repeat_interleave(width), *args[1:])

    return hook


def _model_inputs(batch: Any) -> Any:
    """A calibration batch as model inputs: (inputs, labels) pairs lose their labels (1-D integer tensors)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        label = batch[1]
        if label.ndim <= 1 and not label.is_floating_point() and isinstance(batch[0], (torch.Tensor, dict)):
            return batch[0]
    return batch


def sensitivity(model: nn.Module, blocks: list[Block], calib_data: Iterable[Any], *, batches: int = 8,
                probes: int = 2, seed: int = 0, groups: int = 1) -> list[torch.Tensor]:  # fmt: skip
    """Per block, Σ over samples of ‖∂outputs/∂gate_u‖² for each unit (random-projection estimate).

    ``groups`` > 1: the batches read fall into that many consecutive runs of (nearly) equal length, e.g. short texts
    then long passages; each run's sums are divided by their total over all units, and each unit keeps its largest
    share over the runs — a unit that one kind of input needs is kept even if the other kinds outnumber it."""
    known = len(calib_data) if isinstance(calib_data, Sized) else None
    if groups > 1 and known is not None and known > batches:
        raise ConfigError(f"groups={groups} splits the batches read into runs, but batches={batches} reads only the "
                          f"first {batches} of calib_data's {known}: set batches >= {known}")  # fmt: skip
    gates = _gates(blocks)
    per_batch: list[list[torch.Tensor]] = []
    gen = torch.Generator().manual_seed(seed)
    outputs = {str(i): b.output for i, b in enumerate(blocks)}
    # hooked removes every gate it installed on the way out, also when installing one of them fails part-way
    with hooked(outputs, pre=lambda i: _gate_hook(gates[int(i)], blocks[int(i)].unit_width)), inference_mode(model):
        for batch in _take(calib_data, batches):
            outs = [t for t in tree_leaves(call_model(model, _model_inputs(batch)))
                    if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
            if not outs:
                raise ConfigError("sensitivity needs a model with floating-point outputs")
            scores = [torch.zeros(b.units) for b in blocks]
            for k in range(probes):
                probe = torch.stack([(torch.randn(t.shape, generator=gen).to(t) * t).sum() for t in outs]).sum()
                grads = torch.autograd.grad(probe, gates, retain_graph=k + 1 < probes, allow_unused=True)
                for s, g in zip(scores, grads, strict=True):
                    if g is not None:
                        s += g.detach().float().cpu().pow(2) / probes
            per_batch.append(scores)
    if not per_batch:
        raise ConfigError("sensitivity importance needs calib_data with at least one batch of model inputs")
    return _combine(per_batch, groups)


def _combine(per_batch: list[list[torch.Tensor]], groups: int) -> list[torch.Tensor]:
    """Sum of the batches' scores (``groups`` 1), or each unit's largest normalized share over ``groups`` runs."""
    if groups > len(per_batch):
        raise ConfigError(f"groups={groups} runs of calibration batches need at least {groups} batches; "
                          f"calib_data gave {len(per_batch)}")  # fmt: skip
    runs = [[torch.stack(unit).sum(0) for unit in zip(*part, strict=True)]
            for part in _split(per_batch, groups)]  # fmt: skip
    if groups == 1:
        return runs[0]
    totals = [max(float(sum(s.sum() for s in run)), 1e-30) for run in runs]
    shares = [[s / total for s in run] for run, total in zip(runs, totals, strict=True)]
    return [torch.stack(unit).amax(0) for unit in zip(*shares, strict=True)]


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` consecutive runs whose lengths differ by at most one (the longer ones first)."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _take(data: Iterable[Any], n: int) -> Iterator[Any]:
    for i, batch in enumerate(data):
        if i >= n:
            return
        yield batch


def _counts(blocks: list[Block], scores: list[torch.Tensor], ratio: float, floor: int, step: int,
            global_ranking: bool) -> list[int]:  # fmt: skip
    """Units each block keeps: ``ratio`` of all units removed, globally by score or equally per block."""
    if ratio == 0.0 or not blocks:
        return [b.units for b in blocks]
    if global_ranking:  # exactly round(ratio · units) of the lowest scores go (ties: the later unit first)
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
        order = torch.cat(scores).argsort(stable=True)
        gone = torch.bincount(owner[order[: round(ratio * len(order))]], minlength=len(scores))
        raw = [b.units - int(g) for b, g in zip(blocks, gone, strict=True)]
    else:
        raw = [round(b.units * (1.0 - ratio)) for b in blocks]
    return [max(min(floor, b.units), min(b.units, round(k / step) * step)) for b, k in zip(blocks, raw, strict=True)]


def _joint_counts(blocks: list[Block], scores: list[torch.Tensor], keep: list[int], ratio: float,
                  round_to: int) -> list[int]:  # fmt: skip
    """``keep`` lowered until ``ratio`` of the blocks' projection weights are gone: the next unit removed (hidden units
    ``round_to`` at a time) is always the one of least sensitivity per weight, whichever block and kind it is in; at
    least one head and ``round_to`` hidden units stay per block."""
    costs = [b.unit_cost() for b in blocks]
    target = ratio * sum(b.units * c for b, c in zip(blocks, costs, strict=True))
    gone = sum((b.units - k) * c for b, k, c in zip(blocks, keep, costs, strict=True))
    chunks = []  # (sensitivity per weight, block, units): each block's chunks in ascending order of sensitivity
    for i, (b, s, k) in enumerate(zip(blocks, scores, keep, strict=True)):
        step = 1 if b.is_attention else round_to
        left = s.sort().values[b.units - k :]
        chunks += [(float(c.sum()) / (costs[i] * len(c)), i, len(c)) for c in left.split(step)]
    out = list(keep)
    for _, i, n in sorted(chunks, key=lambda c: c[0]):  # stable: a block's chunks stay in their order
        if gone >= target:
            break
        if out[i] - n >= (1 if blocks[i].is_attention else min(round_to, blocks[i].units)):
            out[i] -= n
            gone += n * costs[i]
    return out
