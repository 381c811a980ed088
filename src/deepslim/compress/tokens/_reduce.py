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
  (CLS always). With a threshold instead (LTP), every token whose importance is below the threshold × the
  uniform share leaves, so the number of tokens depends on the text.

Merging and ratio pruning keep shapes static for a given input length (r and keep are Python ints, and the token
counts become constants of the graph: export one file per length); threshold pruning is dynamic (NonZero). Both
export to ONNX and run as smaller matrix products in ONNX Runtime.
"""

from __future__ import annotations

import math
import warnings

import torch

from deepslim.compress.tokens.config import STATE_METRICS

_PAD_FIRST, _NEVER = 3.0, -3.0  # beyond any cosine similarity in [-1, 1]


def size_bias(size: torch.Tensor, dtype: torch.dtype, *, padding: bool = True, static: bool = True) -> torch.Tensor:
    """Additive attention logits (B, 1, 1, T): log(size) for real tokens, the dtype's minimum for size 0 (masked).
    ``padding=False``: every size is > 0 (a ViT), so the bias is log(size) alone (two operators fewer).
    ``static``: the token count is fixed for the input length (merging, ratio pruning), so an exported graph holds
    the shape as a constant (one Reshape); threshold pruning's count depends on the text (``static=False``)."""
    bias = torch.where(size > 0, size.clamp_min(1e-30).log(), torch.finfo(dtype).min) if padding else size.log()
    bias = bias.to(dtype)
    return bias.reshape(-1, 1, 1, static_len(size)) if static else bias[:, None, None, :]


def _ramp(t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, T) values in (0, 1) that fall with the position: a tie-break that every runtime sorts alike."""
    return 1.0 - torch.arange(t, dtype=dtype, device=device)[None, :] / (t + 1)


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def static_len(t: torch.Tensor, dim: int = 1) -> int:
    """A dimension as a Python int, also while the model is traced for ONNX export: the token counts of a
    reduction are fixed for a given input length (its r and keep are ints), so the graph holds them as constants
    instead of a chain of Shape/Gather/Range operators per layer. Export one file per sequence length."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(t.shape[dim])


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, *, padding: bool = True,
                    unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Merge ``r`` tokens of x (B, T, C) with sizes (B, T) by the similarity of ``metric`` (B, T, D): T -> T - r.
    The kept tokens stay in their order; a merged token is the size-weighted mean of its B token and the A tokens
    that joined it. ``padding=False`` (every size > 0, as in a ViT) leaves out the padding rules' operators;
    ``unit=True``: the metric's rows are unit vectors already (:func:`merge_metric` ``"keys_states"``, ``"states"``).

    The graph is small on purpose (31 operators in ONNX Runtime after its optimizations, none of them computing a
    shape; all but two on (B, T)-sized or (B, T - r, T)-sized tensors): one product for the similarities of set A
    (even positions) to set B (odd positions), a quarter of all pairs, one top-k for the r sources, a cumulative
    sum for where every token goes, and one product of the tokens with their pooling weights (each output row
    holds the sizes of the tokens it absorbs, divided by their sum): a weighted gather that every ONNX runtime
    runs. The two products are about half of its time at batch 1 and most of it at batch 32; the other operators
    cost 1-25 us each at batch 1 (BENCHMARKS, session 14). The weights are the comparison, cast, times the sizes:
    a broadcasting Where on that (T - r) x T matrix made the merge ~7 % slower in ONNX Runtime (session 15).

    Where similarities tie exactly (duplicate tokens, a one-channel metric), which of the tied tokens merge is the
    top-k's choice, which PyTorch leaves unspecified (ONNX's TopK takes the lowest index): the merges equal the
    session-10 function's whenever the similarities are distinct, and may differ from them under exact ties.

    Under autocast (a bf16 distillation) the whole merge runs in float32 with autocast off, as at float32 inference:
    bfloat16 scores tie where similarities differ by less than ~0.4 %, and the members that token-level
    distillation's targets are built from (merged with the states) had row sums off by up to 0.5 %. In
    all-MiniLM-L6-v2 (r = 3, 3, 2, 2, 2, 1, 32 texts of 32 tokens) this took the share of each layer's output tokens
    that stand for other input tokens than in float32 from 0, 1.6, 2.1, 3.4, 3.9, 4.6 % to 0, 0, 0, 1.0, 1.3, 2.5 %
    (what remains: the keys and states themselves come from bfloat16 layers) and the row sums' error to 0.
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return bipartite_merge(x.float(), size.float(), metric.float(), r, padding=padding, unit=unit)
    t = static_len(x)
    r = min(r, (t - 1) // 2)  # set A (even positions, CLS excluded) offers at most this many
    if r <= 0:
        return x, size
    m = metric if unit else metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # (B, A, B) cosine similarities
    every = size[:, None, :]  # (B, 1, T): the sizes as every output row sees them (also the padding rule's)
    if padding:
        scores = torch.where(every[..., 1::2] > 0, scores, _NEVER)  # never into padding
    node_max, node_idx = scores.max(dim=-1)  # (B, A): each A token's best partner in B
    # one comparison for two rules: CLS never merges, and padding A tokens go first, in position order (distinct
    # values: every runtime picks the same). A token keeps its score where its size is above the floor
    floor, first = _cls_and_padding_rules(static_len(node_max), t, x.dtype, x.device, padding)
    node_max = torch.where((size[:, 0::2] if padding else node_max) > floor, node_max, first)
    top = node_max.topk(r, dim=-1)  # (B, r): the A tokens merged away (their index in A)
    src = 2 * top.indices  # ... and their positions
    # each kept token's place in the output, from 1 (ones and zeros shaped as size and the sources by a clamp: one
    # operator each, where ones_like / a scattered scalar cost two)
    # places are counted in float32 for half-precision tokens: bfloat16 holds integers only up to 256 (float16
    # 2,048), beyond which tokens would land in the wrong rows; .to() of the same dtype adds nothing to the graph
    at = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    place = size.to(at).clamp(1.0, 1.0).scatter(1, src, top.values.to(at).clamp(0.0, 0.0)).cumsum(dim=1)
    partner = place[:, 1::2].gather(1, node_idx.gather(1, top.indices))  # (B, r): their B tokens' places
    dest = place.scatter(1, src, partner)  # a merged token goes where its partner goes
    into = dest[:, None, :] == torch.arange(1, t - r + 1, device=x.device, dtype=at)[:, None]  # (B, T - r, T)
    weight = into.to(every.dtype) * every  # each output's sizes of the tokens it absorbs
    new_size = weight.sum(dim=-1)  # (B, T - r)
    return (weight / new_size.clamp_min(1e-6).unsqueeze(-1)) @ x, new_size


def _cls_and_padding_rules(a: int, t: int, dtype: torch.dtype, device: torch.device,
                           padding: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Constants (A,) of :func:`bipartite_merge` for set A's best scores: a token whose size (with ``padding``; the
    score itself without) is above ``floor`` keeps its score, the others take ``first``. CLS's floor is +inf and
    its value below any similarity (it never merges); padding (size 0) takes values above any similarity that fall
    with the position. Without padding rules every other floor is -inf (every score stays)."""
    rest = torch.full((a - 1,), 0.0 if padding else -math.inf, dtype=dtype, device=device)
    floor = torch.cat([torch.full((1,), math.inf, dtype=dtype, device=device), rest])
    later = _PAD_FIRST + _ramp(t, dtype, device)[0, 2::2] if padding else rest
    return floor, torch.cat([torch.full((1,), 4 * _NEVER, dtype=dtype, device=device), later])


def merge_metric(kind: str, keys: torch.Tensor, normed: torch.Tensor | None,
                 norm: torch.nn.LayerNorm | None = None) -> torch.Tensor:  # fmt: skip
    """What tokens are compared by when merging, (B, T, D), from the keys (B, H, T, Dh) and, for ``"keys_states"``,
    the layer-normalized token states ``normed`` (B, T, C), or, with ``norm``, that LayerNorm's output, whose scale
    and shift are undone here (:func:`unaffine`, with the metric's constant folded into its per-channel factor).
    ``"keys"``: ToMe's keys averaged over heads. ``"keys_states"``: every head's unit key and the normalized state
    side by side, weighted so that the whole is a unit vector whose dot product with another token's is half the
    mean of their heads' key cosines plus half their states' cosine. A layer-normalized state (mean 0, mean square
    1 over its C channels) has length sqrt(C) up to the norm's eps, so it is scaled by that constant rather than
    measured (two operators fewer). Channels a zero scale removed read as absent. ``"states"``: the normalized
    state alone, a unit vector (no per-head norms, no concatenation, a product C wide). Under autocast it is computed
    in float32 with autocast off, from the keys cast back to float32 (as :func:`bipartite_merge` compares them)."""
    if torch.is_autocast_enabled(keys.device.type):
        with torch.autocast(keys.device.type, enabled=False):
            return merge_metric(kind, keys.float(), None if normed is None else normed.float(), norm)
    if kind == "keys":
        return keys.mean(1)
    # internal invariants, not input checks: MergeTokensConfig validates the metric's name, and the encoders pass
    # the states whenever a plan needs them (LayerPlan.needs_states)
    assert kind in STATE_METRICS, f"unknown merge metric {kind!r}"
    assert normed is not None, f"the {kind} metric needs the normalized token states"
    if kind == "states":
        scale = 1.0 / math.sqrt(static_len(normed, -1))
        return normed * scale if norm is None else unaffine(normed, norm, scale=scale)
    t, heads, c = static_len(keys, 2), static_len(keys, 1), static_len(normed, -1)
    per_head = keys / (keys.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(2 * heads))
    scale = 1.0 / math.sqrt(2 * c)  # a normalized state's length is sqrt(C)
    states = normed * scale if norm is None else unaffine(normed, norm, scale=scale)
    per_head = per_head.transpose(1, 2).reshape(-1, t, heads * static_len(keys, 3))  # (B, T, H·Dh)
    return torch.cat([per_head, states], dim=-1)  # (B, T, H·Dh + C), unit length


def unaffine(states: torch.Tensor, norm: torch.nn.LayerNorm, *, scale: float = 1.0) -> torch.Tensor:
    """A LayerNorm's output (B, T, C) with its scale and shift undone, times ``scale``: the normalized states
    (channels whose scale is 0 carry nothing and read 0). The factor per channel depends on the weights only, so
    an exported graph holds it as a constant: two elementwise operators on the states."""
    if norm.weight is None:
        shifted = states if norm.bias is None else states - norm.bias
        return shifted if scale == 1.0 else shifted * scale
    inv = torch.where(norm.weight.abs() > 0, scale / norm.weight, torch.zeros_like(norm.weight))
    return (states - norm.bias if norm.bias is not None else states) * inv


def attention_received(probs: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The attention each token receives (B, T) from real queries, averaged over heads and queries."""
    real = (size > 0).to(probs.dtype)  # (B, Tq)
    received = (probs * real[:, None, :, None]).sum(dim=2).mean(dim=1)  # (B, Tk)
    return received / real.sum(dim=1, keepdim=True).clamp_min(1.0)


def uniform_share(received: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The attention received (B, T) as a multiple of the uniform share among the present tokens (1.0: average),
    so that one threshold means the same at every layer and length. A token of size s < 1 (a soft mask) counts s."""
    return received * size.clamp(max=1.0).sum(dim=1, keepdim=True)


def prune_index(size: torch.Tensor, score: torch.Tensor,
                keep_ratio: float) -> tuple[torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """(indices (B, keep) of the ceil(keep_ratio · T) tokens to keep in order, or None for all; their sizes)."""
    t = static_len(size)
    # padding is pruned first (distinct values, see merge)
    score = torch.where(size > 0, score, _ramp(t, score.dtype, score.device) - 2.0)
    score = torch.cat([torch.full_like(score[:, :1], 2.0), score[:, 1:]], dim=1)  # CLS: above any probability
    keep = max(1, min(t, math.ceil(keep_ratio * t)))
    if keep == t:
        return None, size
    return score.topk(keep, dim=1).indices.sort(dim=1).values, size


def above_threshold(size: torch.Tensor, share: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, T) True for the tokens that stay: CLS, and every present token whose uniform ``share`` of the attention
    it receives is at least ``threshold`` (0 keeps every present token)."""
    keep = (share >= threshold) & (size > 0)
    return torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)


def threshold_index(size: torch.Tensor, share: torch.Tensor,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Learned Token Pruning's hard threshold: (indices (B, K) in order, their sizes), K the most tokens any row
    keeps. The count depends on the input, so the graph is dynamic (NonZero): at batch 1 the dropped tokens are
    gone; in a batch, a row that keeps fewer than K tokens carries the rest with size 0 (masked, as padding is)."""
    keep = above_threshold(size, share, threshold)
    pos = torch.arange(size.shape[1], device=size.device)
    key = keep.to(share.dtype) * (size.shape[1] + 1) - pos.to(share.dtype)  # kept first, each part in order
    order = key.argsort(dim=1, descending=True)
    count = keep.sum(dim=1).max()
    idx = order.index_select(1, pos[pos < count])
    return idx, (size * keep.to(size.dtype)).gather(1, idx)


def soft_threshold(size: torch.Tensor, share: torch.Tensor, threshold: torch.Tensor,
                   temperature: float) -> torch.Tensor:  # fmt: skip
    """Learned Token Pruning's training mask (Kim et al., KDD 2022): sizes times sigmoid((share − threshold) / T),
    CLS kept whole. A size in (0, 1) is a partly removed token: attention sees it through log(size) and pooling
    weighs it by size, the same two places where a removed token (size 0) disappears, so the soft model
    approaches the hard one as the masks saturate."""
    mask = torch.sigmoid((share - threshold) / temperature)
    mask = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
    return size * mask


def prune(x: torch.Tensor, size: torch.Tensor, score: torch.Tensor, keep_ratio: float,
          threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Keep the ceil(keep_ratio · T) tokens of x (B, T, C) with the highest ``score`` (B, T), CLS always, in order;
    with ``threshold`` instead, the tokens whose score is at least ``threshold`` × the uniform share."""
    if threshold is not None:
        kept, kept_size = threshold_index(size, uniform_share(score, size), threshold)
        return gather_tokens(x, kept), kept_size
    idx, size = prune_index(size, score, keep_ratio)
    if idx is None:
        return x, size
    return gather_tokens(x, idx), size.gather(1, idx)
