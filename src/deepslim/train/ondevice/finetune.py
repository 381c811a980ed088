"""Fine-tuning under a memory budget, with the planner's prediction and the measurement side by side.

:func:`finetune_ondevice` converts a model for one mode — ``full`` (stock PyTorch, every parameter), ``bias``
(memory-efficient layers, biases only), ``tinytl`` (efficient layers, biases, lite residual branches and the head)
or ``sparse`` (efficient layers and the parameters :func:`plan_sparse_update` picks under the budget) — checks the
planned peak against the budget *before* training, trains, and measures what it predicted: the saved-for-backward
bytes by the ``saved_tensors_hooks`` oracle and the peak by an allocation trace of a real step. A budget that not
even bias-only meets is refused with the smallest figure that can be met; layers the efficient modules do not cover
are named with what they keep.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from deepslim.analysis.training import (
    TrainingProfile,
    measure_peak_bytes,
    measure_saved_bytes,
    rebatch,
    training_profile,
)
from deepslim.data import DataBundle
from deepslim.errors import ConfigError
from deepslim.train._inputs import input_adapter
from deepslim.train.loop import evaluate, fit
from deepslim.train.ondevice.convert import bias_only_, efficient_, residual_blocks, tinytl_, uncovered_layers
from deepslim.train.ondevice.sparse import plan_sparse_update, sparse_update_

log = logging.getLogger(__name__)

MODES = ("tinytl", "sparse", "bias", "full")


@dataclass(frozen=True, kw_only=True)
class OnDeviceResult:
    """What :func:`finetune_ondevice` predicted, measured and reached; ``to_dict()`` is JSON-ready."""

    mode: str
    batch_size: int
    budget_bytes: int | None
    predicted_peak_bytes: int
    measured_peak_bytes: int
    predicted_saved_bytes: int
    measured_saved_bytes: int
    trainable_params: int
    accuracy_before: float
    accuracy_after: float
    epochs: int
    seconds: float
    stock_layers: dict[str, int] = field(default_factory=dict)  # uncovered layer -> bytes it keeps for backward
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["notes"] = list(self.notes)
        return d


def smallest_peak(model: nn.Module, example: Any, *, optimizer: str = "adam") -> int:
    """The planned peak of bias-only training with the memory-efficient layers: the least a useful step needs."""
    cheapest = bias_only_(copy.deepcopy(model), efficient=True)
    return training_profile(cheapest, example, trainable="current", optimizer=optimizer).peak_bytes


def _prepare(model: nn.Module, mode: str, data: DataBundle, example: Any, budget: int | None, optimizer: str,
             batches: int) -> list[str]:  # fmt: skip
    """Convert ``model`` in place for ``mode``; return notes for the report."""
    notes: list[str] = []
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif mode == "bias":
        bias_only_(model, efficient=True)
    elif mode == "tinytl":
        residual = bool(residual_blocks(model))
        if not residual:
            notes.append("no residual block (InvertedResidual, BasicBlock, Bottleneck) for a lite residual branch: "
                         "TinyTL trains the biases and the head")  # fmt: skip
        tinytl_(model, residual=residual, example_input=example)
    else:
        if budget is None:
            raise ConfigError("--mode sparse chooses what to update under a memory budget: give --budget memory=XMB")
        efficient_(model)
        adapt = input_adapter(model, data.preprocessing)
        sample = [(adapt(inputs), target) for inputs, target in (data.task.split(b) for b in
                                                                 itertools.islice(data.train, batches))]  # fmt: skip
        plan = plan_sparse_update(model, sample, data.task.loss, budget_bytes=budget, example_batch=example,
                                  optimizer=optimizer)  # fmt: skip
        sparse_update_(model, plan)
        notes.append(f"sparse update: {len(plan.trainable)} of {sum(1 for _ in model.parameters())} parameter "
                     "tensors train")  # fmt: skip
    return notes


def _check_budget(prof: TrainingProfile, original: nn.Module, example: Any, mode: str, budget: int | None,
                  optimizer: str) -> None:  # fmt: skip
    if budget is None or prof.peak_bytes <= budget:
        return
    least = smallest_peak(original, example, optimizer=optimizer)
    if least > budget:
        raise ConfigError(f"a memory budget of {budget} bytes cannot be met: not even bias-only training fits (the "
                          f"smallest achievable peak is {least} bytes, {least / 2**20:.2f} MB); raise the budget or "
                          "lower the batch size")  # fmt: skip
    raise ConfigError(f"mode {mode} needs {prof.peak_bytes} bytes ({prof.peak_bytes / 2**20:.2f} MB) at its peak, over "
                      f"the budget of {budget}; bias-only needs {least} ({least / 2**20:.2f} MB): use mode bias or "
                      "sparse, or lower the batch size")  # fmt: skip


def finetune_ondevice(model: nn.Module, data: DataBundle, *, mode: str = "tinytl", budget_bytes: int | None = None,
                      epochs: int = 3, lr: float = 1e-3, optimizer: str = "adam", batch_size: int = 8,
                      analysis_batches: int = 4, seed: int = 0) -> OnDeviceResult:  # fmt: skip
    """Fine-tune ``model`` (in place) on ``data`` in ``mode`` within ``budget_bytes`` of training-step peak memory.

    The model is converted, its step planned (``training_profile``) and refused before training when the plan
    exceeds the budget (ConfigError naming what does fit); then trained with ``fit`` for ``epochs`` and measured.
    ``data``'s training loader should batch ``batch_size`` examples (the plan and the measurement use that size).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if optimizer not in ("adam", "sgd"):
        raise ConfigError(f"optimizer must be adam or sgd, got {optimizer!r}")
    example = rebatch(data.example_input, batch_size)
    before = evaluate(model, data).accuracy
    original = copy.deepcopy(model)
    notes = _prepare(model, mode, data, example, budget_bytes, optimizer, analysis_batches)
    prof = training_profile(model, example, trainable="current", optimizer=optimizer)
    _check_budget(prof, original, example, mode, budget_bytes, optimizer)
    stock = {}
    if mode != "full":
        rows = {r.name: r.saved_bytes for r in prof.layers}
        stock = {f"{n} ({t})": rows.get(n, 0) for n, t in uncovered_layers(model).items()}
    measured_saved = measure_saved_bytes(model, example, trainable="current")
    measured_peak = measure_peak_bytes(copy.deepcopy(model), example, trainable="current", optimizer=optimizer)
    result = fit(model, data, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed)
    return OnDeviceResult(
        mode=mode, batch_size=batch_size, budget_bytes=budget_bytes, predicted_peak_bytes=prof.peak_bytes,
        measured_peak_bytes=measured_peak, predicted_saved_bytes=prof.saved_bytes,
        measured_saved_bytes=measured_saved, trainable_params=sum(p.numel() for p in model.parameters()
                                                                  if p.requires_grad),
        accuracy_before=before, accuracy_after=evaluate(model, data).accuracy, epochs=epochs,
        seconds=result.seconds, stock_layers=stock, notes=tuple(notes),
    )  # fmt: skip


__all__ = ["MODES", "OnDeviceResult", "finetune_ondevice", "smallest_peak"]
