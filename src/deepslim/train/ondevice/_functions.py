"""Autograd functions that keep only what the gradients they compute need.

Stock autograd keeps a convolution's input whenever any of its tensors trains, a ReLU's whole float output, a batch
norm's input: all to compute gradients that frozen weights never use. Here a layer with a frozen weight keeps nothing
of its input (the input's gradient needs only the weight and the input's shape), a ReLU/ReLU6 keeps one bit per
element (packed 8 to a byte), a frozen batch norm (an affine with fixed scale) and an average pool keep nothing.
Each backward equals autograd's on the stock operator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, 8 elements to a byte (most significant bit first); ⌈n/8⌉ bytes."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) << _SHIFTS.to(flat.device)
    return bits.sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean tensor of ``shape`` that :func:`pack_bits` packed."""
    numel = 1
    for s in shape:
        numel *= s
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].view(shape).bool()


def packed_bytes(numel: int) -> int:
    return (numel + 7) // 8


class ClampMasked(torch.autograd.Function):
    """ReLU (``high=None``) or hardtanh/ReLU6 whose backward mask is kept as bits.

    The mask is exactly where autograd passes the gradient: ``threshold_backward`` zeroes it where ``relu(x) <= 0``,
    ``hardtanh_backward`` where ``x <= low or x >= high``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float | None) -> torch.Tensor:
        blocked = x <= low if high is None else (x <= low) | (x >= high)
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(~blocked))
        return torch.relu(x) if high is None else torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (packed,) = ctx.saved_tensors
        return torch.where(unpack_bits(packed, ctx.shape), grad, grad.new_zeros(())), None, None


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv2d_input(input_shape: torch.Size, weight: torch.Tensor, grad: torch.Tensor, stride: Any, padding: Any,
                  dilation: Any, groups: int) -> torch.Tensor:  # fmt: skip
    """The input gradient of a 2-D convolution: the transposed convolution of ``grad`` with ``weight``.

    ``torch.nn.grad.conv2d_input`` gets the same numbers through ``convolution_backward`` with an expanded stand-in
    for the input, which oneDNN first copies into a real input-sized tensor; the transposed convolution needs none.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[-2:]
    extra = [input_shape[-2] - ((grad.shape[-2] - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
             input_shape[-1] - ((grad.shape[-1] - 1) * sw - 2 * pw + dw * (kw - 1) + 1)]
    return F.conv_transpose2d(grad, weight, None, (sh, sw), (ph, pw), extra, groups, (dh, dw))


class FrozenConv2dFn(torch.autograd.Function):
    """A 2-D convolution with a frozen weight: keeps no input; the input gradient is a transposed convolution."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
                padding: Any, dilation: Any, groups: int) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(weight)  # a parameter: resident anyway, no activation kept
        ctx.conf, ctx.input_shape = (stride, padding, dilation, groups), x.shape
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv2d_input(ctx.input_shape, weight, grad, *ctx.conf)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, None, grad_b, None, None, None, None


class FrozenLinearFn(torch.autograd.Function):
    """A linear layer with a frozen weight: keeps no input; the input gradient is ``grad @ weight``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_b


class ChannelAffineFn(torch.autograd.Function):
    """``x * scale + shift + bias`` per channel (dim 1) with fixed ``scale``/``shift`` buffers: keeps nothing."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(scale)  # a buffer: resident
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul((shift + bias).view(view), x, scale.view(view))  # one output, no temporary

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (scale,) = ctx.saved_tensors
        view = (1, -1) + (1,) * (grad.dim() - 2)
        grad_x = grad * scale.view(view) if ctx.needs_input_grad[0] else None
        dims = [d for d in range(grad.dim()) if d != 1]
        grad_b = grad.sum(dims) if ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_b


class BlockAvgPoolFn(torch.autograd.Function):
    """Average pooling over non-overlapping ``kernel`` blocks (stride = kernel, no padding): keeps only the shape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
        ctx.kernel, ctx.input_shape = kernel, x.shape
        return F.avg_pool2d(x, kernel, kernel)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        kh, kw = ctx.kernel
        height, width = ctx.input_shape[-2:]
        spread = (grad / (kh * kw)).repeat_interleave(kh, dim=-2).repeat_interleave(kw, dim=-1)
        # rows and columns that floor-mode pooling dropped get no gradient
        return F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2])), None


class PackedDropoutFn(torch.autograd.Function):
    """Dropout whose mask is kept as bits: stock CPU dropout keeps its float noise tensor (32× as much).

    The noise is drawn as stock ``F.dropout`` draws it on the CPU (``bernoulli_(1 − p)`` on a tensor like the
    input, then scaled by 1/(1 − p)), so a seeded run matches the stock layer bit for bit.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(x).bernoulli_(1 - p)
        ctx.save_for_backward(pack_bits(noise.bool()))
        ctx.shape = x.shape
        noise.div_(1 - p)
        # the kept elements' noise value as the stock kernel computes it (1 / (1 - p) in float32), without reading a
        # tensor back (the planner runs this on fake tensors)
        ctx.scale = float(np.float32(1.0) / np.float32(1 - p)) if x.dtype == torch.float32 else 1 / (1 - p)
        return x * noise

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (packed,) = ctx.saved_tensors
        # select, then scale the new tensor in place: no gradient-sized temporary (the same products as stock)
        return torch.where(unpack_bits(packed, ctx.shape), grad, grad.new_zeros(())).mul_(ctx.scale), None


def _window_offsets(out_hw: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Row and column of each output window's first tap in the input (``(OH, 1)`` and ``(OW,)``)."""
    rows = torch.arange(out_hw[0], device=device).view(-1, 1) * stride[0] - padding[0]
    cols = torch.arange(out_hw[1], device=device) * stride[1] - padding[1]
    return rows, cols


class CompactMaxPoolFn(torch.autograd.Function):
    """2-D max pooling that keeps, per output element, only the argmax's place in its window (one byte for
    windows up to 256 taps) — stock max pooling keeps its whole float input and 8-byte flat indices.

    The backward rebuilds the flat indices and scatter-adds the gradient, as ``max_pool2d_with_indices_backward``
    does (overlapping windows that share a maximum add up).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], ceil_mode: bool) -> torch.Tensor:  # fmt: skip
        out, flat = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        width = x.shape[-1]
        rows, cols = _window_offsets(tuple(out.shape[-2:]), stride, padding, x.device)
        tap_row = torch.div(flat, width, rounding_mode="floor").sub_(rows).div_(dilation[0], rounding_mode="floor")
        tap_col = flat.remainder(width).sub_(cols).div_(dilation[1], rounding_mode="floor")
        taps = kernel[0] * kernel[1]
        offset = tap_row.mul_(kernel[1]).add_(tap_col).to(torch.uint8 if taps <= 256 else torch.int32)
        ctx.save_for_backward(offset)
        ctx.conf, ctx.input_shape = (kernel, stride, padding, dilation), x.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (offset,) = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.conf
        height, width = ctx.input_shape[-2:]
        rows, cols = _window_offsets(tuple(grad.shape[-2:]), stride, padding, grad.device)
        tap = offset.long()
        flat = (torch.div(tap, kernel[1], rounding_mode="floor").mul_(dilation[0]).add_(rows)).mul_(width)
        flat.add_(tap.remainder_(kernel[1]).mul_(dilation[1]).add_(cols))
        grad_x = grad.new_zeros(*ctx.input_shape[:-2], height * width)
        grad_x.scatter_add_(-1, flat.flatten(-2), grad.flatten(-2))
        return grad_x.view(ctx.input_shape), None, None, None, None, None
