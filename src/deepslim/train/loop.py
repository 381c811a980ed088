"""Training and evaluation loops for any task (:mod:`deepslim.tasks`; classification by default).

``fit`` trains with the task's loss and reports per-epoch metrics through a callback (library code never prints);
``evaluate`` measures the task's loss and metrics on a loader; ``fidelity`` how closely a model follows a reference.
All are deterministic for a given seed.
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
from torch import nn
from torch.utils.data import DataLoader

from deepslim._modes import inference_mode
from deepslim._threads import check_threads, torch_threads
from deepslim.data import DataBundle
from deepslim.errors import ConfigError
from deepslim.tasks import Inputs, Task, get_task
from deepslim.train._inputs import data_preprocessing, input_adapter


class Optimizer(Enum):
    ADAM = "adam"
    SGD = "sgd"


class StepHook(Protocol):
    """Something that runs after every optimizer step (e.g. re-applying pruning masks)."""

    def after_step(self, model: nn.Module) -> None: ...


@dataclass(frozen=True)
class EvalResult:
    """Loss and metrics of a model on a split. ``accuracy`` is top-1 accuracy for tasks with classes (NaN for
    regression and embeddings); ``metrics`` holds every metric of the task (its primary one is ``metric``)."""

    accuracy: float
    loss: float
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    task: str = "classification"
    metric: str = "accuracy"

    @property
    def value(self) -> float:
        """The task's primary metric (accuracy, perplexity, mIoU, R², cosine)."""
        return self.metrics.get(self.metric, self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "samples": self.samples, "task": self.task,
                "metric": self.metric, "metrics": dict(self.metrics)}  # fmt: skip


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0  # validation accuracy at the best epoch (NaN for tasks without accuracy)
    seconds: float = 0.0
    best_val_metric: float = math.nan  # the task's primary validation metric at the best epoch


def _task_of(data: DataBundle | DataLoader, task: Task | str | None) -> Task:
    return get_task(task, data.task if isinstance(data, DataBundle) else None)


def evaluate(model: nn.Module, data: DataBundle | DataLoader, *, split: str = "test",
             task: Task | str | None = None, threads: int | None = None) -> EvalResult:  # fmt: skip
    """Loss and metrics of ``model`` on a loader (or a bundle's ``split``) for ``task`` (default: the bundle's).

    A model that carries its training preprocessing gets each batch converted to it when the data was
    preprocessed differently or not at all (see :mod:`deepslim.train._inputs`). ``threads``: torch intra-op
    threads while it runs (default: :mod:`deepslim._threads`' policy), restored afterwards.
    """
    loader = getattr(data, split) if isinstance(data, DataBundle) else data
    task = _task_of(data, task)
    adapt = input_adapter(model, data_preprocessing(data if isinstance(data, DataBundle) else loader))
    meter = task.meter()
    with torch_threads(threads), inference_mode(model), torch.no_grad():
        for batch in loader:
            inputs, target = task.split(batch)
            meter.update(task.forward(model, adapt(inputs)), target)
    metrics = meter.result()
    accuracy = metrics.get("accuracy", math.nan)
    return EvalResult(accuracy=accuracy, loss=metrics["loss"], samples=meter.samples, metrics=metrics,
                      task=task.name, metric=task.metric)  # fmt: skip


def fidelity(model: nn.Module, reference: nn.Module, data: DataBundle | DataLoader, *, split: str = "test",
             task: Task | str | None = None, threads: int | None = None) -> dict[str, float]:  # fmt: skip
    """How closely ``model`` follows ``reference`` on the same inputs: top-1 agreement and KL for tasks with classes,
    cosine similarity for embeddings, R² against the reference's outputs for regression."""
    loader = getattr(data, split) if isinstance(data, DataBundle) else data
    task = _task_of(data, task)
    pre = data_preprocessing(data if isinstance(data, DataBundle) else loader)
    adapt, adapt_ref = input_adapter(model, pre), input_adapter(reference, pre)
    meter = task.fidelity_meter()
    with torch_threads(threads), inference_mode(model), inference_mode(reference), torch.no_grad():
        for batch in loader:
            inputs, _ = task.split(batch)
            meter.update(task.forward(model, adapt(inputs)), task.forward(reference, adapt_ref(inputs)))
    return meter.result()


def fit(model: nn.Module, data: DataBundle, *, epochs: int, lr: float = 1e-3, optimizer: str | Optimizer = "adam",
        weight_decay: float = 0.0, momentum: float = 0.9, seed: int = 0, cosine: bool = True,
        restore_best: bool = True, hooks: Sequence[StepHook] = (), checkpoint: str | os.PathLike[str] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        task: Task | str | None = None, threads: int | None = None) -> FitResult:  # fmt: skip
    """Train ``model`` on ``data.train`` for ``epochs`` with ``task``'s loss, validating on ``data.val`` after each.

    ``restore_best`` keeps the weights of the epoch with the best validation metric (accuracy for classification)
    — unless ``hooks`` are given: hooks (pruning schedules, say) change the model as training goes, so only the
    last epoch is the model they built. ``hooks`` run after every optimizer step. ``on_epoch`` receives each
    epoch's metrics (for progress). ``checkpoint`` (a .pt path) is rewritten, atomically, with the model after every
    epoch that improves the validation metric — with hooks, after every epoch — so an interrupted run keeps its best
    model. ``threads``: torch intra-op threads while it trains (default: :mod:`deepslim._threads`' policy: 1 on
    an oversubscribed machine), restored afterwards.
    """
    task = _task_of(data, task)

    def loss(inputs: Inputs, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = task.forward(model, inputs)
        return task.loss(out, target), out

    return train_loop(model, data, loss, epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                      momentum=momentum, seed=seed, cosine=cosine, restore_best=restore_best, hooks=hooks,
                      checkpoint=checkpoint, on_epoch=on_epoch, task=task, threads=threads)  # fmt: skip


LossFn = Callable[[Inputs, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


def train_loop(model: nn.Module, data: DataBundle, loss_fn: LossFn, *, epochs: int, lr: float,
               optimizer: str | Optimizer, weight_decay: float, momentum: float, seed: int, cosine: bool,
               restore_best: bool, hooks: Sequence[StepHook], on_epoch: Callable[[dict[str, float]], None] | None,
               extra_params: Sequence[nn.Parameter] = (), checkpoint: str | os.PathLike[str] | None = None,
               task: Task | None = None, validate: Callable[[], EvalResult] | None = None,
               threads: int | None = None) -> FitResult:  # fmt: skip
    """The loop behind :func:`fit` and :func:`~deepslim.train.distill`: ``loss_fn(inputs, target)`` gives (loss,
    output); inputs are already converted to the model's preprocessing. ``validate`` measures the model after each
    epoch (default: :func:`evaluate` on ``data.val``).

    ``extra_params`` train alongside the model's (e.g. distillation's hint regressors) but are not part of it.
    ``threads``: torch intra-op threads for the whole loop (see :func:`fit`).
    """
    check_threads(threads)
    with torch_threads(threads):
        return _train_loop(model, data, loss_fn, epochs=epochs, lr=lr, optimizer=optimizer,
                           weight_decay=weight_decay, momentum=momentum, seed=seed, cosine=cosine,
                           restore_best=restore_best, hooks=hooks, on_epoch=on_epoch, extra_params=extra_params,
                           checkpoint=checkpoint, task=task, validate=validate)  # fmt: skip


def _train_loop(model: nn.Module, data: DataBundle, loss_fn: LossFn, *, epochs: int, lr: float,
                optimizer: str | Optimizer, weight_decay: float, momentum: float, seed: int, cosine: bool,
                restore_best: bool, hooks: Sequence[StepHook], on_epoch: Callable[[dict[str, float]], None] | None,
                extra_params: Sequence[nn.Parameter], checkpoint: str | os.PathLike[str] | None,
                task: Task | None, validate: Callable[[], EvalResult] | None) -> FitResult:  # fmt: skip
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
    task = task or data.task
    adapt = input_adapter(model, data.preprocessing)
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state, best_val = -math.inf, 0, None, None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train = _train_epoch(model, data, task, loss_fn, adapt, opt, sched, hooks)
        val = validate() if validate is not None else evaluate(model, data, split="val", task=task)
        metrics = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
                   **{f"val_{k}": v for k, v in val.metrics.items()}}  # fmt: skip
        metrics.setdefault("train_accuracy", math.nan)
        metrics.setdefault("val_accuracy", math.nan)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        score = task.score(val.metrics) if val.samples else -train["loss"]
        score = -math.inf if math.isnan(score) else score  # an undefined metric (R² of constant targets) never wins
        improved = score > best_score or best_val is None
        if improved:
            best_score, best_epoch, best_val = score, epoch, val
            if restore_best:
                best_state = copy.deepcopy(model.state_dict())
        if checkpoint is not None and (improved or hooks):
            from deepslim.models import save_model

            save_model(model, checkpoint, example_input=data.example_input)  # .pt, or .pt2 for changed layer trees
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best_acc = best_val.accuracy if best_val is not None and best_val.samples else 0.0
    best_metric = best_val.value if best_val is not None and best_val.samples else math.nan
    return FitResult(history=history, best_epoch=best_epoch, best_val_accuracy=best_acc,
                     seconds=time.perf_counter() - start, best_val_metric=best_metric)  # fmt: skip


def _train_epoch(model: nn.Module, data: DataBundle, task: Task, loss_fn: LossFn, adapt: Callable[[Inputs], Inputs],
                 opt: torch.optim.Optimizer, sched: Any, hooks: Sequence[StepHook]) -> dict[str, float]:  # fmt: skip
    """One pass over the training set; the task's metrics of the outputs seen while training."""
    model.train()
    meter = task.meter()
    loss_sum, seen = 0.0, 0
    for batch in data.train:
        inputs, target = task.split(batch)
        loss, out = loss_fn(adapt(inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for hook in hooks:
            hook.after_step(model)
        n = out.shape[0]
        loss_sum += loss.item() * n
        seen += n
        if target is not None:  # distillation may train on inputs alone
            meter.update(out.detach(), target)
    metrics = meter.result()
    metrics["loss"] = loss_sum / max(seen, 1)  # the training objective itself (distillation's, say)
    return metrics
