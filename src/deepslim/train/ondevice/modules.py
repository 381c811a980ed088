"""Memory-efficient drop-in layers for on-device training (Cai et al., TinyTL, NeurIPS 2020).

Each layer is a subclass of the stock one (same parameters, names and state dict) whose forward runs a
:mod:`~deepslim.train.ondevice._functions` autograd function when that saves memory, and the stock operator
otherwise (a weight that trains needs its input kept: then the layer is stock, and says so). Each declares what it
keeps for backward (``saved_for_backward``) so that :func:`deepslim.analysis.training.training_profile` counts it
exactly; ``efficient_for`` says whether the efficient path runs for given inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from deepslim.analysis.training import input_grad_scratch
from deepslim.train.ondevice._functions import (
    BlockAvgPoolFn,
    ChannelAffineFn,
    ClampMasked,
    CompactMaxPoolFn,
    FrozenConv2dFn,
    FrozenLinearFn,
    PackedDropoutFn,
    _pair,
    packed_bytes,
)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class FrozenConv2d(nn.Conv2d):
    """A Conv2d that keeps no input for backward while its weight is frozen (its bias may train)."""

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return not self.weight.requires_grad and self.padding_mode == "zeros" and not isinstance(self.padding, str)

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return []

    def backward_workspace(self, args: tuple[Any, ...], output: torch.Tensor) -> int:
        return input_grad_scratch(args[0], self.weight, output, self.stride, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.efficient_for((x,)) or not _needs_grad(x, self.bias):
            return super().forward(x)
        return FrozenConv2dFn.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FrozenLinear(nn.Linear):
    """A Linear that keeps no input for backward while its weight is frozen (its bias may train)."""

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return not self.weight.requires_grad

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.efficient_for((x,)) or not _needs_grad(x, self.bias):
            return super().forward(x)
        return FrozenLinearFn.apply(x, self.weight, self.bias)


class PackedReLU(nn.ReLU):
    """ReLU whose backward mask is kept as bits (1/32 of the float output stock autograd keeps)."""

    low, high = 0.0, None

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return True

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return [packed_bytes(args[0].numel())] if args[0].requires_grad else []

    def backward_workspace(self, args: tuple[Any, ...], output: torch.Tensor) -> int:
        # the mask unpacked: shifted bytes and bits (2 bytes an element) before the input gradient exists, then one
        # boolean an element beside it (the allocation trace); the gradient (≥ 2 bytes an element) is the larger
        return args[0].numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(x):
            return super().forward(x)
        return ClampMasked.apply(x, self.low, self.high)


class PackedReLU6(nn.ReLU6):
    """ReLU6 (hardtanh 0..6) whose backward mask is kept as bits; in-place or not, it keeps no float copy."""

    saved_for_backward = PackedReLU.saved_for_backward
    efficient_for = PackedReLU.efficient_for
    backward_workspace = PackedReLU.backward_workspace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(x):
            return super().forward(x)
        return ClampMasked.apply(x, self.min_val, self.max_val)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm folded into a per-channel affine with its running (eval) statistics and a frozen scale.

    ``y = x·γ/√(σ²+ε) − μ·γ/√(σ²+ε) + β``: only ``β`` (``bias``) may train, and the layer keeps nothing for backward
    (the input gradient is ``grad · scale``). Statistics no longer update, in train mode too — as in TinyTL, where
    the frozen feature extractor keeps its pretrained statistics. If ``weight`` (γ) trains, it runs stock batch norm
    with the same frozen statistics (keeping its input).
    """

    folded_scale: torch.Tensor
    folded_shift: torch.Tensor

    def refresh(self) -> FrozenBatchNorm2d:
        """Recompute the folded scale and shift from the current statistics and γ (after loading new ones)."""
        if self.running_mean is None or self.running_var is None:
            raise ValueError("FrozenBatchNorm2d needs running statistics (track_running_stats=True)")
        with torch.no_grad():
            scale = self.weight.detach() / torch.sqrt(self.running_var + self.eps)
            self.register_buffer("folded_scale", scale.clone(), persistent=False)
            self.register_buffer("folded_shift", (-self.running_mean * scale).clone(), persistent=False)
        return self

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return not self.weight.requires_grad

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.efficient_for((x,)):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if not _needs_grad(x, self.bias):
            view = (1, -1) + (1,) * (x.dim() - 2)
            return torch.addcmul((self.folded_shift + self.bias).view(view), x, self.folded_scale.view(view))
        return ChannelAffineFn.apply(x, self.folded_scale, self.folded_shift, self.bias)


class BlockAvgPool2d(nn.Module):
    """Average pooling over non-overlapping blocks that keeps only the input's shape for backward.

    ``kernel=None`` pools globally (``AdaptiveAvgPool2d(1)``); stock average pooling keeps its whole input.
    """

    def __init__(self, kernel: int | tuple[int, int] | None = None):
        super().__init__()
        self.kernel = (kernel, kernel) if isinstance(kernel, int) else kernel

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return True

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return []

    def backward_workspace(self, args: tuple[Any, ...], output: torch.Tensor) -> int:
        return args[0].numel() * args[0].element_size()  # the gradient spread over rows before columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel or tuple(x.shape[-2:])
        kernel = (min(kernel[0], x.shape[-2]), min(kernel[1], x.shape[-1]))
        if not _needs_grad(x):
            return F.avg_pool2d(x, kernel, kernel)
        return BlockAvgPoolFn.apply(x, kernel)


class PackedDropout(nn.Dropout):
    """Dropout that keeps its mask as bits for backward (stock CPU dropout keeps a float noise tensor: 32× more).

    Draws the same mask as the stock layer for the same random state; in place or not, it returns a new tensor.
    """

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return self.training and 0 < self.p < 1

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        return [packed_bytes(args[0].numel())] if args[0].requires_grad else []

    def backward_workspace(self, args: tuple[Any, ...], output: torch.Tensor) -> int:
        return args[0].numel()  # the mask unpacked, as PackedReLU's: one boolean an element beside the gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.efficient_for((x,)) or not _needs_grad(x):
            return super().forward(x)
        return PackedDropoutFn.apply(x, self.p)


class CompactMaxPool2d(nn.MaxPool2d):
    """MaxPool2d that keeps for backward only each maximum's place in its window (1 byte an output element for
    windows of up to 256 taps), not the float input and 8-byte indices stock max pooling keeps."""

    def efficient_for(self, args: tuple[Any, ...]) -> bool:
        return not self.return_indices and isinstance(args[0], torch.Tensor) and args[0].dim() in (3, 4)

    def _conf(self) -> tuple[tuple[int, int], ...]:
        kernel = _pair(self.kernel_size)
        stride = _pair(self.stride) if self.stride else kernel
        return kernel, stride, _pair(self.padding), _pair(self.dilation)

    def saved_for_backward(self, args: tuple[Any, ...], output: torch.Tensor) -> list[torch.Tensor | int]:
        kernel = self._conf()[0]
        return [output.numel() * (1 if kernel[0] * kernel[1] <= 256 else 4)] if args[0].requires_grad else []

    def backward_workspace(self, args: tuple[Any, ...], output: torch.Tensor) -> int:
        return 3 * 8 * output.numel()  # the flat indices rebuilt (int64) and their row and column terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.efficient_for((x,)) or not _needs_grad(x):
            return super().forward(x)
        return CompactMaxPoolFn.apply(x, *self._conf(), self.ceil_mode)


class LiteResidual(nn.Module):
    """TinyTL's lite residual branch: a downsampled group-conv side path added to a block's output.

    ``x → avg-pool (downsample·stride) → 3×3 group conv (in→mid) → ReLU (bits) → 1×1 conv (mid→out, in
    ``pointwise_groups`` groups) → nearest upsample to the block's output size``. It learns a correction on
    activations ``downsample``² times smaller than the block's, so keeping its inputs for its weights' gradients is
    cheap. The last conv starts at zero: the converted model computes exactly what the original did. The 1×1 conv
    mixes all channels by default, as in TinyTL's code: grouped too, the branch splits into ``groups`` independent
    halves, where a channel of one half can never correct a channel of the other.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, downsample: int = 2, expand: float = 1.0,
                 groups: int = 2, pointwise_groups: int = 1):  # fmt: skip
        super().__init__()
        g = math.gcd(math.gcd(in_ch, out_ch), groups)
        mid = max(g, int(round(in_ch * expand / g)) * g)
        self.pool = BlockAvgPool2d(downsample * stride)
        self.conv1 = nn.Conv2d(in_ch, mid, 3, 1, 1, groups=g, bias=False)
        self.act = PackedReLU()
        self.conv2 = nn.Conv2d(mid, out_ch, 1, groups=math.gcd(math.gcd(mid, out_ch), pointwise_groups), bias=False)
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        side = self.conv2(self.act(self.conv1(self.pool(x))))
        return F.interpolate(side, size=tuple(size), mode="nearest")


def add_lite_residual(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a block that carries a ``lite_residual`` branch: the block's output plus the branch's."""
    branch: LiteResidual = getattr(module, "lite_residual")  # noqa: B009 (attached by tinytl_)
    return output + branch(args[0], output.shape[-2:])


EFFICIENT_TYPES = (FrozenConv2d, FrozenLinear, PackedReLU, PackedReLU6, FrozenBatchNorm2d, BlockAvgPool2d,
                   PackedDropout, CompactMaxPool2d)  # fmt: skip
