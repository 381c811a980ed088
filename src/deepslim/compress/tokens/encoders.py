"""Encoders that reduce their tokens between layers: a BERT-style Hugging Face encoder and the zoo's ViT.

Each layer runs attention on the current tokens (with ToMe's size bias), then reduces them (pruning by the attention
they received, merging by the similarity of their keys) before the feed-forward block, which is where most of a
layer's time goes at short sequences. The layers' own weights are used unchanged: a schedule that reduces nothing
computes exactly what the original model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.compress.tokens._reduce import (
    attention_received,
    bipartite_merge,
    gather_tokens,
    prune_index,
    size_bias,
)
from deepslim.models.transformer import VisionTransformer


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does to its tokens: prune to ``keep_ratio`` (1.0: none), then merge ``r`` (0: none)."""

    keep_ratio: float = 1.0
    threshold: float | None = None
    r: int = 0

    @property
    def active(self) -> bool:
        return self.keep_ratio < 1.0 or self.threshold is not None or self.r > 0


def reduce_tokens(plan: LayerPlan, x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor,
                  probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One layer's reduction of x (B, T, C) and sizes (B, T); keys (B, H, T, D) and probs (B, H, T, T)."""
    metric = keys.mean(1)  # (B, T, D): ToMe's similarity measure, the keys averaged over heads
    if plan.keep_ratio < 1.0 or plan.threshold is not None:
        idx, size = prune_index(size, attention_received(probs, size), plan.keep_ratio, plan.threshold)
        if idx is not None:
            x, metric, size = gather_tokens(x, idx), gather_tokens(metric, idx), size.gather(1, idx)
    if plan.r > 0:
        x, size = bipartite_merge(x, size, metric, plan.r)
    return x, size


class BertTokenReduction(nn.Module):
    """Runs a Hugging Face ``BertModel``'s layers with token reduction: (input_ids, mask) -> (states, sizes).

    It holds no weights (the encoder is passed in), so installing it changes no state dict.
    """

    def __init__(self, plans: list[LayerPlan]):
        super().__init__()
        self.plans = list(plans)

    def forward(self, encoder: Any, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        x = encoder.embeddings(input_ids=input_ids)  # (B, T, C)
        size = attention_mask.to(x.dtype)  # (B, T): 1 real, 0 padding
        for layer, plan in zip(encoder.encoder.layer, self.plans, strict=True):
            x, size = self._layer(layer, plan, x, size)
        return x, size

    @staticmethod
    def _layer(layer: Any, plan: LayerPlan, x: torch.Tensor,
               size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        sa = layer.attention.self
        shape = (*x.shape[:-1], -1, sa.attention_head_size)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (sa.query, sa.key, sa.value))  # (B, H, T, D)
        logits = torch.matmul(q, k.transpose(2, 3)) * sa.scaling + size_bias(size, x.dtype)
        probs = F.softmax(logits, dim=-1)
        probs = F.dropout(probs, p=sa.dropout.p, training=sa.training)
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1)  # (B, T, C)
        h = layer.attention.output(ctx, x)
        h, size = reduce_tokens(plan, h, size, k, probs)
        return layer.output(layer.intermediate(h), h), size


class TokenVisionTransformer(VisionTransformer):
    """The zoo's ViT with token reduction in its blocks (``token_plans``, one per block); the class a ViT takes
    after :func:`~deepslim.compress.tokens.merge_tokens_` (same weights, same state dict)."""

    token_plans: list[LayerPlan]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        size = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        reduced = False
        for block, plan in zip(self.blocks, self.token_plans, strict=True):
            if not (reduced or plan.active):
                x = block(x)  # nothing merged yet: the block itself, bit for bit
                continue
            x, size = self._block(block, plan, x, size)
            reduced = True
        return self.head(self.norm(x)[:, 0])

    @staticmethod
    def _block(block: Any, plan: LayerPlan, x: torch.Tensor,
               size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        attn = block.attn
        inner = attn.num_heads * attn.head_dim
        q, k, v = attn.qkv(block.ln1(x)).split(inner, dim=-1)
        q, k, v = (t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2) for t in (q, k, v))
        logits = torch.matmul(q, k.transpose(2, 3)) * attn.head_dim**-0.5 + size_bias(size, x.dtype)
        probs = F.softmax(logits, dim=-1)  # (B, H, N, N)
        x = x + attn.proj(torch.matmul(probs, v).transpose(1, 2).flatten(2))
        x, size = reduce_tokens(plan, x, size, k, probs)
        return x + block.mlp(block.ln2(x)), size
