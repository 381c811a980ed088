"""Knowledge distillation: a (compressed) student learns from a teacher's outputs and, optionally, its features.

- Output distillation: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015. The loss is
  ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)``; the T² keeps the soft term's gradients
  on the scale of the hard term's as T changes.
- Feature (hint) distillation: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. A chosen student
  layer's output, passed through a learned regressor (a 1×1 convolution for feature maps, a linear map otherwise),
  is pulled toward a teacher layer's output by mean squared error. The regressors train alongside the student and
  are discarded afterwards.

Distillation is a recovery step: after pruning or quantization, the uncompressed model is the natural teacher.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.config import Config, freeze_overrides
from deepslim.data import DataBundle, Preprocessing
from deepslim.errors import ConfigError
from deepslim.tasks import Inputs, Task, call_model, get_task
from deepslim.train._inputs import input_adapter, model_preprocessing
from deepslim.train.loop import EvalResult, FitResult, Optimizer, StepHook, evaluate, fidelity, train_loop


@dataclass(frozen=True, kw_only=True)
class KDConfig(Config):
    """``temperature`` softens both distributions; ``alpha`` weighs the teacher's soft targets against the labels.

    ``hints`` maps student layer names to teacher layer names for feature distillation, weighted by
    ``hint_weight``.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    hints: Any = ()
    hint_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.hint_weight >= 0:
            raise ConfigError(f"hint_weight must be >= 0, got {self.hint_weight}")
        hints = freeze_overrides(self.hints)
        for student, teacher in hints:
            if student.startswith("re:") or not isinstance(teacher, str):
                raise ConfigError(f"hints map a student layer name to a teacher layer name, got {student!r}: "
                                  f"{teacher!r}")  # fmt: skip
        object.__setattr__(self, "hints", hints)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, temperature: float,
            alpha: float) -> torch.Tensor:  # fmt: skip
    """Hinton et al.'s loss: soft-target KL divergence (scaled by T²) blended with the hard-label cross-entropy."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)  # fmt: skip
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


@contextlib.contextmanager
def _captured(model: nn.Module, names: Sequence[str], role: str) -> Iterator[dict[str, torch.Tensor]]:
    """The outputs of the named layers of ``model`` (the ``role``'s) in each forward run inside the block."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ConfigError(f"hint layer {missing[0]!r} is not a layer of the {role}")
    out: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            out[name] = output[0] if isinstance(output, tuple) else output

        return hook

    with hooked({n: modules[n] for n in names}, forward=keep):
        yield out


def _regressor(student_out: torch.Tensor, teacher_out: torch.Tensor) -> nn.Module:
    if student_out.ndim == 4 and teacher_out.ndim == 4:
        return nn.Conv2d(student_out.shape[1], teacher_out.shape[1], 1, bias=False)
    return nn.Linear(student_out.shape[-1], teacher_out.shape[-1], bias=False)


def _match(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Bring a regressed student feature map to the teacher's spatial size."""
    if s.ndim == 4 and s.shape[-2:] != t.shape[-2:]:
        s = F.adaptive_avg_pool2d(s, (int(t.shape[-2]), int(t.shape[-1])))
    if s.shape != t.shape:
        raise ConfigError(f"hint shapes do not match after the regressor: student {tuple(s.shape)} vs teacher "
                          f"{tuple(t.shape)}")  # fmt: skip
    return s


def distill(student: nn.Module, teacher: nn.Module, data: DataBundle, config: KDConfig | None = None, *,
            epochs: int, lr: float = 1e-3, optimizer: str | Optimizer = "adam", weight_decay: float = 0.0,
            momentum: float = 0.9, seed: int = 0, cosine: bool = True, restore_best: bool = True,
            hooks: Sequence[StepHook] = (), checkpoint: str | os.PathLike[str] | None = None,
            on_epoch: Callable[[dict[str, float]], None] | None = None,
            task: Task | str | None = None, threads: int | None = None) -> FitResult:  # fmt: skip
    """Train ``student`` on ``data`` to follow ``teacher``'s outputs (and hints); the teacher is not changed.

    The comparison is the task's (:mod:`deepslim.tasks`): temperature-scaled KL divergence for tasks with classes,
    1 − cosine similarity for embeddings, MSE for regression, blended with the task's own loss on the labels by
    ``alpha``. Batches without targets (embeddings of unlabelled text, say) train on the teacher alone and validate
    by fidelity to it. Takes the same training options as :func:`~deepslim.train.fit`; pruning masks and shared
    codebooks are respected in the same way (they are part of the student). ``threads`` as in ``fit``.
    """
    config = config or KDConfig()
    task = get_task(task, data.task)
    hints: Mapping[str, str] = dict(config.hints)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # the loop feeds the student its own preprocessing; the teacher's inputs are converted from that
    student_pre = model_preprocessing(student) or data.preprocessing
    to_teacher = _teacher_inputs(teacher, student_pre, data.preprocessing)
    regressors = nn.ModuleDict()
    with (_captured(student, list(hints), "student") as s_feats,
          _captured(teacher, list(hints.values()), "teacher") as t_feats):  # fmt: skip
        if hints:  # size the regressors from one batch
            x0 = input_adapter(student, data.preprocessing)(data.example_input)
            with torch.no_grad(), inference_mode(student):
                call_model(student, x0)
                call_model(teacher, to_teacher(x0))
            for i, (s_name, t_name) in enumerate(hints.items()):
                regressors[str(i)] = _regressor(s_feats[s_name], t_feats[t_name])

        def loss(inputs: Inputs, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                t_out = task.forward(teacher, to_teacher(inputs))
            out = task.forward(student, inputs)
            total = task.distill_loss(out, t_out, target, temperature=config.temperature, alpha=config.alpha)
            for i, (s_name, t_name) in enumerate(hints.items()):
                ref = t_feats[t_name].detach()
                pred = _match(regressors[str(i)](s_feats[s_name]), ref)
                total = total + config.hint_weight * F.mse_loss(pred, ref)
            return total, out

        def validate() -> EvalResult:
            if _has_targets(task, data.val):
                return evaluate(student, data, split="val", task=task)
            metrics = fidelity(student, teacher, data, split="val", task=task)
            return EvalResult(accuracy=metrics.get("agreement", math.nan), loss=metrics.get("loss", math.nan),
                              samples=_samples(data.val), metrics=metrics, task=task.name,
                              metric=task.metric)  # fmt: skip

        return train_loop(student, data, loss, epochs=epochs, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, momentum=momentum, seed=seed, cosine=cosine,
                          restore_best=restore_best, hooks=hooks, on_epoch=on_epoch, checkpoint=checkpoint,
                          extra_params=list(regressors.parameters()), task=task, validate=validate,
                          threads=threads)  # fmt: skip


def _teacher_inputs(teacher: nn.Module, student_pre: Preprocessing | None,
                    data_pre: Preprocessing | None) -> Callable[[Inputs], Inputs]:  # fmt: skip
    """Converts the student's inputs to what the teacher expects: its own preprocessing, or, for a teacher without a
    record, the data as stored -- what :func:`evaluate` and :func:`fidelity` (the validation) feed it."""
    if model_preprocessing(teacher) is not None or student_pre == data_pre:
        return input_adapter(teacher, student_pre)
    from deepslim.models import PREPROCESSING_ATTR

    stand_in = nn.Module()  # a model expecting the data's preprocessing (None: raw inputs, the identity record)
    setattr(stand_in, PREPROCESSING_ATTR, (data_pre or Preprocessing(mean=(0.0,), std=(1.0,))).to_dict())
    return input_adapter(stand_in, student_pre)


def _samples(loader: Any) -> int:
    """How many examples a loader holds (its dataset's length; 0 when the dataset has none)."""
    return len(loader.dataset) if hasattr(loader.dataset, "__len__") else 0


def _has_targets(task: Task, loader: Any) -> bool:
    for batch in loader:
        return task.split(batch)[1] is not None
    return False
