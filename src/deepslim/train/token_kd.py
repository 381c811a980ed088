"""Token-level distillation of a token-merging (or pruning) sentence encoder from the unreduced one.

Embedding-only distillation gives a merged model one pooled vector per text to learn from. Here every reduced token
also learns a target of its own at every layer: the mean of the teacher's states of the input tokens it stands for
(``BertTokenReduction.trace``: its members), the per-token signal of TinyBERT's hidden-state transfer (Jiao et al.,
"TinyBERT", Findings of EMNLP 2020) carried over to merged tokens. If every reduced token matched its target, the
size-weighted mean pooling would reproduce the teacher's embedding exactly, since that pooling is linear in the
token states. The loss is the embedding's 1 − cosine plus ``hidden_weight`` times the size-weighted relative squared
error of the token states, averaged over the layers (or weighted by ``layer_weights``).

The budget, learning-rate schedule and batches are those of :func:`deepslim.train.student.distill_encoder`
(:class:`~deepslim.train.student.EncoderKDConfig`); ``layer_map`` and the relation transfers do not apply (the
student is the teacher's own architecture with fewer tokens): a config that sets them is refused. A ``monitor``
(the student in eval mode -> numbers, e.g. its fidelity on held-out text) is called at the start, every
``monitor_every`` CPU seconds of training and at the end; its CPU time is not charged to the CPU budget (its wall
time is: a wall-clock bound keeps its deadline).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.hf import SentenceEncoder, mean_pool
from deepslim.train.student import (
    TOKEN_STUDENT_UNUSED,
    EncoderKDConfig,
    adamw,
    autocast,
    length_batches,
    set_settings,
    spent_share,
)

log = logging.getLogger(__name__)


def token_targets_loss(traced: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                       teacher_states: tuple[torch.Tensor, ...],
                       layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:  # fmt: skip
    """The size-weighted relative squared error of each layer's reduced token states (B, T_l, C) against their
    members' mean teacher states ``members @ teacher`` (B, T_l, T) @ (B, T, C), averaged over layers (or weighted by
    ``layer_weights``). ``traced``: ``BertTokenReduction.traced``; ``teacher_states``: one (B, T, C) per layer."""
    if len(traced) != len(teacher_states):
        raise ConfigError(f"the student traced {len(traced)} layers, the teacher has {len(teacher_states)}")
    weights = layer_weights or (1.0,) * len(traced)
    terms = []
    for (states, size, members), teacher, w in zip(traced, teacher_states, weights, strict=True):
        if w == 0:
            continue
        states, size, members, teacher = states.float(), size.float(), members.float(), teacher.float()
        target = members @ teacher  # (B, T_l, C): the mean teacher state of each token's members
        s = size.unsqueeze(-1)
        terms.append(w * ((states - target) ** 2 * s).sum() / ((target**2) * s).sum().clamp_min(1e-9))
    return torch.stack(terms).sum() / sum(weights)


Monitor = Callable[[nn.Module], dict[str, float]]


def distill_tokens(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                   config: EncoderKDConfig, *, monitor: Monitor | None = None,
                   monitor_every: float = 300.0) -> dict[str, Any]:  # fmt: skip
    """Train a token-reducing ``student`` (a :class:`SentenceEncoder` with merging or ratio pruning installed, the
    teacher's depth) in place on token ids/mask (full length: the merge counts are fixed); returns what the run did
    (steps, CPU seconds, the embedding loss at the start and over the last tenth, the token loss likewise, and
    ``monitored``: the monitor's numbers with the step and training CPU seconds of each call)."""
    reduction = getattr(student, "reduction", None)
    if not isinstance(student, SentenceEncoder) or reduction is None or not hasattr(reduction, "trace"):
        raise UnsupportedModelError("distill_tokens trains a SentenceEncoder with token merging or pruning "
                                    "installed (deepslim.compress.tokens); use distill_encoder for other students")
    if not isinstance(teacher, SentenceEncoder) or teacher.reduction is not None:
        raise UnsupportedModelError("the teacher must be a SentenceEncoder without token reduction")
    n_s, n_t = len(student.encoder.encoder.layer), len(teacher.encoder.encoder.layer)
    if n_s != n_t:
        raise ConfigError(f"the student has {n_s} layers and the teacher {n_t}: token distillation maps layer to "
                          f"layer (drop layers with distill_encoder's layer_map instead)")  # fmt: skip
    if config.layer_weights is not None and len(config.layer_weights) != n_s:
        raise ConfigError(f"layer_weights has {len(config.layer_weights)} weights, the student {n_s} layers: "
                          f"give one per layer")  # fmt: skip
    unused = [f"{name}={getattr(config, name)!r}" for name in set_settings(config, TOKEN_STUDENT_UNUSED)]
    if unused:
        raise ConfigError(f"distill_tokens does not use {', '.join(unused)} (the student maps layer to layer and "
                          f"learns token states, not relations): leave it unset or use distill_encoder")  # fmt: skip
    if monitor is not None and not monitor_every > 0:
        raise ConfigError(f"monitor_every is the CPU seconds between monitor calls: give a positive number, "
                          f"got {monitor_every!r}")  # fmt: skip
    teacher.eval()
    student.train(config.dropout)
    opt = adamw([p for p in student.parameters() if p.requires_grad], config)
    batches = length_batches(ids, mask, config.batch_size, seed=config.seed, trim=False, skip=config.skip_batches)
    c0, w0, step = time.process_time(), time.monotonic(), 0
    emb_losses: list[float] = []
    tok_losses: list[float] = []
    monitored: list[dict[str, float]] = []
    paused = [0.0]  # the monitor's CPU seconds, not charged to the budget

    def cpu() -> float:
        return time.process_time() - c0 - paused[0]

    def check() -> None:
        if monitor is None:
            return
        c1, at = time.process_time(), cpu()
        reduction.trace = False
        student.eval()
        with torch.no_grad():
            numbers = monitor(student)
        student.train(config.dropout)
        reduction.trace, reduction.traced = True, []
        monitored.append({"step": step, "cpu_s": round(at, 1), **numbers})
        log.info("step %d  cpu %.0fs  monitor %s", step, at, numbers)
        paused[0] += time.process_time() - c1

    reduction.trace = True
    try:
        check()
        while (frac := spent_share(config, cpu(), time.monotonic() - w0, step)) < 1.0:
            scale = frac / config.warmup if frac < config.warmup else 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = config.lr * scale
            b_ids, b_mask = next(batches)
            with torch.no_grad(), autocast(config):
                out = teacher.encoder(input_ids=b_ids, attention_mask=b_mask, output_hidden_states=True)
                t_states = tuple(out.hidden_states[1:])
            with autocast(config):
                pooled = student(b_ids, b_mask)
            emb = 1.0 - F.cosine_similarity(pooled.float(), mean_pool(t_states[-1].float(), b_mask), dim=-1).mean()
            tok = token_targets_loss(reduction.traced, t_states, config.layer_weights)
            loss = emb + config.hidden_weight * tok if config.hidden_weight > 0 else emb
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            emb_losses.append(float(emb.detach()))
            tok_losses.append(float(tok.detach()))
            step += 1
            if step % 10 == 0:
                log.info("step %d  cpu %.0fs  embedding loss %.4f  token loss %.4f", step, cpu(), emb_losses[-1],
                         tok_losses[-1])  # fmt: skip
            if monitor is not None and cpu() >= monitor_every * len(monitored):
                check()
        if monitor is not None and (not monitored or monitored[-1]["step"] != step):
            check()
    finally:
        reduction.trace, reduction.traced = False, []
    student.eval()
    tail = max(1, len(emb_losses) // 10)
    out = {"steps": step, "cpu_s": round(cpu(), 1), "wall_s": round(time.monotonic() - w0, 1),
            "first_loss": emb_losses[0] if emb_losses else None,
            "last_loss": sum(emb_losses[-tail:]) / tail if emb_losses else None,
            "first_token_loss": tok_losses[0] if tok_losses else None,
            "last_token_loss": sum(tok_losses[-tail:]) / tail if tok_losses else None}  # fmt: skip
    if monitor is not None:
        out |= {"monitored": monitored, "monitor_cpu_s": round(paused[0], 1)}
    return out
