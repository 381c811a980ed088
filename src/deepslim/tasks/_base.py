"""What every task shares: splitting a batch into model inputs and targets, calling a model with one or several
inputs, and picking the tensor a task scores out of whatever the model returns (a tensor, a tuple, a dict or a
Hugging Face ``ModelOutput``).

A batch is a tensor (inputs only), a tuple/list whose last item is the target and whose other items are the model's
positional inputs (``(x, y)``, ``(input_ids, attention_mask, labels)``), or a dict whose ``target_key`` entry
(``"labels"``, the Hugging Face convention) is the target and whose other entries are keyword inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import ConfigError, DataError, UnknownNameError

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


class Meter(Protocol):
    """Accumulates a task's loss and metrics over batches; ``result`` gives ``{"loss": ..., metric: ...}``."""

    samples: int

    def update(self, out: torch.Tensor, target: torch.Tensor | None) -> None: ...

    def result(self) -> dict[str, float]: ...


def call_model(model: nn.Module | Callable[..., Any], inputs: Inputs) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)`` for a tensor, a tuple or a dict of inputs."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_input(inputs: Inputs) -> torch.Tensor:
    """The main input tensor: the tensor itself, the first positional input, or ``input_ids``/the first entry."""
    if isinstance(inputs, Mapping):
        return inputs["input_ids"] if "input_ids" in inputs else next(iter(inputs.values()))
    if isinstance(inputs, (tuple, list)):
        return inputs[0]
    return inputs


def pick_output(out: Any, keys: Sequence[str]) -> torch.Tensor:
    """The tensor a task scores: ``out`` itself, the first of ``keys`` in a dict/ModelOutput, or a tuple's first."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in keys:
            if out.get(key) is not None:
                return out[key]
        raise DataError(f"the model returned a mapping with keys {', '.join(map(str, out))}; this task reads "
                        f"{' or '.join(keys)}")  # fmt: skip
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DataError(f"the model returned {type(out).__name__}; a task needs a tensor, a tuple whose first item is a "
                    f"tensor, or a dict with {' or '.join(keys)}")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Task:
    """Base of the tasks: how to feed a model a batch, read its output, score it and compare it with a reference.

    Subclasses set ``name``, ``metric`` (the primary metric's name), ``higher_is_better`` and implement ``loss``,
    ``meter`` and ``compare``.
    """

    name: ClassVar[str] = "task"
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    output_keys: ClassVar[tuple[str, ...]] = ("logits",)
    has_classes: ClassVar[bool] = True  # targets are class indices (int64), so a dataset has num_classes
    target_key: str = "labels"

    # -- feeding the model ------------------------------------------------------------------------------------------
    def split(self, batch: Any) -> tuple[Inputs, torch.Tensor | None]:
        """(model inputs, target) of one batch; the target is None when the batch holds inputs only."""
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, Mapping):
            inputs = {k: v for k, v in batch.items() if k != self.target_key}
            if not inputs:
                raise DataError(f"a batch dict holds only {self.target_key!r}: there are no model inputs")
            return inputs, batch.get(self.target_key)
        if isinstance(batch, (tuple, list)):
            if len(batch) == 1:
                return batch[0], None
            rest = tuple(batch[:-1])
            return (rest[0] if len(rest) == 1 else rest), batch[-1]
        raise DataError(f"a batch must be a tensor, a tuple/list or a dict, got {type(batch).__name__}")

    def output(self, out: Any, inputs: Inputs) -> torch.Tensor:
        """The tensor this task scores, out of what the model returned (``inputs`` serve pooling)."""
        return pick_output(out, self.output_keys)

    def forward(self, model: nn.Module | Callable[..., Any], inputs: Inputs) -> torch.Tensor:
        """Call ``model`` on ``inputs`` and pick the output this task scores."""
        return self.output(call_model(model, inputs), inputs)

    # -- scoring -----------------------------------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The training loss (a scalar mean)."""
        raise NotImplementedError

    def meter(self) -> Meter:
        """A fresh accumulator of loss and metrics."""
        raise NotImplementedError

    def fidelity_meter(self) -> Meter:
        """An accumulator of how closely outputs follow a reference model's: ``update(out, reference_out)``."""
        return self.meter()

    def compare(self, out: torch.Tensor, reference: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        """A loss that pulls ``out`` toward a reference model's output (distillation)."""
        raise NotImplementedError

    def distill_loss(self, out: torch.Tensor, reference: torch.Tensor, target: torch.Tensor | None, *,
                     temperature: float, alpha: float) -> torch.Tensor:  # fmt: skip
        """``alpha · compare + (1 − alpha) · loss``; without a target, the comparison alone."""
        soft = self.compare(out, reference, temperature=temperature)
        if target is None or alpha >= 1.0:
            return soft
        return alpha * soft + (1.0 - alpha) * self.loss(out, target)

    def score(self, metrics: Mapping[str, float]) -> float:
        """The primary metric oriented so that higher is better (model selection during training)."""
        if self.metric not in metrics:  # measured against a reference model's outputs (fidelity)
            return metrics["agreement"]
        value = metrics[self.metric]
        return value if self.higher_is_better else -value

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target_key": self.target_key}

    def _need_target(self, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise DataError(f"the {self.name} task needs targets: give batches as (inputs..., target) or a dict "
                            f"with {self.target_key!r}")  # fmt: skip
        return target


def soft_kl(out: torch.Tensor, reference: torch.Tensor, temperature: float, class_dim: int) -> torch.Tensor:
    """Hinton's soft-target term: T² · KL(softmax(ref/T) ‖ softmax(out/T)), averaged over positions."""
    if out.shape != reference.shape:
        raise DataError(f"the output shapes differ: {tuple(out.shape)} vs the reference's {tuple(reference.shape)}")
    c = out.shape[class_dim]
    s = out.movedim(class_dim, -1).reshape(-1, c)
    t = reference.movedim(class_dim, -1).reshape(-1, c)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True)  # fmt: skip
    return kl * (temperature * temperature)


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(task: Task | str | None, default: Task | None = None) -> Task:
    """A task object from a task, its name, or None (``default``, else classification)."""
    if isinstance(task, Task):
        return task
    if task is None:
        return default if default is not None else _TASKS["classification"]()
    if not isinstance(task, str):
        raise ConfigError(f"a task is a Task or one of {', '.join(list_tasks())}, got {type(task).__name__}")
    if task not in _TASKS:
        raise UnknownNameError("task", task, _TASKS)
    return _TASKS[task]()
