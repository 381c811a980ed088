"""Distillation of a compressed sentence encoder from the full one, under a CPU-time budget.

The student (head-pruned, layer-dropped, or the same depth) learns the teacher's sentence embeddings (1 − cosine)
and, per token, the teacher's hidden states at mapped depths (mean squared error relative to the teacher states'
mean square): TinyBERT's hidden-state transfer (Jiao et al., "TinyBERT", Findings of EMNLP 2020) with the
sentence-embedding objective of the model's own task. A token-level target carries far more signal per sentence
than one pooled vector, which is what makes a few CPU-minutes enough.

Batches are built by length (dynamic padding: texts of similar length share a batch and are padded to the longest
of them only), and the learning rate follows a cosine over the *budget* (CPU seconds, or steps), so a run that is
stopped by its budget has annealed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim._hooks import ForwardHook, hooked
from deepslim.config import Config
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.hf import SentenceEncoder, mean_pool

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
"""The arithmetic a distillation's forward and backward passes run in (EncoderKDConfig.precision)."""


@dataclass(frozen=True, kw_only=True)
class EncoderKDConfig(Config):
    """``cpu_seconds`` (process CPU time), ``wall_seconds`` or ``steps`` bounds the run (whichever comes first; at
    least one set; on a shared machine a wall-clock bound keeps a deadline, and the run still anneals).

    ``hidden_weight`` weighs the hidden-state loss against the embedding loss (0: embeddings only). ``layer_map``:
    for each student layer, the teacher layer whose output it learns (None: the same index when the depths match,
    else evenly spaced ending at the last layer). ``warmup`` is the share of the budget with a linear warm-up.
    ``dropout``: keep the student's dropout active while it learns (off by default: the target is the teacher's
    deterministic function, and noise slows a short run down). ``relation_weight`` > 0 adds MiniLM's
    self-attention and value-relation transfer of the last layer (:func:`relation_loss`; 0: off); with
    ``relation_heads`` > 0 instead MiniLMv2's query, key and value relations in that many relation heads on every
    student layer and its mapped teacher layer (:func:`relation_heads_loss`: heads may differ in number; it needs
    ``relation_weight`` > 0, the weight of that term).

    ``layer_weights``: one weight per student layer for its hidden-state term (the hidden loss is their weighted
    mean; None: equal; ``(0, 0, 1)``: the last layer's states only). ``skip_batches``: batches of the seeded stream
    an earlier run already drew (its ``steps``): a run that continues a saved student draws the batches a single
    longer run would have drawn next instead of repeating the first ones (its optimizer moments and learning-rate
    schedule start afresh: a warm restart).

    ``precision``: ``"fp32"`` (default) or ``"bf16"`` — the teacher's and the student's forward and backward passes
    under ``torch.autocast`` in bfloat16 (the weights, the optimizer and the loss stay float32). On a CPU with AMX
    or AVX512-BF16 each step costs less CPU time, so a CPU-time budget buys more steps; elsewhere bf16 may be slower.

    ``fused`` (default True): AdamW's update as one fused kernel over all the student's weights (torch's
    ``fused=True``, on CPU and CUDA weights; elsewhere the per-tensor loop) — the same algorithm, rounded
    differently. The per-tensor loop's update over the 11.7 M word-embedding weights was ~40 % of a 3-layer MiniLM
    student's bf16 step here; fused, the same 150 steps of batch 32 on real text cost 1.34× and 1.77× fewer
    CPU-seconds in two paired runs (session 19), at the same fidelity. ``fused=False`` reproduces the runs made before
    it step for step.
    """

    lr: float = 1e-4
    cpu_seconds: float | None = 600.0
    steps: int | None = None
    wall_seconds: float | None = None
    batch_size: int = 32
    hidden_weight: float = 1.0
    layer_map: tuple[int, ...] | None = None
    warmup: float = 0.05
    weight_decay: float = 0.01
    dropout: bool = False
    relation_weight: float = 0.0
    relation_heads: int = 0
    layer_weights: tuple[float, ...] | None = None
    skip_batches: int = 0
    seed: int = 0
    precision: str = "fp32"
    fused: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.fused, bool):
            raise ConfigError(f"fused must be True or False, got {self.fused!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.cpu_seconds is None and self.steps is None and self.wall_seconds is None:
            raise ConfigError("set cpu_seconds, wall_seconds or steps: the distillation needs a budget")
        for what in ("cpu_seconds", "wall_seconds"):
            if getattr(self, what) is not None and not getattr(self, what) > 0:
                raise ConfigError(f"{what} must be positive, got {getattr(self, what)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not self.lr > 0 or self.batch_size < 1 or self.hidden_weight < 0 or not 0 <= self.warmup < 1:
            raise ConfigError("lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)")
        if not self.relation_weight >= 0:
            raise ConfigError(f"relation_weight must be >= 0 (0: off), got {self.relation_weight}")
        if isinstance(self.relation_heads, bool) or not isinstance(self.relation_heads, int) or self.relation_heads < 0:
            raise ConfigError(f"relation_heads must be a whole number >= 0 (0: the last layer's attention heads), "
                              f"got {self.relation_heads!r}")  # fmt: skip
        if self.relation_heads > 0 and not self.relation_weight > 0:
            raise ConfigError(f"relation_heads needs relation_weight > 0 (the relation term's weight), got relation_"
                              f"heads={self.relation_heads}, relation_weight={self.relation_weight}")  # fmt: skip
        if self.layer_map is not None:
            object.__setattr__(self, "layer_map", tuple(int(i) for i in self.layer_map))
        if self.layer_weights is not None:
            object.__setattr__(self, "layer_weights", _weights(self.layer_weights))
        skip = self.skip_batches
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ConfigError(f"skip_batches must be a whole number >= 0 (the steps of the run being continued), "
                              f"got {skip!r}")  # fmt: skip


def _weights(given: Any) -> tuple[float, ...]:
    """``given`` as a tuple of finite weights >= 0 with a positive sum (a ConfigError otherwise: a NaN or an
    infinite weight would make the loss NaN, a string or a number no tuple at all)."""
    try:
        if isinstance(given, (str, bytes)) or any(isinstance(w, (bool, str, bytes)) for w in given):
            raise TypeError
        weights = tuple(float(w) for w in given)
    except (TypeError, ValueError):
        raise ConfigError(f"layer_weights must be a sequence of numbers (one per student layer), got {given!r}") \
            from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"layer_weights must be finite and >= 0 with a positive sum, got {weights}")
    return weights


def length_batches(ids: torch.Tensor, mask: torch.Tensor, batch_size: int, *, seed: int = 0, trim: bool = True,
                   skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Endless shuffled batches of texts of similar length, each cut to its longest text (dynamic padding) unless
    ``trim`` is False (token reduction merges a fixed number of tokens: its inputs keep their full length). The
    first ``skip`` batches of the stream are passed over (a continued run draws what comes next)."""
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = random.Random(seed)
    while True:
        rng.shuffle(chunks)
        for chunk in chunks:
            if skip > 0:
                skip -= 1
                continue
            width = int(lengths[chunk].max()) if trim else ids.shape[1]
            yield ids[chunk, :width], mask[chunk, :width]


def _encoder(model: nn.Module, role: str) -> Any:
    if not isinstance(model, SentenceEncoder) or (role == "teacher" and model.reduction is not None):
        raise UnsupportedModelError(f"the {role} must be a deepslim.models.hf.SentenceEncoder (the teacher without "
                                    f"token reduction), got {type(model).__name__}")  # fmt: skip
    return model.encoder


def layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """Evenly spaced teacher layers ending at the last one: 3 of 6 -> (1, 3, 5); equal depths -> identity."""
    step = teacher_layers / student_layers
    return tuple(round(step * (i + 1)) - 1 for i in range(student_layers))


def _states(encoder: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return tuple(out.hidden_states[1:])  # one per layer, (B, T, H)


def adamw(params: Any, config: EncoderKDConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups) at ``config``'s learning rate and weight decay, fused into
    one kernel when ``config.fused`` and every tensor lives on a CPU or CUDA device (the devices torch's fused AdamW
    supports; elsewhere the per-tensor loop)."""
    groups = list(params)
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = config.fused and all(t.device.type in ("cpu", "cuda") for t in tensors)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def autocast(config: EncoderKDConfig) -> contextlib.AbstractContextManager[Any]:
    """The arithmetic of ``config.precision`` for the passes inside (bf16: torch.autocast on the CPU)."""
    if config.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(s: Sequence[torch.Tensor], t: Sequence[torch.Tensor], mapping: Sequence[int], mask: torch.Tensor,
          hidden_weight: float, layer_weights: Sequence[float] | None = None) -> tuple[torch.Tensor, float]:
    """(embedding loss + hidden_weight · mean relative hidden MSE over real tokens (weighted by ``layer_weights``
    per student layer when given), the embedding loss alone); computed in float32 whatever the states' dtype. The
    cast is a guard only: under bf16 autocast the hidden states come out float32 already (each layer's residual add
    promotes them), so today it copies nothing; states of another dtype would be cast here."""
    s, t = [x.float() for x in s], [x.float() for x in t]
    emb = 1.0 - F.cosine_similarity(mean_pool(s[-1], mask), mean_pool(t[-1], mask), dim=-1).mean()
    if hidden_weight == 0 or len(s) != len(mapping):
        return emb, float(emb.detach())
    w = mask.unsqueeze(-1).to(s[-1].dtype)
    rel = [((si - t[j]) ** 2 * w).sum() / ((t[j] ** 2) * w).sum().clamp_min(1e-9) if k > 0 else None
           for si, j, k in zip(s, mapping, layer_weights or [1.0] * len(mapping), strict=True)]  # fmt: skip
    if layer_weights is None:
        hidden = torch.stack([r for r in rel if r is not None]).mean()
    else:
        hidden = torch.stack([k * r for k, r in zip(layer_weights, rel, strict=True) if r is not None]).sum()
        hidden = hidden / sum(layer_weights)
    return emb + hidden_weight * hidden, float(emb.detach())


class Attentions:
    """Captures the query, key and value projections of the given layers of an encoder during a forward pass (the
    inputs of MiniLM's relation transfer), whatever attention implementation runs; ``outs[i]`` holds layer
    ``layers[i]``'s."""

    def __init__(self, encoder: Any, layers: Sequence[int]):
        self.attns = [encoder.encoder.layer[i].attention.self for i in layers]
        self.outs: list[dict[str, torch.Tensor]] = [{} for _ in self.attns]
        self._hooks = contextlib.ExitStack()

    def _hook(self, key: str) -> ForwardHook:
        """The hook of projection ``key`` ("<index in layers>.<query|key|value>"): it keeps that output in outs."""
        i, name = key.split(".")
        out = self.outs[int(i)]
        return lambda _m, _i, y: out.__setitem__(name, y)

    def __enter__(self) -> Attentions:
        projections = {f"{i}.{name}": getattr(attn, name) for i, attn in enumerate(self.attns)
                       for name in ("query", "key", "value")}  # fmt: skip
        self._hooks.enter_context(hooked(projections, forward=self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.close()


class LastAttention(Attentions):
    """The query, key and value projections of an encoder's last layer (``out``) and its attention heads."""

    def __init__(self, encoder: Any):
        super().__init__(encoder, [-1])
        self.attn, self.out = self.attns[0], self.outs[0]

    @property
    def heads(self) -> int:
        """The captured layer's attention heads (its query width over the per-head width)."""
        return int(self.out["query"].shape[-1] // self.attn.attention_head_size)


def _log_relation(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """log softmax over keys of the scaled per-head products of x and y (B, T, H) -> (B, heads, T, T), padded keys
    masked out; in float32 whatever the projections' dtype."""
    x, y = x.float(), y.float()
    b, t, h = x.shape
    xs, ys = (z.view(b, t, heads, h // heads).transpose(1, 2) for z in (x, y))
    scores = xs @ ys.transpose(-1, -2) / math.sqrt(h // heads)
    return torch.log_softmax(scores.masked_fill(mask[:, None, None, :] == 0, -1e4), dim=-1)


def relation_loss(s: dict[str, torch.Tensor], t: dict[str, torch.Tensor], mask: torch.Tensor, s_heads: int,
                  t_heads: int) -> torch.Tensor:  # fmt: skip
    """MiniLM's deep self-attention transfer (Wang et al., NeurIPS 2020): KL(teacher || student) of the last
    layer's attention distributions (query-key) plus that of its value relations (value-value), averaged over the
    real query tokens. Both are T × T per head, so the student's width may differ from the teacher's."""
    total = torch.zeros(())
    for a, b in (("query", "key"), ("value", "value")):
        lt = _log_relation(t[a], t[b], mask, t_heads)
        ls = _log_relation(s[a], s[b], mask, s_heads)
        if lt.shape != ls.shape:
            raise ConfigError(f"relation transfer needs as many heads in the student as in the teacher ({t_heads})")
        kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, heads, T)
        total = total + (kl * mask[:, None, :]).sum() / (mask.sum() * kl.shape[1]).clamp_min(1)
    return total


def relation_heads_loss(s: Sequence[dict[str, torch.Tensor]], t: Sequence[dict[str, torch.Tensor]],
                        mask: torch.Tensor, heads: int) -> torch.Tensor:  # fmt: skip
    """MiniLMv2's multi-head self-attention relation transfer (Wang et al., Findings of ACL 2021), per pair of layers
    (student, mapped teacher): KL(teacher || student) of the query-query, key-key and value-value relations, each
    projection split into ``heads`` relation heads whatever the attention heads are (a head-pruned layer has fewer
    than its teacher: the relations are T × T either way), averaged over real query tokens, heads and layers."""
    total = torch.zeros(())
    for so, to in zip(s, t, strict=True):
        for name in ("query", "key", "value"):
            if so[name].shape[-1] % heads or to[name].shape[-1] % heads:
                raise ConfigError(f"relation_heads={heads} must divide every layer's projection width (student "
                                  f"{so[name].shape[-1]}, teacher {to[name].shape[-1]})")  # fmt: skip
            lt = _log_relation(to[name], to[name], mask, heads)
            kl = (lt.exp() * (lt - _log_relation(so[name], so[name], mask, heads))).sum(-1)  # (B, heads, T)
            total = total + (kl * mask[:, None, :]).sum() / (mask.sum() * heads).clamp_min(1)
    return total / (3 * max(1, len(s)))


def spent_share(config: EncoderKDConfig, cpu: float, wall: float, step: int) -> float:
    """The share of the budget used: the largest of CPU time, wall time and steps over their bounds."""
    shares = [cpu / config.cpu_seconds if config.cpu_seconds else 0.0, wall / config.wall_seconds if
              config.wall_seconds else 0.0, step / config.steps if config.steps else 0.0]  # fmt: skip
    return max(shares)


def _captured(encoder: Any, layers: Sequence[int], config: EncoderKDConfig) -> Attentions:
    return Attentions(encoder, layers) if config.relation_heads else LastAttention(encoder)


def _relations(s: Attentions, t: Attentions, mask: torch.Tensor, config: EncoderKDConfig) -> torch.Tensor:
    if config.relation_heads:
        return relation_heads_loss(s.outs, t.outs, mask, config.relation_heads)
    assert isinstance(s, LastAttention) and isinstance(t, LastAttention)
    return relation_loss(s.out, t.out, mask, s.heads, t.heads)


TOKEN_STUDENT_UNUSED = ("layer_map", "relation_weight", "relation_heads")
"""Settings no trainer of a token-reducing student uses: :func:`deepslim.train.token_kd.distill_tokens` maps layer to
layer and learns token states, not relations (it honours ``layer_weights`` and ``hidden_weight``); both trainers
refuse them."""


def set_settings(config: EncoderKDConfig, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``config`` sets (neither None nor 0)."""
    return [name for name in names if getattr(config, name) not in (None, 0)]


def _refuse_token_settings(config: EncoderKDConfig) -> None:
    """A token-reducing student learns the pooled embedding only here (its token states differ in number from the
    teacher's): a setting of the hidden-state or relation terms would be ignored, so it is refused instead — pointing
    to token_kd.distill_tokens only when that trainer honours every refused setting. ``hidden_weight`` at its default
    (1.0) or 0 is taken as unset (the default cannot be told from a value given)."""
    names = set_settings(config, ("layer_map", "layer_weights", "relation_weight", "relation_heads"))
    if config.hidden_weight not in (0.0, EncoderKDConfig.hidden_weight):
        names.append("hidden_weight")
    if not names:
        return
    unused = ", ".join(f"{name}={getattr(config, name)!r}" for name in names)
    nowhere = [name for name in names if name in TOKEN_STUDENT_UNUSED]
    advice = (f"leave {', '.join(nowhere)} unset (no trainer of a token-reducing student uses it)" if nowhere else
              "leave it unset, or use token_kd.distill_tokens")  # fmt: skip
    raise ConfigError(f"distill_encoder learns only the embeddings of a token-reducing student and would ignore "
                      f"{unused}: {advice}")  # fmt: skip


def distill_encoder(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                    config: EncoderKDConfig) -> dict[str, Any]:  # fmt: skip
    """Train ``student`` in place on the token ids/mask of distillation texts; returns what the run did (steps,
    CPU seconds, the embedding loss at the start and over the last tenth). A student with token reduction
    (:mod:`deepslim.compress.tokens`) learns the embeddings only here, on full-length batches; to have each merged
    or pruned token learn its own teacher states as well, use :func:`deepslim.train.token_kd.distill_tokens`; the
    settings of the terms such a student cannot use here (``layer_map``, ``layer_weights``, ``relation_weight``,
    a ``hidden_weight`` other than 0 or its default) are refused with a ConfigError rather than ignored."""
    s_enc, t_enc = _encoder(student, "student"), _encoder(teacher, "teacher")
    reduced = getattr(student, "reduction", None) is not None  # token states differ in number: embeddings only
    if reduced:
        _refuse_token_settings(config)
    n_s, n_t = len(s_enc.encoder.layer), len(t_enc.encoder.layer)
    mapping = config.layer_map if config.layer_map is not None else layer_map(n_s, n_t)
    if len(mapping) != n_s or not all(0 <= j < n_t for j in mapping):
        raise ConfigError(f"layer_map needs one teacher layer (0..{n_t - 1}) per student layer ({n_s}), got {mapping}")
    if config.layer_weights is not None and len(config.layer_weights) != n_s:
        raise ConfigError(f"layer_weights needs one weight per student layer ({n_s}), got {config.layer_weights}")
    teacher.eval()
    student.train(config.dropout)  # eval mode switches dropout off (attention dropout reads the module's mode too)
    opt = adamw([p for p in student.parameters() if p.requires_grad], config)
    batches = length_batches(ids, mask, config.batch_size, seed=config.seed, trim=not reduced,
                             skip=config.skip_batches)  # fmt: skip
    c0, w0, losses, step = time.process_time(), time.monotonic(), [], 0
    while True:
        frac = spent_share(config, time.process_time() - c0, time.monotonic() - w0, step)
        if frac >= 1.0:
            break
        scale = frac / config.warmup if frac < config.warmup else 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = config.lr * scale
        b_ids, b_mask = next(batches)
        relate = config.relation_weight > 0
        with (torch.no_grad(), autocast(config),
              _captured(t_enc, mapping, config) if relate else contextlib.nullcontext() as t_rel):  # fmt: skip
            t = _states(t_enc, b_ids, b_mask)
        if reduced:
            with autocast(config):
                out = student(b_ids, b_mask)
            loss = 1.0 - F.cosine_similarity(out.float(), mean_pool(t[-1].float(), b_mask), dim=-1).mean()
            emb = float(loss.detach())
        else:
            with (autocast(config),
                  _captured(s_enc, range(n_s), config) if relate else contextlib.nullcontext() as s_rel):  # fmt: skip
                s_states = _states(s_enc, b_ids, b_mask)
            loss, emb = _loss(s_states, t, mapping, b_mask, config.hidden_weight, config.layer_weights)
            if s_rel is not None and t_rel is not None:
                loss = loss + config.relation_weight * _relations(s_rel, t_rel, b_mask.to(loss.dtype), config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(emb)
        step += 1
        if step % 10 == 0:
            log.info("step %d  cpu %.0fs  embedding loss %.4f", step, time.process_time() - c0, emb)
    student.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {"steps": step, "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.monotonic() - w0, 1),
            "layer_map": list(mapping), "skip_batches": config.skip_batches,
            "first_loss": losses[0] if losses else None, "last_loss": sum(tail) / len(tail) if tail else None}
