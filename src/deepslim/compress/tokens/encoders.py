"""Encoders that reduce their tokens between layers: a BERT-style Hugging Face encoder and the zoo's ViT.

Each layer runs attention on the current tokens (with ToMe's size bias), then reduces them (pruning by the attention
they received, merging by the similarity of their keys) before the feed-forward block, which is where most of a
layer's time goes at short sequences. The layers' own weights are used unchanged: a schedule that reduces nothing
computes exactly what the original model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.compress.tokens._reduce import (
    attention_received,
    bipartite_merge,
    gather_tokens,
    merge_metric,
    prune_index,
    size_bias,
    soft_threshold,
    static_len,
    threshold_index,
    uniform_share,
)
from deepslim.compress.tokens.config import STATE_METRICS
from deepslim.models.transformer import VisionTransformer


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does to its tokens: prune to ``keep_ratio`` (1.0: none), then merge ``r`` (0: none), tokens
    compared by ``metric`` (:func:`~deepslim.compress.tokens._reduce.merge_metric`)."""

    keep_ratio: float = 1.0
    threshold: float | None = None
    r: int = 0
    metric: str = "keys"

    @property
    def needs_states(self) -> bool:
        """Whether the merge compares the layer-normalized token states (which the encoder then computes)."""
        return self.r > 0 and self.metric in STATE_METRICS

    @property
    def active(self) -> bool:
        return self.keep_ratio < 1.0 or self.threshold is not None or self.r > 0


def _heads(t: torch.Tensor, head_size: int, dynamic: bool) -> torch.Tensor:
    """(B, T, H·D) -> (B, H, T, D), with T and H constants of an exported graph (no Shape operators per layer)
    unless the token count depends on the text (``dynamic``: threshold pruning)."""
    if dynamic:
        return t.unflatten(-1, (-1, head_size)).transpose(1, 2)
    return t.view(-1, static_len(t), static_len(t, -1) // head_size, head_size).transpose(1, 2)


def _identity(x: torch.Tensor) -> torch.Tensor:
    """(B, T, T): every input token is its own single member."""
    t = static_len(x)
    return torch.eye(t, dtype=x.dtype, device=x.device).expand(x.shape[0], t, t)


def reduce_tokens(plan: LayerPlan, x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, probs: torch.Tensor, *,
                  padding: bool = True, normed: torch.Tensor | None = None,
                  norm: nn.LayerNorm | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One layer's reduction of x (B, T, C) and sizes (B, T); keys (B, H, T, D) and probs (B, H, T, T); ``normed``
    (B, T, C): the layer-normalized states for ``plan.needs_states``, or, with ``norm``, that LayerNorm's
    output (:func:`~deepslim.compress.tokens._reduce.merge_metric` undoes its scale and shift).
    ``padding=False``: no token has size 0 (a ViT), so the merge needs no padding rules."""
    if plan.threshold is not None:  # learned token pruning: the count depends on the input (never with the others)
        kept, size = threshold_index(size, uniform_share(attention_received(probs, size), size), plan.threshold)
        return gather_tokens(x, kept), size
    metric = merge_metric(plan.metric, keys, normed, norm) if plan.r > 0 else None  # (B, T, D)
    if plan.keep_ratio < 1.0:
        idx, size = prune_index(size, attention_received(probs, size), plan.keep_ratio)
        if idx is not None:
            x, size = gather_tokens(x, idx), size.gather(1, idx)
            metric = None if metric is None else gather_tokens(metric, idx)
    if metric is not None:
        x, size = bipartite_merge(x, size, metric, plan.r, padding=padding, unit=plan.metric != "keys")
    return x, size


class SoftThresholds(nn.Module):
    """Per-layer token thresholds being learned (LTP's soft masks): a size-scaling sigmoid instead of removal.

    Installed as ``BertTokenReduction.soft`` while :func:`~deepslim.train.learn_token_thresholds` trains.
    """

    def __init__(self, thresholds: Sequence[float], temperature: float):
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor([float(t) for t in thresholds]))
        self.temperature = temperature


class BertTokenReduction(nn.Module):
    """Runs a Hugging Face ``BertModel``'s layers with token reduction: (input_ids, mask) -> (states, sizes).

    It holds no weights (the encoder is passed in), so installing it changes no state dict (``soft``, set only
    while thresholds are learned, holds the thresholds being trained). While learning, or with ``record`` set,
    ``kept`` holds after each forward every layer's share (B,) of the real tokens still present (a soft size
    counts as its value). ``pool_removed``: a token that leaves still counts in the mean pooling with its state
    at the layer it left (one extra pooled token carries their size-weighted mean), so the sentence embedding keeps
    every word.

    With ``trace`` set (token-level distillation, :mod:`deepslim.train.token_kd`), ``traced`` holds after each
    forward, per layer, its output states (B, T_l, C), their sizes (B, T_l) and their *members* (B, T_l, T): row
    j is the share of token j's size that each input token makes up. Members are merged and gathered exactly as
    the states are (a size-weighted mean of shares is the share of the merged token), so ``members @ states`` of
    the unreduced model is each reduced token's target: the mean of the states of the input tokens it stands for.
    """

    def __init__(self, plans: list[LayerPlan], *, pool_removed: bool = False):
        super().__init__()
        self.plans = list(plans)
        self.pool_removed = pool_removed
        self.soft: SoftThresholds | None = None
        self.record = False
        self.kept: list[torch.Tensor] = []
        self.trace = False
        self.traced: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, encoder: Any, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        x = encoder.embeddings(input_ids=input_ids)  # (B, T, C)
        size = attention_mask.to(x.dtype)  # (B, T): 1 real, 0 padding
        record = self.soft is not None or self.record
        self.kept, real = [], size.sum(dim=1).clamp_min(1.0)
        gone: tuple[torch.Tensor, torch.Tensor] | None = None  # (size-weighted sum of removed states, their size)
        members = _identity(x) if self.trace else None
        self.traced = []
        dynamic = any(p.threshold is not None for p in self.plans)
        for i, (layer, plan) in enumerate(zip(encoder.encoder.layer, self.plans, strict=True)):
            soft = None if self.soft is None else (self.soft, i)
            x, size, left, members = self._layer(layer, plan if soft is None else LayerPlan(), x, size, soft,
                                                 self.pool_removed, members, dynamic)  # fmt: skip
            if members is not None:
                self.traced.append((x, size, members))
            if left is not None:
                gone = left if gone is None else (gone[0] + left[0], gone[1] + left[1])
            if record:
                self.kept.append(size.clamp(max=1.0).sum(dim=1) / real)
        if gone is not None:
            x = torch.cat([x, (gone[0] / gone[1].clamp_min(1e-6).unsqueeze(-1)).unsqueeze(1)], dim=1)
            size = torch.cat([size, gone[1].unsqueeze(1)], dim=1)
        return x, size

    @staticmethod
    def _layer(layer: Any, plan: LayerPlan, x: torch.Tensor, size: torch.Tensor,
               soft: tuple[SoftThresholds, int] | None = None, pool: bool = False,
               members: torch.Tensor | None = None,
               dynamic: bool = False) -> tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor | None]:
        """One layer: (states, sizes, what left for the pooling or None, members or None); ``dynamic``: the token
        count depends on the text (threshold pruning), so the graph reads it instead of holding it as a constant."""
        sa = layer.attention.self
        q, k, v = (_heads(p(x), sa.attention_head_size, dynamic) for p in (sa.query, sa.key, sa.value))  # (B, H, T, D)
        logits = torch.matmul(q, k.transpose(2, 3)) * sa.scaling + size_bias(size, x.dtype, static=not dynamic)
        probs = F.softmax(logits, dim=-1)
        probs = F.dropout(probs, p=sa.dropout.p, training=sa.training)
        ctx = torch.matmul(probs, v).transpose(1, 2)  # (B, T, H, D)
        ctx = ctx.flatten(2) if dynamic else ctx.reshape(-1, static_len(x), static_len(v, 1) * static_len(v, 3))
        h_in = h = layer.attention.output(ctx, x)
        size_in = size
        if soft is not None:
            share = uniform_share(attention_received(probs, size), size)
            size = soft_threshold(size, share, soft[0].threshold[soft[1]], soft[0].temperature)
        norm = layer.attention.output.LayerNorm
        if members is None:
            h, size = reduce_tokens(plan, h, size, k, probs, normed=h, norm=norm)
        else:  # the members ride along as extra channels, merged and gathered with the states
            both, size = reduce_tokens(plan, torch.cat([h, members], dim=-1), size, k, probs, normed=h, norm=norm)
            h, members = both[..., : static_len(h, -1)], both[..., static_len(h, -1) :]
        left = None
        if pool:  # what left here: all states weighted by size, less those that stay
            left = ((h_in * size_in.unsqueeze(-1)).sum(1) - (h * size.unsqueeze(-1)).sum(1),
                    size_in.sum(1) - size.sum(1))  # fmt: skip
        return layer.output(layer.intermediate(h), h), size, left, members


class TokenVisionTransformer(VisionTransformer):
    """The zoo's ViT with token reduction in its blocks (``token_plans``, one per block); the class a ViT takes
    after :func:`~deepslim.compress.tokens.merge_tokens_` (same weights, same state dict)."""

    token_plans: list[LayerPlan]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        size = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        padding = any(p.threshold is not None for p in self.token_plans)  # rows of a batch then keep unlike counts
        reduced = False
        for block, plan in zip(self.blocks, self.token_plans, strict=True):
            if not (reduced or plan.active):
                x = block(x)  # nothing merged yet: the block itself, bit for bit
                continue
            x, size = self._block(block, plan, x, size, padding)
            reduced = True
        return self.head(self.norm(x)[:, 0])

    @staticmethod
    def _block(block: Any, plan: LayerPlan, x: torch.Tensor, size: torch.Tensor,
               padding: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        attn = block.attn
        inner = attn.num_heads * attn.head_dim
        q, k, v = attn.qkv(block.ln1(x)).split(inner, dim=-1)
        q, k, v = (t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2) for t in (q, k, v))
        bias = size_bias(size, x.dtype, padding=padding, static=not padding)  # padding: thresholds, dynamic counts
        logits = torch.matmul(q, k.transpose(2, 3)) * attn.head_dim**-0.5 + bias
        probs = F.softmax(logits, dim=-1)  # (B, H, N, N)
        x = x + attn.proj(torch.matmul(probs, v).transpose(1, 2).flatten(2))
        normed = F.layer_norm(x, block.ln2.normalized_shape, eps=block.ln2.eps) if plan.needs_states else None
        x, size = reduce_tokens(plan, x, size, k, probs, padding=padding, normed=normed)  # images have no padding
        return x + block.mlp(block.ln2(x)), size
