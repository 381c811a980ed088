"""Tasks whose targets are class indices: image and sequence classification, token classification, language
modelling (next-token prediction) and semantic segmentation.

All of them score logits with cross-entropy; they differ in where the class dimension is, which positions count
(``ignore_index``, padding) and what else they report: perplexity for language models (the exponential of the mean
next-token cross-entropy) and mean intersection-over-union for segmentation (Everingham et al., "The PASCAL Visual
Object Classes Challenge", IJCV 2010). Distillation compares per-position class distributions with Hinton et al.'s
temperature-scaled KL divergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F

from deepslim.errors import DataError
from deepslim.tasks._base import Inputs, Meter, Task, register_task, soft_kl


def _flatten(out: torch.Tensor, target: torch.Tensor, class_dim: int, shift: bool,
             ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logits (M, C), labels (M,)) over the positions that count."""
    if shift:  # position t predicts token t + 1
        out, target = out[:, :-1], target[:, 1:]
    c = out.shape[class_dim]
    logits = out.movedim(class_dim, -1).reshape(-1, c)
    labels = target.reshape(-1).long()
    if labels.numel() != logits.shape[0]:
        raise DataError(f"logits of shape {tuple(out.shape)} do not fit targets of shape {tuple(target.shape)}")
    keep = labels != ignore_index
    logits, labels = logits[keep], labels[keep]
    if labels.numel() and (int(labels.max()) >= c or int(labels.min()) < 0):
        raise DataError(f"target classes run from {int(labels.min())} to {int(labels.max())}, outside the model's "
                        f"{c} classes")  # fmt: skip
    return logits, labels


class _LabelMeter:
    """Cross-entropy and top-1 accuracy over the positions that count; optionally a confusion matrix."""

    def __init__(self, task: _LabelTask, confusion: bool = False):
        self.task, self.samples = task, 0
        self.loss_sum, self.correct, self.count = 0.0, 0, 0
        self.confusion: torch.Tensor | None = None if not confusion else torch.zeros(0, dtype=torch.long)

    def update(self, out: torch.Tensor, target: torch.Tensor | None) -> None:
        target = self.task._need_target(target)
        out = self.task._resize(out, target)
        logits, labels = _flatten(out.float(), target, self.task.class_dim, self.task.shift, self.task.ignore_index)
        self.samples += out.shape[0]
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pred = logits.argmax(1)
        self.correct += int((pred == labels).sum())
        self.count += labels.numel()
        if self.confusion is not None:
            c = logits.shape[1]
            if self.confusion.numel() == 0:
                self.confusion = torch.zeros(c, c, dtype=torch.long)
            self.confusion += torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {"loss": math.nan, "accuracy": math.nan, **self.task._extra(math.nan, None)}
        loss = self.loss_sum / self.count
        return {"loss": loss, "accuracy": self.correct / self.count, **self.task._extra(loss, self.confusion)}


class _AgreementMeter:
    """How often the top-1 class matches a reference model's, and the mean KL divergence to its distribution."""

    def __init__(self, class_dim: int):
        self.class_dim, self.samples = class_dim, 0
        self.agree, self.count, self.kl_sum = 0, 0, 0.0

    def update(self, out: torch.Tensor, reference: torch.Tensor | None) -> None:
        if reference is None or reference.shape != out.shape:
            raise DataError("fidelity needs the reference model's outputs, of the same shape as the model's")
        self.samples += out.shape[0]
        positions = out.numel() // out.shape[self.class_dim]
        self.agree += int((out.argmax(self.class_dim) == reference.argmax(self.class_dim)).sum())
        self.count += positions
        self.kl_sum += float(soft_kl(out.float(), reference.float(), 1.0, self.class_dim)) * positions

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {"agreement": math.nan, "kl": math.nan}
        return {"agreement": self.agree / self.count, "kl": self.kl_sum / self.count}


@dataclass(frozen=True, kw_only=True)
class _LabelTask(Task):
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    class_dim: ClassVar[int] = 1
    shift: ClassVar[bool] = False
    ignore_index: int = -100

    def _resize(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out

    def _extra(self, loss: float, confusion: torch.Tensor | None) -> dict[str, float]:
        return {}

    def loss(self, out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        target = self._need_target(target)
        out = self._resize(out, target)
        logits, labels = _flatten(out, target, self.class_dim, self.shift, self.ignore_index)
        return F.cross_entropy(logits, labels)

    def meter(self) -> Meter:
        return _LabelMeter(self)

    def fidelity_meter(self) -> Meter:
        return _AgreementMeter(self.class_dim)

    def compare(self, out: torch.Tensor, reference: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        return soft_kl(out, reference, temperature, self.class_dim)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ignore_index": self.ignore_index}


@register_task
@dataclass(frozen=True, kw_only=True)
class Classification(_LabelTask):
    """One label per example from logits (N, C): cross-entropy, top-1 accuracy (the default task)."""

    name: ClassVar[str] = "classification"


@register_task
@dataclass(frozen=True, kw_only=True)
class SequenceClassification(_LabelTask):
    """One label per sequence from a text model's ``logits`` (N, C); inputs as ``input_ids`` + ``attention_mask``."""

    name: ClassVar[str] = "sequence-classification"


@register_task
@dataclass(frozen=True, kw_only=True)
class TokenClassification(_LabelTask):
    """One label per token: logits (B, T, C), labels (B, T); positions labelled ``ignore_index`` do not count."""

    name: ClassVar[str] = "token-classification"
    class_dim: ClassVar[int] = -1


@register_task
@dataclass(frozen=True, kw_only=True)
class LanguageModeling(_LabelTask):
    """Next-token prediction from logits (B, T, V): cross-entropy of position t against token t + 1, perplexity.

    Without labels in the batch the targets are the ``input_ids`` themselves (padding, where ``attention_mask`` is
    0, does not count), as Hugging Face's causal language models do.
    """

    name: ClassVar[str] = "language-modeling"
    metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    class_dim: ClassVar[int] = -1
    shift: ClassVar[bool] = True

    def split(self, batch: Any) -> tuple[Inputs, torch.Tensor | None]:
        """A dict batch: ``labels`` if present, else ``input_ids`` masked by ``attention_mask``. A tuple batch holds
        inputs only, ``(input_ids[, attention_mask])``; a tensor batch is the token ids."""
        if isinstance(batch, Mapping):
            inputs, target = super().split(batch)
            if target is not None:
                return inputs, target
            if "input_ids" not in inputs:
                raise DataError("a language-modelling dict batch needs 'input_ids' (or 'labels')")
            named = cast(dict[str, torch.Tensor], inputs)  # a dict batch's inputs are a dict
            ids, mask = named["input_ids"], named.get("attention_mask")
        elif isinstance(batch, (tuple, list)):
            inputs = tuple(batch) if len(batch) > 1 else batch[0]
            ids, mask = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            inputs, ids, mask = batch, batch, None
        target = ids.clone()
        if mask is not None:
            target[mask == 0] = self.ignore_index
        return inputs, target

    def _extra(self, loss: float, confusion: torch.Tensor | None) -> dict[str, float]:
        return {"perplexity": math.exp(loss) if loss < 700 else math.inf}


@register_task
@dataclass(frozen=True, kw_only=True)
class Segmentation(_LabelTask):
    """A class per pixel: logits (B, C, H, W), labels (B, H, W); per-pixel cross-entropy, mIoU and pixel accuracy.

    Logits smaller than the labels (decoders that predict at a fraction of the resolution) are upsampled
    bilinearly first. mIoU averages intersection-over-union over the classes present in the labels or predictions.
    """

    name: ClassVar[str] = "segmentation"
    metric: ClassVar[str] = "miou"

    def _resize(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.ndim != 4 or target.ndim != 3:
            raise DataError(f"segmentation needs logits (B, C, H, W) and labels (B, H, W), got {tuple(out.shape)} "
                            f"and {tuple(target.shape)}")  # fmt: skip
        if out.shape[-2:] != target.shape[-2:]:
            out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def meter(self) -> Meter:
        return _LabelMeter(self, confusion=True)

    def _extra(self, loss: float, confusion: torch.Tensor | None) -> dict[str, float]:
        if confusion is None or confusion.numel() == 0:
            return {"miou": math.nan}
        inter = confusion.diag().double()
        union = confusion.sum(0).double() + confusion.sum(1).double() - inter
        present = union > 0
        return {"miou": float((inter[present] / union[present]).mean()) if present.any() else math.nan}

