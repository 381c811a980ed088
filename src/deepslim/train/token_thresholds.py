"""Learned token thresholds (Kim et al., "Learned Token Pruning for Transformers", KDD 2022) for sentence encoders.

Each layer gets one threshold on the attention a token receives, as a multiple of the uniform share (1.0: an
average token). While learning, a token is not removed but scaled: its size is multiplied by
sigmoid((share − threshold) / temperature), which attention sees through log(size) and mean pooling through the
size weight, so the thresholds get gradients. The loss is the student's embedding distance to the dense teacher
(1 − cosine) plus ``penalty`` × how far the share of tokens the layers keep is above ``keep_target`` (a token
budget). The model's weights can learn with the thresholds (LTP fine-tunes both). At the end the soft masks are
replaced by hard thresholds (:class:`~deepslim.compress.tokens.PruneTokensConfig` ``threshold=(...)``): tokens
below them leave the sequence, so later layers run on fewer tokens, in PyTorch and in the exported ONNX graph.

>>> result = learn_token_thresholds(student, teacher, ids, mask, TokenThresholdConfig(keep_target=0.5),
...                                 EncoderKDConfig(cpu_seconds=300))
>>> result["thresholds"]                          # per layer; the student now prunes with them
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.compress.tokens.config import PruneTokensConfig, expand
from deepslim.compress.tokens.encoders import BertTokenReduction, LayerPlan, SoftThresholds
from deepslim.compress.tokens.verbs import layer_plans, prune_tokens_
from deepslim.config import Config
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.hf import SentenceEncoder
from deepslim.train.student import EncoderKDConfig, adamw, length_batches, spent_share

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TokenThresholdConfig(Config):
    """``keep_target``: the share of the tokens the layers keep on average (the budget: about 1 / speed-up of the
    token-wise work); ``penalty`` weighs the excess over it against the embedding loss. ``init``: the starting
    threshold (one, or one per layer; below 0 every token starts whole). ``temperature`` is the soft mask's width in
    uniform shares, annealed to a fifth of it over the budget so that the soft model ends close to the hard one.
    ``threshold_lr``: AdamW's step for the thresholds; ``train_weights``: the weights learn too (at the
    distillation config's ``lr``). ``pool_removed``: removed tokens still count in the mean pooling with their
    state at the layer they left (:class:`~deepslim.compress.tokens.PruneTokensConfig`)."""

    keep_target: float = 0.5
    penalty: float = 4.0
    init: float | tuple[float, ...] = -0.2
    temperature: float = 0.1
    threshold_lr: float = 0.01
    train_weights: bool = True
    pool_removed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.init, list):
            object.__setattr__(self, "init", tuple(self.init))
        if not 0.0 < self.keep_target <= 1.0:
            raise ConfigError(f"keep_target is a share of the tokens, in (0, 1]; got {self.keep_target}")
        if not (self.penalty >= 0 and self.temperature > 0 and self.threshold_lr > 0):
            raise ConfigError("penalty must be >= 0, temperature and threshold_lr positive")


_Soft = tuple[SentenceEncoder, BertTokenReduction, SoftThresholds]


def _soft_student(student: nn.Module, config: TokenThresholdConfig) -> _Soft:
    if not isinstance(student, SentenceEncoder):
        raise UnsupportedModelError(f"learned token thresholds need a deepslim.models.hf.SentenceEncoder (load_model"
                                    f"('all-minilm-l6-v2') or 'hf:PATH'), got {type(student).__name__}")  # fmt: skip
    plans = layer_plans(student)
    if any(p.active for p in plans):
        raise ConfigError("learn thresholds on a model without token reduction (merging, ratios or thresholds)")
    soft = SoftThresholds(expand(config.init, len(plans), "init"), config.temperature)
    reduction = BertTokenReduction([LayerPlan()] * len(plans), pool_removed=config.pool_removed)
    reduction.soft = soft
    student.reduction = reduction
    return student, reduction, soft


def learn_token_thresholds(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                           config: TokenThresholdConfig, kd: EncoderKDConfig) -> dict[str, Any]:  # fmt: skip
    """Learn one token threshold per layer of ``student`` (a copy of ``teacher``, or a compressed one) on the token
    ids/mask of distillation texts, under ``kd``'s budget (CPU seconds, wall seconds or steps) and learning rate;
    then install them as hard thresholds. Returns the thresholds, the soft share of tokens kept per layer over the
    last tenth of the run, and what the run did."""
    encoder, reduction, soft = _soft_student(student, config)
    groups: list[dict[str, Any]] = [{"params": [soft.threshold], "lr": config.threshold_lr, "weight_decay": 0.0}]
    if config.train_weights:
        groups.append({"params": [p for p in encoder.encoder.parameters() if p.requires_grad], "lr": kd.lr})
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = adamw(groups, kd)  # each group's own lr; kd's weight decay where a group sets none
    teacher.eval()
    student.train(kd.dropout)
    batches = length_batches(ids, mask, kd.batch_size, seed=kd.seed)
    c0, w0, step, losses, kept = time.process_time(), time.monotonic(), 0, [], []
    try:
        while (frac := spent_share(kd, time.process_time() - c0, time.monotonic() - w0, step)) < 1.0:
            anneal = 0.5 * (1 + math.cos(math.pi * frac))
            scale = frac / kd.warmup if frac < kd.warmup else anneal
            for g in opt.param_groups:  # the thresholds skip the warm-up: they have to move from the start
                g["lr"] = g["base_lr"] * (scale if g["params"][0] is not soft.threshold else anneal)
            soft.temperature = config.temperature * (1.0 - 0.8 * frac)
            b_ids, b_mask = next(batches)
            with torch.no_grad():
                target = teacher(b_ids, b_mask)
            emb = 1.0 - F.cosine_similarity(student(b_ids, b_mask), target, dim=-1).mean()
            share = torch.stack(reduction.kept).mean()
            loss = emb + config.penalty * F.relu(share - config.keep_target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(emb.detach()))
            kept.append([float(k.detach().mean()) for k in reduction.kept])
            if step % 10 == 0:
                log.info("step %d  cpu %.0fs  embedding loss %.4f  kept %.3f  thresholds %s", step,
                         time.process_time() - c0, losses[-1], float(share.detach()),
                         [round(float(t), 3) for t in soft.threshold.detach()])  # fmt: skip
    finally:
        encoder.reduction = None
        student.eval()
    thresholds = tuple(round(max(0.0, float(t)), 4) for t in soft.threshold.detach())
    prune_tokens_(student, PruneTokensConfig(keep_ratio=1.0, threshold=thresholds, pool_removed=config.pool_removed))
    tail = max(1, len(losses) // 10)
    return {"thresholds": list(thresholds), "steps": step, "cpu_s": round(time.process_time() - c0, 1),
            "wall_s": round(time.monotonic() - w0, 1), "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-tail:]) / tail if losses else None,
            "soft_kept_per_layer": [round(sum(k[i] for k in kept[-tail:]) / tail, 4) for i in range(len(kept[0]))]
            if kept else []}  # fmt: skip


@torch.no_grad()
def kept_shares(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The share of each text's tokens that every layer of a threshold-pruned ``model`` keeps, averaged over the
    texts (run one text at a time: what batch 1 computes)."""
    reduction = getattr(model, "reduction", None)
    if not isinstance(reduction, BertTokenReduction):
        raise ConfigError("kept_shares reads a SentenceEncoder with token reduction (prune_tokens_ first)")
    totals: list[float] = []
    for i in range(len(ids)):
        real = mask[i].bool()
        reduction.record = True
        try:
            model(ids[i : i + 1, real], mask[i : i + 1, real])
        finally:
            reduction.record = False
        shares = [float(k.mean()) for k in reduction.kept]
        totals = [a + b for a, b in zip(totals, shares, strict=True)] if totals else shares
    return [t / len(ids) for t in totals]
