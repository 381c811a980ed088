"""Training and evaluation loops.

``fit`` trains a classifier with cross-entropy and reports per-epoch metrics through a callback (library code never
prints); ``evaluate`` measures accuracy and loss on a loader. Both are deterministic for a given seed.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from deepslim._modes import inference_mode
from deepslim.data import DataBundle
from deepslim.errors import ConfigError


class Optimizer(Enum):
    ADAM = "adam"
    SGD = "sgd"


class StepHook(Protocol):
    """Something that runs after every optimizer step (e.g. re-applying pruning masks)."""

    def after_step(self, model: nn.Module) -> None: ...


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "samples": self.samples}


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    seconds: float = 0.0


def evaluate(model: nn.Module, data: DataBundle | DataLoader, *, split: str = "test") -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on a loader (or a bundle's ``split``)."""
    loader = getattr(data, split) if isinstance(data, DataBundle) else data
    correct, total, loss_sum = 0, 0, 0.0
    with inference_mode(model), torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    if total == 0:
        return EvalResult(accuracy=float("nan"), loss=float("nan"), samples=0)
    return EvalResult(accuracy=correct / total, loss=loss_sum / total, samples=total)


def fit(model: nn.Module, data: DataBundle, *, epochs: int, lr: float = 1e-3, optimizer: str | Optimizer = "adam",
        weight_decay: float = 0.0, momentum: float = 0.9, seed: int = 0, cosine: bool = True,
        restore_best: bool = True, hooks: Sequence[StepHook] = (), checkpoint: str | os.PathLike[str] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:  # fmt: skip
    """Train ``model`` on ``data.train`` for ``epochs``, validating on ``data.val`` after each epoch.

    ``restore_best`` keeps the weights of the epoch with the best validation accuracy — unless ``hooks`` are given:
    hooks (pruning schedules, say) change the model as training goes, so only the last epoch is the model they
    built. ``hooks`` run after every optimizer step. ``on_epoch`` receives each epoch's metrics (for progress).
    ``checkpoint`` (a .pt path) is rewritten, atomically, with the model after every epoch that improves validation
    accuracy — with hooks, after every epoch — so an interrupted run keeps its best model.
    """

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return train_loop(model, data, loss, epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                      momentum=momentum, seed=seed, cosine=cosine, restore_best=restore_best, hooks=hooks,
                      checkpoint=checkpoint, on_epoch=on_epoch)  # fmt: skip


LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train_loop(model: nn.Module, data: DataBundle, loss_fn: LossFn, *, epochs: int, lr: float,
               optimizer: str | Optimizer, weight_decay: float, momentum: float, seed: int, cosine: bool,
               restore_best: bool, hooks: Sequence[StepHook], on_epoch: Callable[[dict[str, float]], None] | None,
               extra_params: Sequence[nn.Parameter] = (),
               checkpoint: str | os.PathLike[str] | None = None) -> FitResult:  # fmt: skip
    """The loop behind :func:`fit` and :func:`~deepslim.train.distill`: ``loss_fn(x, y)`` gives (loss, logits).

    ``extra_params`` train alongside the model's (e.g. distillation's hint regressors) but are not part of it.
    """
    restore_best = restore_best and not hooks
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    try:
        kind = Optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    except ValueError:
        raise ConfigError(f"optimizer must be one of {[o.value for o in Optimizer]}, got {optimizer!r}") from None
    torch.manual_seed(seed)
    if data.train.generator is not None:  # the shuffle order, too, depends only on the seed
        data.train.generator.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    if kind is Optimizer.ADAM:
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    steps = max(1, epochs * len(data.train))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)) if cosine else 1.0
    )
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in data.train:
            loss, logits = loss_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for hook in hooks:
                hook.after_step(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        val = evaluate(model, data.val)
        metrics = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "val_loss": val.loss, "val_accuracy": val.accuracy}  # fmt: skip
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        score = val.accuracy if val.samples else -loss_sum
        improved = score > best_acc
        if improved:
            best_acc, best_epoch = score, epoch
            if restore_best:
                best_state = copy.deepcopy(model.state_dict())
        if checkpoint is not None and (improved or hooks):
            from deepslim.models import save_model

            save_model(model, checkpoint, example_input=data.example_input)  # .pt, or .pt2 for changed layer trees
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(history=history, best_epoch=best_epoch, best_val_accuracy=max(best_acc, 0.0),
                     seconds=time.perf_counter() - start)  # fmt: skip
