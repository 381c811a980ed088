"""What each ATen operator costs: multiply-accumulates, other arithmetic, or nothing.

Conventions (the same as fvcore and torchvision's published figures):
- A MAC is one multiply-accumulate in a convolution, matrix product or attention product. Bias additions,
  normalization, activations, pooling and residual additions are not MACs; they are counted apart as
  ``other_ops`` (one per element produced, or per element reduced for reductions and pooling).
- Attention counts both products, Q·Kᵀ and P·V: B·H·L·S·(E + Ev).
- View and factory operators cost nothing; data-movement operators (cat, copy, embedding lookup) cost no
  arithmetic but their bytes are counted.
An operator in none of these tables is unknown: the profiler refuses to guess (``strict=True``) or counts it as free
with a warning (``strict=False``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import torch

aten = torch.ops.aten


class OpKind(Enum):
    MAC = "mac"  # convolution / matrix products: MACs from the handler
    ARITH = "arith"  # elementwise arithmetic, reductions, normalization, pooling: other_ops
    MOVE = "move"  # copies, concatenation, gathers: bytes only
    FREE = "free"  # views, aliases, allocation: nothing


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _conv_macs(args: tuple[Any, ...], out: torch.Tensor) -> int:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = _numel(w.shape[2:])
    if transposed:  # weight (C_in, C_out/groups, k…): every input element meets C_out/groups·k weights
        return x.numel() * int(w.shape[1]) * kernel
    return out.numel() * int(w.shape[1]) * kernel  # weight (C_out, C_in/groups, k…)


def is_depthwise(func: Any, args: tuple[Any, ...]) -> bool:
    """A convolution with one input channel per group (and more than one group)."""
    if func.overloadpacket not in (aten.convolution, aten._convolution) or len(args) < 9:
        return False
    groups, w = int(args[8]), args[1]
    return groups > 1 and int(w.shape[1]) == 1 and not bool(args[6])


def _mm_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    return int(a.shape[-2]) * int(a.shape[-1]) * int(b.shape[-1]) * _numel(a.shape[:-2])


def _attention_macs(args: tuple[Any, ...], _out: Any) -> int:
    q, k, v = args[0], args[1], args[2]  # (B, H, L, E), (B, H, S, E), (B, H, S, Ev)
    b_h_l = _numel(q.shape[:-1])
    return b_h_l * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))


def _sequence_lengths(x: torch.Tensor) -> list[int]:
    """Tokens of each sequence of a (B, L, E) or (L, E) tensor; a nested tensor (padding dropped) has its own."""
    if x.is_nested:
        return [int(size[0]) for size in x._nested_tensor_size().tolist()]
    return [int(x.shape[-2])] * _numel(x.shape[:-2])


def _fused_attention_macs(query: torch.Tensor, key: torch.Tensor, embed_dim: int) -> int:
    """Multi-head attention in one kernel: Q, K and V projections, Q·Kᵀ and P·V over all heads, output projection.

    Per sequence of L queries and S keys: L·E² + 2·S·E² + 2·L·S·E + L·E² — exactly what the unfused path
    (``in_proj``, the two attention products, ``out_proj``) counts.
    """
    e = int(embed_dim)
    return sum(2 * lq * e * e + 2 * s * e * e + 2 * lq * s * e
               for lq, s in zip(_sequence_lengths(query), _sequence_lengths(key), strict=True))  # fmt: skip


def _mha_macs(args: tuple[Any, ...], _out: Any) -> int:
    # _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, ...): nn.MultiheadAttention's
    # fast path in eval mode without autograd
    return _fused_attention_macs(args[0], args[1], args[3])


def _encoder_layer_macs(args: tuple[Any, ...], _out: Any) -> int:
    # _transformer_encoder_layer_fwd(src, embed_dim, num_heads, ..., ffn_weight_1 (args[14]), ...): a whole
    # nn.TransformerEncoderLayer in one kernel: self-attention plus the two feed-forward products
    src, embed_dim, ffn_weight_1 = args[0], int(args[1]), args[14]
    tokens = sum(_sequence_lengths(src))
    return _fused_attention_macs(src, src, embed_dim) + 2 * tokens * embed_dim * int(ffn_weight_1.shape[0])


def _linear_macs(args: tuple[Any, ...], _out: Any) -> int:
    # aten.linear reaches the dispatcher only where it is not decomposed into addmm: nested (padded-free) inputs
    x, w = args[0], args[1]
    rows = sum(_sequence_lengths(x)) if x.is_nested else x.numel() // int(x.shape[-1])
    return rows * int(w.shape[0]) * int(w.shape[1])


MacHandler = Callable[[tuple[Any, ...], Any], int]

MAC_HANDLERS: dict[Any, MacHandler] = {
    aten.convolution: _conv_macs,
    aten._convolution: _conv_macs,
    aten.mm: lambda a, o: _mm_macs(a[0], a[1]),
    aten._int_mm: lambda a, o: _mm_macs(a[0], a[1]),
    aten.bmm: lambda a, o: _mm_macs(a[0], a[1]),
    aten.addmm: lambda a, o: _mm_macs(a[1], a[2]),
    aten.addmm_: lambda a, o: _mm_macs(a[1], a[2]),
    aten.baddbmm: lambda a, o: _mm_macs(a[1], a[2]),
    aten.baddbmm_: lambda a, o: _mm_macs(a[1], a[2]),
    aten.addbmm: lambda a, o: _mm_macs(a[1], a[2]),
    aten.addbmm_: lambda a, o: _mm_macs(a[1], a[2]),
    aten.linear: _linear_macs,
    aten.mv: lambda a, o: a[0].numel(),
    aten.addmv: lambda a, o: a[1].numel(),
    aten.addmv_: lambda a, o: a[1].numel(),
    aten.dot: lambda a, o: a[0].numel(),
    aten.vdot: lambda a, o: a[0].numel(),
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_macs,
    aten._scaled_dot_product_flash_attention: _attention_macs,
    aten._scaled_dot_product_efficient_attention: _attention_macs,
    aten._scaled_dot_product_cudnn_attention: _attention_macs,
    aten._native_multi_head_attention: _mha_macs,
    aten._transformer_encoder_layer_fwd: _encoder_layer_macs,
}

_FREE = {
    "view", "_unsafe_view", "alias", "as_strided", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze",
    "slice", "select", "split", "split_with_sizes", "unbind", "chunk", "detach", "lift_fresh", "_reshape_alias",
    "reshape", "flatten", "unflatten", "view_as", "expand_as", "narrow", "diagonal", "unfold", "movedim",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones",
    "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "arange", "scalar_tensor", "randn",
    "rand", "randint", "randn_like", "rand_like", "randperm", "normal", "bernoulli", "uniform", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "dim", "is_same_size", "_local_scalar_dense",
    "resize_", "set_", "_has_compatible_shallow_copy_type", "item", "equal", "linspace", "eye", "tril_indices",
    "triu_indices", "lift", "_assert_async", "_assert_scalar", "_assert_tensor_metadata", "sym_constrain_range",
    "_functional_assert_async", "device", "layout", "dtype", "is_contiguous", "sym_is_contiguous",
    "is_strides_like_format", "is_non_overlapping_and_dense", "_nested_tensor_size", "_nested_tensor_strides",
}  # fmt: skip

_MOVE = {
    "cat", "stack", "clone", "copy", "copy_", "_to_copy", "contiguous", "embedding", "index", "index_select",
    "gather", "constant_pad_nd", "pad", "reflection_pad2d", "replication_pad2d", "roll", "flip", "repeat",
    "index_put", "index_put_", "scatter", "slice_scatter", "select_scatter", "masked_select", "_unsafe_index",
    "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "tile", "repeat_interleave", "lift_fresh_copy",
    "alias_copy", "view_copy", "permute_copy", "t_copy", "transpose_copy", "expand_copy", "unsqueeze_copy",
    "squeeze_copy", "split_copy", "slice_copy", "zero_", "fill_", "fill", "where", "masked_fill",
    "masked_fill_", "nonzero", "col2im", "im2col", "native_channel_shuffle", "reflection_pad1d", "reflection_pad3d",
    "replication_pad1d", "replication_pad3d", "_nested_tensor_from_mask", "_nested_tensor_from_mask_left_aligned",
    "to_padded_tensor", "_nested_from_padded", "_nested_from_padded_and_nested_example", "index_copy", "tril",
    "triu",
}  # fmt: skip

_ARITH = {
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "batch_norm", "native_layer_norm", "layer_norm", "native_group_norm",
    "group_norm", "instance_norm", "_softmax", "softmax", "_safe_softmax", "_log_softmax", "log_softmax",
    "max_pool2d_with_indices", "max_pool2d", "max_pool1d", "max_pool3d_with_indices", "avg_pool2d", "avg_pool1d",
    "avg_pool3d", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool3d",
    "mean", "sum", "prod", "amax", "amin", "max", "min", "argmax", "argmin", "var", "var_mean", "std", "std_mean",
    "norm", "linalg_vector_norm", "cumsum", "cumprod", "logsumexp", "topk", "sort", "any", "all", "count_nonzero",
    "upsample_nearest2d", "upsample_bilinear2d", "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa",
    "grid_sampler_2d", "native_dropout", "dropout", "_fused_dropout", "nll_loss_forward", "nll_loss",
    "cross_entropy_loss", "mse_loss", "_euclidean_dist", "cdist", "_cdist_forward",
    "_fused_moving_avg_obs_fq_helper", "fake_quantize_per_channel_affine", "fake_quantize_per_tensor_affine",
    "fake_quantize_per_tensor_affine_cachemask", "fake_quantize_per_channel_affine_cachemask",
    "_fake_quantize_learnable_per_tensor_affine", "_fake_quantize_learnable_per_channel_affine",
    "quantize_per_tensor", "quantize_per_channel", "dequantize", "round", "clamp", "hardtanh", "hardtanh_",
    "hardswish", "hardsigmoid", "silu", "gelu", "mish", "elu", "selu", "celu", "softplus", "prelu", "_prelu_kernel",
    "glu", "log_sigmoid_forward", "_masked_softmax", "rms_norm", "_fused_rms_norm", "_weight_norm",
    "_weight_norm_interface", "norm_except_dim", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool3d",
    "fractional_max_pool2d", "upsample_nearest1d", "upsample_nearest3d", "upsample_linear1d", "upsample_bicubic2d",
    "upsample_trilinear3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact3d", "_upsample_bicubic2d_aa",
    "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only", "index_add", "scatter_add", "scatter_reduce",
    "argsort", "searchsorted", "bucketize",
}  # fmt: skip


def classify(func: torch._ops.OpOverload) -> OpKind | None:
    """The kind of an ATen overload, or None if the profiler does not know it.

    In-place views (``transpose_``, ``unsqueeze_``, ``as_strided_``) are free like their out-of-place forms; an
    in-place or ``out=`` variant (``relu_``, ``hardswish_``, ``gelu.out``) costs what its functional form costs.
    """
    if func.overloadpacket in MAC_HANDLERS:
        return OpKind.MAC
    if func.is_view or torch.Tag.inplace_view in func.tags:
        return OpKind.FREE
    kind = _by_name(func)
    if kind is not None:
        return kind
    functional = getattr(aten, func.overloadpacket.__name__.removesuffix("_"), None)
    if functional is None:
        return None
    for overload in functional.overloads():
        sibling = getattr(functional, overload)
        if sibling is not func and torch.Tag.inplace not in sibling.tags and torch.Tag.out not in sibling.tags:
            kind = _by_name(sibling)
            if kind is not None and kind is not OpKind.MAC:  # an in-place product would need its own handler
                return kind
    return None


def _by_name(func: torch._ops.OpOverload) -> OpKind | None:
    base = func.overloadpacket.__name__
    if base in _FREE:
        return OpKind.FREE
    if base in _MOVE:
        return OpKind.MOVE
    if base in _ARITH or torch.Tag.pointwise in func.tags or torch.Tag.reduction in func.tags:
        return OpKind.ARITH
    return None


def op_name(func: torch._ops.OpOverload) -> str:
    return f"aten.{func.overloadpacket.__name__}"
