"""The two token reductions, as pure functions on (B, T, C) token states and their sizes (B, T).

A token's *size* is how many input tokens it stands for: 1 at the start, the sum of the merged ones after a merge,
and 0 for padding. Attention adds log(size) to its logits (ToMe's proportional attention), so a padding token
(size 0) is masked exactly where the attention mask masked it, and pooling weighs each token by its size, so a mean
over merged tokens is the mean over the input tokens they absorbed.

- Merging: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023. Bipartite soft matching: tokens alternate
  into sets A and B, each A token is matched to its most similar B token by cosine similarity of the attention keys,
  and the r best-matched A tokens are merged (size-weighted average) into their partners. The first token (CLS) is
  never merged, and padding tokens are merged away first, into real tokens, at no cost to them (size 0).
- Pruning: Goyal et al., "PoWER-BERT", ICML 2020; Kim et al., "Learned Token Pruning", KDD 2022. A token's
  importance is the attention it receives, averaged over heads and real queries; the top ``keep`` tokens survive
  (CLS always), and with a threshold tokens below it are masked out (size 0) for the layers that follow.

Shapes stay static for a given input length (r and keep are Python ints), so the reductions export to ONNX
(Slice, TopK, GatherElements, MatMul) and run as smaller matrix products in ONNX Runtime.
"""

from __future__ import annotations

import math

import torch

_PAD_FIRST, _NEVER = 3.0, -3.0  # beyond any cosine similarity in [-1, 1]


def size_bias(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention logits (B, 1, 1, T): log(size) for real tokens, the dtype's minimum for size 0 (masked)."""
    real = size > 0
    bias = torch.where(real, size.clamp_min(1e-30).log(), torch.full_like(size, torch.finfo(dtype).min))
    return bias.to(dtype)[:, None, None, :]


def _ramp(like: torch.Tensor) -> torch.Tensor:
    """(1, T) values in (0, 1) that fall with the position: a tie-break that every runtime sorts alike."""
    t = like.shape[1]
    return 1.0 - torch.arange(t, dtype=like.dtype, device=like.device)[None, :] / (t + 1)


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx.unsqueeze(-1).repeat(1, 1, t.shape[-1]))


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor,
                    r: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Merge ``r`` tokens of x (B, T, C) with sizes (B, T) by the similarity of ``metric`` (B, T, D): T -> T - r."""
    r = min(r, (x.shape[1] - 1) // 2)  # set A (even positions, CLS excluded) offers at most this many
    if r <= 0:
        return x, size
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)  # (B, Ta, Tb)
    size_a, size_b = size[:, ::2], size[:, 1::2]
    scores = torch.where(size_b[:, None, :] > 0, scores, torch.full_like(scores, _NEVER))  # never into padding
    node_max, node_idx = scores.max(dim=-1)  # (B, Ta): each A token's best partner in B
    # padding goes first, in position order: distinct values, so that every runtime's sort picks the same tokens
    node_max = torch.where(size_a > 0, node_max, _PAD_FIRST + _ramp(node_max))
    node_max = torch.cat([torch.full_like(node_max[:, :1], 2 * _NEVER), node_max[:, 1:]], dim=1)  # CLS stays
    order = node_max.argsort(dim=-1, descending=True)
    unmerged = order[:, r:].sort(dim=-1).values  # (B, Ta - r), in their original order: CLS first
    src = order[:, :r]  # (B, r)
    dst = node_idx.gather(1, src)  # (B, r)

    # (B, Tb, r): which B token each merged A token joins; a product with it sums the sources into their
    # destinations (a scatter-add, written as a matrix product so that it exports to any ONNX runtime)
    into = (dst.unsqueeze(1) == torch.arange(size_b.shape[1], device=x.device)[None, :, None]).to(x.dtype)

    def merge(t: torch.Tensor) -> torch.Tensor:  # (B, T, c) -> (B, T - r, c), sums
        a, b = t[:, ::2], t[:, 1::2]
        return torch.cat([gather_tokens(a, unmerged), b + into @ gather_tokens(a, src)], dim=1)

    weighted = merge(x * size.unsqueeze(-1))
    new_size = merge(size.unsqueeze(-1))
    return weighted / new_size.clamp_min(1e-6), new_size.squeeze(-1)


def attention_received(probs: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The attention each token receives (B, T) from real queries, averaged over heads and queries."""
    real = (size > 0).to(probs.dtype)  # (B, Tq)
    received = (probs * real[:, None, :, None]).sum(dim=2).mean(dim=1)  # (B, Tk)
    return received / real.sum(dim=1, keepdim=True).clamp_min(1.0)


def prune_index(size: torch.Tensor, score: torch.Tensor, keep_ratio: float,
                threshold: float | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """(indices (B, keep) of the tokens to keep in order, or None for all; sizes with weak tokens masked)."""
    t = size.shape[1]
    score = torch.where(size > 0, score, _ramp(score) - 2.0)  # padding is pruned first (distinct values, see merge)
    score = torch.cat([torch.full_like(score[:, :1], 2.0), score[:, 1:]], dim=1)  # CLS: above any probability
    keep = max(1, min(t, math.ceil(keep_ratio * t)))
    if threshold is not None:
        size = torch.where(score < threshold / t, torch.zeros_like(size), size)
    if keep == t:
        return None, size
    return score.topk(keep, dim=1).indices.sort(dim=1).values, size


def prune(x: torch.Tensor, size: torch.Tensor, score: torch.Tensor, keep_ratio: float,
          threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Keep the ceil(keep_ratio · T) tokens of x (B, T, C) with the highest ``score`` (B, T), CLS always, in order;
    with ``threshold``, kept tokens scoring below it (as a multiple of the uniform share 1/T) are masked out."""
    idx, size = prune_index(size, score, keep_ratio, threshold)
    if idx is None:
        return x, size
    return gather_tokens(x, idx), size.gather(1, idx)
