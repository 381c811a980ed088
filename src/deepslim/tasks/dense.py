"""Tasks whose targets are real vectors: regression (mean squared error, R²) and embeddings (cosine similarity).

An embedding model is judged by how closely its vectors follow a reference model's (the uncompressed model, or
precomputed target embeddings in the batch): cosine similarity, the measure sentence-embedding search ranks by.
Token-level outputs (``last_hidden_state``, (B, T, H)) are mean-pooled over the attention mask, as
Sentence-BERT does (Reimers & Gurevych, EMNLP 2019), or read at the first token (``pooling="cls"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from deepslim.errors import ConfigError, DataError
from deepslim.tasks._base import Inputs, Meter, Task, pick_output, register_task


def _like(target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The target in the output's shape ((N,) and (N, 1) are the same thing)."""
    if target.shape != out.shape:
        if target.numel() != out.numel():
            raise DataError(f"outputs of shape {tuple(out.shape)} do not fit targets of shape {tuple(target.shape)}")
        target = target.reshape(out.shape)
    return target.to(out.dtype)


class _RegressionMeter:
    """Mean squared error and R² (1 − SSE/SST per output, averaged over outputs, as scikit-learn does)."""

    def __init__(self, task: Task):
        self.task, self.samples = task, 0
        self.sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # SSE, sum of y, sum of y² per output

    def update(self, out: torch.Tensor, target: torch.Tensor | None) -> None:
        y = _like(self.task._need_target(target), out).double().reshape(out.shape[0], -1)
        pred = out.double().reshape(out.shape[0], -1)
        sse, sum_y, sum_y2 = (pred - y).square().sum(0), y.sum(0), y.square().sum(0)
        if self.sums is not None:
            sse, sum_y, sum_y2 = sse + self.sums[0], sum_y + self.sums[1], sum_y2 + self.sums[2]
        self.sums = (sse, sum_y, sum_y2)
        self.samples += out.shape[0]

    def result(self) -> dict[str, float]:
        if self.sums is None or self.samples == 0:
            return {"loss": math.nan, "mse": math.nan, "r2": math.nan}
        n, (sse, sum_y, sum_y2) = self.samples, self.sums
        mse = float(sse.sum()) / (n * sse.numel())
        sst = sum_y2 - sum_y.square() / n
        r2 = float((1 - sse / sst).mean()) if bool((sst > 0).all()) else math.nan
        return {"loss": mse, "mse": mse, "r2": r2}


@register_task
@dataclass(frozen=True, kw_only=True)
class Regression(Task):
    """Real-valued outputs (N,) or (N, D) against targets of the same size: MSE loss, R² as the metric."""

    name: ClassVar[str] = "regression"
    metric: ClassVar[str] = "r2"
    higher_is_better: ClassVar[bool] = True
    output_keys: ClassVar[tuple[str, ...]] = ("logits", "predictions", "prediction")
    has_classes: ClassVar[bool] = False

    def loss(self, out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return F.mse_loss(out, _like(self._need_target(target), out))

    def meter(self) -> Meter:
        return _RegressionMeter(self)

    def compare(self, out: torch.Tensor, reference: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        return F.mse_loss(out, _like(reference, out))


class _CosineMeter:
    """Mean cosine similarity of outputs to targets (or to a reference model's outputs)."""

    def __init__(self, task: Task):
        self.task, self.samples, self.cos_sum = task, 0, 0.0

    def update(self, out: torch.Tensor, target: torch.Tensor | None) -> None:
        cos = F.cosine_similarity(out.float(), _like(self.task._need_target(target), out).float(), dim=-1)
        self.cos_sum += float(cos.sum())
        self.samples += cos.numel()

    def result(self) -> dict[str, float]:
        if self.samples == 0:
            return {"loss": math.nan, "cosine": math.nan}
        cos = self.cos_sum / self.samples
        return {"loss": 1.0 - cos, "cosine": cos}


@register_task
@dataclass(frozen=True, kw_only=True)
class Embedding(Task):
    """Embedding vectors (N, H), or token states (B, T, H) pooled: loss 1 − cosine similarity to the targets."""

    name: ClassVar[str] = "embedding"
    metric: ClassVar[str] = "cosine"
    higher_is_better: ClassVar[bool] = True
    output_keys: ClassVar[tuple[str, ...]] = ("sentence_embedding", "embeddings", "last_hidden_state")
    has_classes: ClassVar[bool] = False
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"embedding pooling must be 'mean' or 'cls', got {self.pooling!r}")

    def output(self, out: Any, inputs: Inputs) -> torch.Tensor:
        emb = pick_output(out, self.output_keys)
        if emb.ndim != 3:
            return emb
        if self.pooling == "cls":
            return emb[:, 0]
        mask = _attention_mask(inputs, emb)
        if mask is None:
            return emb.mean(1)
        w = mask.to(emb.dtype).unsqueeze(-1)  # (B, T, 1)
        return (emb * w).sum(1) / w.sum(1).clamp_min(1e-9)

    def loss(self, out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self.compare(out, self._need_target(target))

    def meter(self) -> Meter:
        return _CosineMeter(self)

    def compare(self, out: torch.Tensor, reference: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(out, _like(reference, out), dim=-1).mean()

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pooling": self.pooling}


def _attention_mask(inputs: Inputs, states: torch.Tensor) -> torch.Tensor | None:
    """The (B, T) attention mask among the inputs: ``attention_mask`` in a dict, or a tuple's second input."""
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
    elif isinstance(inputs, (tuple, list)) and len(inputs) > 1:
        mask = inputs[1]
    else:
        return None
    return mask if isinstance(mask, torch.Tensor) and mask.shape == states.shape[:2] else None
