"""Cheap recovery of a candidate's accuracy before it is judged: batch-norm re-estimation, or a short fine-tune.

Removing channels changes the statistics every later batch norm sees, and its running mean and variance — kept from
the dense model — are then wrong; re-estimating them on a few hundred training samples recovers much of the lost
accuracy at the cost of forward passes alone (Li et al., "Revisiting Random Channel Pruning", CVPR 2022, and the
"BN recalibration" of once-for-all networks: Cai et al., ICLR 2020). The search judges every trial after it; the few
best candidates then get the short fine-tune that the written recipe repeats — or, with no fine-tune, the same
re-estimation, which a recipe runs as the stage ``- recalibrate: {method: bn, batches: 20}`` (the technique ``bn``,
registered here, so that a searched recipe rebuilds exactly the model the search judged).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepslim.config import Config
from deepslim.errors import ConfigError, DataError
from deepslim.techniques import register_technique

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BN_BATCHES = 20  # calibration batches a re-estimation sees (the search's and the recipe stage's default)


def reestimate_bn_(model: nn.Module, batches: Any, *, task: Any = None, max_batches: int = BN_BATCHES) -> int:
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


@dataclass(frozen=True, kw_only=True)
class BNReestimateConfig(Config):
    """Re-estimate every batch norm's running statistics on ``batches`` calibration batches (after pruning)."""

    batches: int = BN_BATCHES

    def __post_init__(self) -> None:
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ConfigError(f"batches must be an integer >= 1, got {self.batches!r}")


def _recalibrate(model: nn.Module, config: BNReestimateConfig, *, calib_data: Any = None,
                 data: Any = None) -> nn.Module:  # fmt: skip
    """The recipe verb of :class:`BNReestimateConfig`: :func:`reestimate_bn_` on the data's calibration split."""
    if calib_data is None:
        raise ConfigError("batch-norm re-estimation needs data with a calibration split: give the recipe --data")
    reestimate_bn_(model, calib_data, task=getattr(data, "task", None), max_batches=config.batches)
    return model


register_technique("bn", BNReestimateConfig, _recalibrate, kind="recalibrate")


PROXY_CACHE = 256  # distinct batches :func:`proxy_batches` keeps (longer proxies cycle through them)


def proxy_batches(data: Any, steps: int, *, teacher: nn.Module | None = None,
                  seed: int = 0) -> list[tuple[Any, Any, Any]]:  # fmt: skip
    """The proxy's training batches, drawn once for a whole search: ``min(steps, PROXY_CACHE)`` batches of ``data``'s
    training loader (its order seeded by ``seed``; a short loader is cycled), each as (inputs, target, the
    ``teacher``'s outputs or None). Why: every trial then trains on the same batches — a ranking of policies is not
    also a ranking of their draws — and the dense teacher runs once per batch per search instead of once per step of
    every trial (a fifth of the proxy's time on MobileNetV2). Passed to :func:`short_finetune_` as ``batches``."""
    from deepslim.tasks import get_task

    task = get_task(None, getattr(data, "task", None))
    was = teacher.training if teacher is not None else False
    torch.manual_seed(seed)
    try:
        if teacher is not None:
            teacher.eval()
        empty = "the training data yielded no batches for the proxy; give the search a training loader with at least "
        draws = _draws(data, task, teacher, lambda n: empty + "one batch (or proxy_steps=0)")
        return list(itertools.islice(draws, min(steps, PROXY_CACHE)))
    finally:
        if teacher is not None:
            teacher.train(was)


def _draws(data: Any, task: Any, teacher: nn.Module | None,
           empty: Callable[[int], str]) -> Iterator[tuple[Any, Any, Any]]:  # fmt: skip
    """(inputs, target, the ``teacher``'s outputs or None) for every batch of ``data``'s training loader, cycling
    through it for ever; a pass that yields nothing is a DataError (``empty(batches yielded so far)``): an empty
    loader (fewer rows than a batch with drop_last, a spent iterator) would otherwise loop for ever."""
    n = 0
    while True:
        before = n
        for batch in data.train:
            inputs, target = task.split(batch)
            ref = None
            if teacher is not None:
                with torch.no_grad():
                    ref = task.forward(teacher, inputs)
            n += 1
            yield inputs, target, ref
        if n == before:
            raise DataError(empty(n))


def short_finetune_(model: nn.Module, data: Any, *, steps: int, lr: float = 1e-3, seed: int = 0,
                    teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
                    batches: Sequence[tuple[Any, Any, Any]] | None = None) -> int:  # fmt: skip
    """Train ``model`` in place for ``steps`` Adam steps on ``data``'s training batches (cycling through them), the
    batch norms first re-estimated (:func:`reestimate_bn_`) — a trial's proxy of what a full recovery reaches.

    Why: batch-norm re-estimation alone ranks heavily pruned policies badly (a pruned MobileNetV2 scored 13–14% on
    it, its fine-tuned rank unrelated, BENCHMARKS.md session 7); a few hundred steps sort them the way the final
    recovery does, at a fraction of its cost. With ``teacher`` (the dense model) the loss is the task's distillation
    loss (``alpha`` on the teacher's outputs at ``temperature``, the rest on the labels). The learning rate decays
    linearly to 0 over the steps; draws are seeded by ``seed``. ``batches`` (:func:`proxy_batches`): train on these,
    cycling, with their stored teacher outputs (distilled where they have them) instead of drawing from ``data``.
    Returns the number of steps taken."""
    from deepslim.tasks import get_task

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    task = get_task(None, getattr(data, "task", None))
    reestimate_bn_(model, data.calib, task=task)
    if steps == 0:
        return 0
    if batches is not None and not batches:
        raise DataError("the proxy was given no batches; draw them with proxy_batches (or proxy_steps=0)")
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / steps))
    modes = [(m, m.training) for m in (model, teacher) if m is not None]
    model.train()
    if teacher is not None:
        teacher.eval()
    stream = itertools.cycle(batches) if batches is not None else _draws(data, task, teacher, lambda n: (
        f"the training data yielded no batches after {n} of {steps} proxy steps; give the search a training loader "
        "with at least one batch (or proxy_steps=0)"))  # fmt: skip
    try:
        for inputs, target, ref in itertools.islice(stream, steps):
            out = task.forward(model, inputs)
            loss = task.loss(out, target) if ref is None else task.distill_loss(
                out, ref, target, temperature=temperature, alpha=alpha)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        for m, mode in modes:
            m.train(mode)
    return steps
