"""What autograd saves for backward, operator by operator (the planner's rules behind ``training_profile``).

Each rule receives the operator's arguments, its outputs and which tensor arguments require a gradient, and returns
the tensors autograd keeps for the backward pass. The rules follow PyTorch's ``derivatives.yaml`` as it behaves in
torch 2.x — checked against ``torch.autograd.graph.saved_tensors_hooks`` by the tests — including the facts that make
stock bias-only training expensive:

- ``convolution`` saves its input and weight whenever *any* of input, weight or bias needs a gradient (one backward
  formula serves all three), so a conv whose only trainable tensor is its bias still keeps its whole input;
- ``addmm``/``mm``/``bmm``/``mul`` save each operand only when the *other* one needs a gradient;
- batch norm (train or eval) saves its input and its statistics;
- ReLU, sigmoid, tanh and softmax save their output; ReLU6 (``hardtanh``), hardswish, GELU and SiLU their input —
  and their *in-place* forms (``nn.ReLU6(inplace=True)``) a fresh copy of it, since the input is overwritten;
- additions, views, padding, concatenation, means and sums save nothing (only sizes).

An operator without a rule is counted conservatively (every tensor argument and output) and reported by name, so a
miss is visible instead of silent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Saved = list[torch.Tensor | int]  # a tensor (counted once per storage) or the bytes of a private copy
Rule = Callable[[Sequence[Any], Sequence[torch.Tensor], Sequence[bool]], Saved]


def _arg(args: Sequence[Any], i: int) -> torch.Tensor | None:
    a = args[i] if i < len(args) else None
    return a if isinstance(a, torch.Tensor) else None


def _rg(args: Sequence[Any], i: int) -> bool:
    a = _arg(args, i)
    return a is not None and a.requires_grad


def _nothing(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return []


def _input0(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[0]]


def _output0(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [outs[0]]


def _conv(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[0], args[1]]  # one formula for input, weight and bias: both kept whenever any needs a gradient


def _copy_of_input0(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[0].numel() * args[0].element_size()]  # an int: a private storage of that many bytes


def _pairwise(first: int, second: int) -> Rule:
    """A product of two operands: each is kept only if the other needs a gradient."""

    def rule(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
        saved = []
        if _arg(args, first) is not None and _rg(args, second):
            saved.append(args[first])
        if _arg(args, second) is not None and _rg(args, first):
            saved.append(args[second])
        return saved

    return rule


def _div(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    saved = []
    if _arg(args, 1) is not None and (_rg(args, 0) or _rg(args, 1)):
        saved.append(args[1])
    if _rg(args, 1):
        saved.append(args[0])
    return saved


def _norm(n_weight_args: tuple[int, ...]) -> Rule:
    """Batch/layer/group norm: the input, the affine weight(s) and every statistic the kernel returns."""

    def rule(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
        saved = [args[0]] + [a for i in n_weight_args if (a := _arg(args, i)) is not None]
        return saved + list(outs[1:])

    return rule


def _pool_with_indices(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[0], outs[1]]


def _attention(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    saved: Saved = [a for a in args[:3] if isinstance(a, torch.Tensor)]
    return saved + [o for o in outs if o.numel()]


def _embedding(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[1]] if _rg(args, 0) else []


def _where(args: Sequence[Any], outs: Sequence[torch.Tensor], rg: Sequence[bool]) -> Saved:
    return [args[0]]


_NOTHING = (
    "add", "add_", "sub", "sub_", "neg", "rsub", "view", "_unsafe_view", "reshape", "t", "transpose", "permute",
    "expand", "slice", "select", "squeeze", "unsqueeze", "flatten", "contiguous", "clone", "cat", "stack", "split",
    "split_with_sizes", "chunk", "unbind", "constant_pad_nd", "pad", "mean", "sum", "alias", "detach", "_to_copy",
    "copy_", "empty", "empty_like", "zeros", "zeros_like", "ones_like", "full", "fill_", "zero_", "bernoulli_",
    "new_zeros", "new_empty", "lift_fresh", "upsample_nearest2d", "_upsample_nearest_exact2d", "as_strided",
    "expand_as", "view_as", "repeat", "arange", "scalar_tensor", "_reshape_alias", "unfold", "roll",
    "upsample_bilinear2d",
)  # fmt: skip
_OUTPUT = ("relu", "relu_", "leaky_relu_", "elu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "_softmax",
           "_log_softmax", "exp", "sqrt", "rsqrt", "threshold_backward")  # fmt: skip
# in-place variants whose backward needs the input as it was: autograd keeps a copy of it (a new storage)
_CLONED = ("hardtanh_", "hardswish_", "silu_", "hardsigmoid_", "mish_", "threshold_")
_INPUT = ("hardtanh", "hardswish", "hardsigmoid", "gelu", "silu", "mish",
          "leaky_relu", "elu", "avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "avg_pool1d",
          "pow", "clamp", "clamp_min", "clamp_max", "var", "std", "abs", "log", "sin", "cos", "threshold",
          "softplus")  # fmt: skip

RULES: dict[str, Rule] = {
    **dict.fromkeys(_NOTHING, _nothing),
    **dict.fromkeys(_OUTPUT, _output0),
    **dict.fromkeys(_INPUT, _input0),
    **dict.fromkeys(_CLONED, _copy_of_input0),
    "convolution": _conv,
    "_convolution": _conv,
    "addmm": _pairwise(1, 2),
    "mm": _pairwise(0, 1),
    "bmm": _pairwise(0, 1),
    "baddbmm": _pairwise(1, 2),
    "mul": _pairwise(0, 1),
    "mul_": _pairwise(0, 1),
    "div": _div,
    "div_": _div,
    "native_batch_norm": _norm((1,)),
    "_native_batch_norm_legit": _norm((1,)),
    "_native_batch_norm_legit_no_training": _norm((1,)),
    "_batch_norm_with_update": _norm((1,)),
    "_batch_norm_no_update": _norm((1,)),
    "native_layer_norm": _norm((2, 3)),
    "native_group_norm": _norm((1,)),
    "max_pool2d_with_indices": _pool_with_indices,
    "max_pool1d_with_indices": _pool_with_indices,
    "native_dropout": lambda args, outs, rg: [outs[1]],
    "_scaled_dot_product_flash_attention_for_cpu": _attention,
    "_scaled_dot_product_efficient_attention": _attention,
    "_scaled_dot_product_flash_attention": _attention,
    "embedding": _embedding,
    "where": _where,
}


def saved_by(name: str, args: Sequence[Any], outs: Sequence[torch.Tensor]) -> tuple[Saved, bool]:
    """Tensors the operator ``name`` keeps for backward, and whether a rule knew it (False: the conservative guess)."""
    rule = RULES.get(name)
    tensor_args = [a for a in args if isinstance(a, torch.Tensor)]
    if rule is None:
        conservative: Saved = [*tensor_args, *outs]
        return conservative, False
    saved = rule(args, outs, [t.requires_grad for t in tensor_args])
    return [t for t in saved if isinstance(t, (torch.Tensor, int))], True
