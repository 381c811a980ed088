"""Linear (uniform affine) quantization: post-training quantization with calibration, and quantization-aware
training with learnable scales.

Weights: signed codes, per output channel (or per tensor), symmetric by default. Activations: unsigned 8-bit affine
codes (the u8-activation / s8-weight form that ONNX Runtime's integer kernels run fastest). Batch norm is folded into
the preceding convolution first, as an integer runtime would. Execution is simulated with fake quantization that
matches the integer arithmetic up to the requantization of each layer's output.
PTQ: Jacob et al., CVPR 2018; Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference", 2018.
QAT with learned step sizes (LSQ): Esser et al., ICLR 2020.

This module holds the fake-quantized layers, their classes and calibration; the configuration and its checks are in
``_linear_config`` (``LinearQuantConfig`` and ``dynamic_conflict`` are importable from here as before).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim._modes import inference_mode
from deepslim.compress.quantize._fakequant import affine_params, fake_quantize, qrange, quantize_codes
from deepslim.compress.quantize._inputs import batch_inputs
from deepslim.compress.quantize._linear_config import LinearQuantConfig
from deepslim.compress.quantize._linear_config import dynamic_conflict as dynamic_conflict  # where _dynamic reads it
from deepslim.compress.quantize.observers import Calibration, Observer
from deepslim.errors import ConfigError, UnsupportedModelError


class QuantMixin(nn.Module):
    """Fake-quantized execution for Conv/Linear layers (mixed into a subclass of the layer's own class)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_axis = 0  # the output-channel dimension of the weight (1 for weights stored (in, out))
    bits: int
    act_bits: int | None
    qat: bool
    per_channel: bool
    symmetric: bool
    act_scale: torch.Tensor
    act_zero: torch.Tensor
    weight_scale: nn.Parameter

    # dynamic int8 (calibration DYNAMIC; see _dynamic.py): per-batch input ranges, and input channels computed in
    # fp32 (their weight rows left out of the int8 weight when split_rows) / output channels computed in fp32
    dynamic: bool = False
    split_in: torch.Tensor | None = None
    split_rows: bool = False
    split_out: torch.Tensor | None = None
    in_scale: torch.Tensor | None = None  # per input channel: the int8 input is x / s, the int8 weight's columns w · s

    def init_quant(self, bits: int, act_bits: int | None, per_channel: bool, symmetric: bool, qat: bool) -> None:
        self.bits, self.act_bits, self.qat = bits, act_bits, qat
        self.per_channel, self.symmetric = per_channel, symmetric
        self.observer: Observer | None = None
        self.fixed_weight_params: tuple[torch.Tensor, torch.Tensor] | None = None  # set when decoded from codes
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero", torch.zeros((), dtype=torch.int32))
        if qat:
            scale, _ = self._weight_params()
            self.weight_scale = nn.Parameter(scale.clone())

    def _weight_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed_weight_params is not None:
            return self.fixed_weight_params
        w = self.weight.detach().movedim(self.weight_axis, 0)
        flat = w.flatten(1) if self.per_channel else w.flatten()[None]
        lo, hi = flat.min(1).values, flat.max(1).values
        return affine_params(lo, hi, self.bits, symmetric=self.symmetric, signed=True)

    def quantized_weight(self) -> torch.Tensor:
        if self.dynamic:  # its int8 product's weight, fp32 channels kept (never static steps on the plain weight)
            from deepslim.compress.quantize._dynamic import float_weight

            return float_weight(self).detach() + (self.weight - self.weight.detach())
        qmin, qmax = qrange(self.bits, True)
        axis = self.weight_axis if self.per_channel else None
        if self.qat:
            zero = torch.zeros_like(self.weight_scale)
            grad = 1.0 / math.sqrt(self.weight.numel() * qmax)
            if self.per_channel:
                return torch._fake_quantize_learnable_per_channel_affine(
                    self.weight, self.weight_scale, zero, self.weight_axis, qmin, qmax, grad)
            return torch._fake_quantize_learnable_per_tensor_affine(
                self.weight, self.weight_scale, zero, qmin, qmax, grad)  # fmt: skip
        scale, zero = self._weight_params()
        w = self.weight
        q = fake_quantize(w, scale, zero, qmin, qmax, axis) if axis is not None else fake_quantize(
            w, scale[0], zero[0], qmin, qmax)  # fmt: skip
        return q.detach() + (w - w.detach())  # straight-through: forward exactly the codes, gradients to the floats

    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
        """(integer codes, scale, zero point, channel axis or None): what an integer runtime stores.

        ``(codes − zero) · scale`` (broadcast along the axis) is exactly the weight the forward pass uses (for a
        dynamic layer: the weight of its int8 product, see ``_dynamic.weight_codes``).
        """
        if self.dynamic:  # the weight its int8 product uses (input scales applied, fp32 columns left out)
            from deepslim.compress.quantize._dynamic import weight_codes

            return weight_codes(self)
        qmin, qmax = qrange(self.bits, True)
        with torch.no_grad():
            if self.qat:
                scale = self.weight_scale.detach().clone()
                zero = torch.zeros(scale.shape, dtype=torch.int32)
            else:
                scale, zero = self._weight_params()
            axis = self.weight_axis if self.per_channel else None
            if axis is None:
                scale, zero = scale.reshape(()), zero.reshape(())
            codes = quantize_codes(self.weight.detach(), scale, zero, qmin, qmax, axis)
        return codes.to(torch.int32), scale, zero, axis

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias an integer runtime adds: int32 codes at the step ``float32(s_x · s_w)`` (per output channel), as the
        exporter writes it into a Conv's or Gemm's bias, so that the fake-quantized layer computes what the deployed
        file does (with the float bias they differ by up to half a step per output, which a sensitive pruned model
        grows to a visible disagreement). The float bias while calibrating or where activations stay float;
        gradients pass straight through to the float bias."""
        bias = self.bias
        if bias is None or self.act_bits is None or self.observer is not None or self.dynamic:
            return bias
        with torch.no_grad():
            w_scale = self.weight_scale.detach() if self.qat else self._weight_params()[0]
            step = (self.act_scale.detach().double() * w_scale.double()).float().double()
            rounded = (torch.round(bias.detach().double() / step) * step).to(bias.dtype)
        return rounded + (bias - bias.detach())

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        if self.observer is not None:  # calibrating: watch, do not change
            self.observer.update(x)
            return x
        qmin, qmax = qrange(self.act_bits, False)
        if self.qat and isinstance(self.act_scale, nn.Parameter):
            grad = 1.0 / math.sqrt(x[0].numel() * qmax)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.act_scale.view(1), self.act_zero.float().view(1), qmin, qmax, grad)  # fmt: skip
        q = fake_quantize(x, self.act_scale, self.act_zero, qmin, qmax)
        if isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.requires_grad:
            # training a post-training-quantized model (fine-tuning after quantize_): the rounding has no gradient,
            # so pass it straight through as QAT does — the forward stays exactly the codes, and the layers before
            # this one train too (without it only the layers after the last quantized input did)
            return q.detach() + (x - x.detach())
        return q

    def freeze_activation_range(self, lo: float, hi: float) -> None:
        assert self.act_bits is not None
        scale, zero = affine_params(torch.tensor(lo), torch.tensor(hi), self.act_bits, symmetric=False, signed=False)
        self.act_scale.copy_(scale)
        self.act_zero.copy_(zero)
        if self.qat:
            self.act_scale = nn.Parameter(self.act_scale.detach().clone())

    # what the profiler and the cost model read
    def deepslim_weight_bytes(self) -> int:
        channels = self.weight.shape[self.weight_axis] if self.per_channel else 1
        scales = channels * (4 if self.symmetric else 5)  # fp32 scale (+ 1-byte zero point)
        bias = self.bias.numel() * 4 if self.bias is not None else 0
        return math.ceil(self.weight.numel() * self.bits / 8) + scales + bias

    @property
    def deepslim_compute_dtype(self) -> str:
        return f"int{max(self.bits, self.act_bits)}" if self.act_bits is not None else "fp32"


class QConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())


class QConv1d(QuantMixin, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())


class QLinear(QuantMixin, nn.Linear):  # type: ignore[misc]  # torch types Linear.bias as a Parameter (it may be None)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            from deepslim.compress.quantize._dynamic import dynamic_linear

            return dynamic_linear(self, x)
        # a 2-D input exports as one Gemm, whose bias is stored as int32 codes; a wider one as MatMul + a float Add
        bias = self.quantized_bias() if x.dim() == 2 else self.bias
        return F.linear(self.quantized_input(x), self.quantized_weight(), bias)


class QTransposedLinear(QuantMixin):
    """A linear layer whose weight is stored (in, out), as Hugging Face's GPT-2 ``Conv1D``: ``x @ W + b`` over the
    last dimension (the layer's own arithmetic, so the exporter writes the same Gemm/MatMul as for the float layer).
    Mixed into a subclass of the layer's class (see :func:`quantized_class`)."""

    weight_axis = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        flat = self.quantized_input(x).reshape(-1, x.shape[-1])  # (B·L, in)
        y = torch.addmm(self.bias, flat, w) if self.bias is not None else flat @ w
        return y.view(*x.shape[:-1], w.shape[1])  # (..., out)


QUANTIZABLE: dict[type, type] = {nn.Conv2d: QConv2d, nn.Conv1d: QConv1d, nn.Linear: QLinear}
_SUBCLASSES: dict[type, type] = {}  # a user's subclass of a quantizable layer (or an HF Conv1D) -> its quantized class
_TRANSPOSED = "transformers.pytorch_utils.Conv1D"  # layers whose kind is the registry's CONV1D_HF


def _transposed_base(cls: type) -> type | None:
    """The HF ``Conv1D`` class among ``cls``'s bases (by dotted path: transformers is not imported for it)."""
    return next((c for c in cls.__mro__ if f"{c.__module__}.{c.__qualname__}" == _TRANSPOSED), None)


def quantizable(m: nn.Module) -> bool:
    """Whether linear quantization holds ``m``: Conv1d/Conv2d/Linear and their subclasses, HF ``Conv1D`` (found
    through the layer-kind registry)."""
    from deepslim.models.adapters import CONV1D_HF, layer_kind

    if isinstance(m, QuantMixin):
        return False
    if any(isinstance(m, base) for base in QUANTIZABLE):
        return True
    weight = getattr(m, "weight", None)
    return layer_kind(m) is CONV1D_HF and _transposed_base(type(m)) is not None and isinstance(
        weight, torch.Tensor) and weight.ndim == 2  # fmt: skip


def quantized_class(cls: type, name: str = "") -> type:
    """The fake-quantized class for layer class ``cls``: ours for the plain layers; for a subclass that keeps the
    base forward, a subclass of both. A subclass with a forward of its own is refused by name (its forward would
    not quantize)."""
    if cls in QUANTIZABLE:
        return QUANTIZABLE[cls]
    base = next((b for b in QUANTIZABLE if issubclass(cls, b)), None) or _transposed_base(cls)
    if base is None:
        raise UnsupportedModelError(f"{name or cls.__name__}: a {cls.__name__} cannot hold linear quantization")
    if getattr(cls, "forward", None) is not getattr(base, "forward", None):
        raise UnsupportedModelError(f"{name or cls.__name__}: {cls.__name__} overrides the forward of "
                                    f"{base.__name__}, so its quantized weights would not be used; skip it with "
                                    f"overrides={{{name!r}: None}}")  # fmt: skip
    if cls not in _SUBCLASSES:
        mixin = QUANTIZABLE.get(base, QTransposedLinear)
        _SUBCLASSES[cls] = type(f"Q{cls.__name__}", (mixin, cls), {"__module__": cls.__module__})
    return _SUBCLASSES[cls]


def float_class(cls: type) -> type:
    """The float layer class a quantized class came from (inverse of :func:`quantized_class`)."""
    for plain, q in (*QUANTIZABLE.items(), *_SUBCLASSES.items()):
        if q is cls:
            return plain
    raise KeyError(cls)


def swap_to_quantized(m: nn.Module, bits: int, config: LinearQuantConfig, name: str = "") -> QuantMixin:
    m.__class__ = quantized_class(type(m), name)
    assert isinstance(m, QuantMixin)
    m.init_quant(bits, config.activation_bits, config.per_channel, config.symmetric, config.qat)
    return m


_QUANT_STATE = ("bits", "act_bits", "qat", "per_channel", "symmetric", "observer", "fixed_weight_params", "dynamic",
                "split_in", "split_rows", "split_out", "in_scale")


def swap_to_float(m: QuantMixin) -> nn.Module:
    """Undo :func:`swap_to_quantized`: the layer's float class, its float weight, no quantization state."""
    assert isinstance(m, nn.Module)
    m.__class__ = float_class(type(m))
    for key in ("act_scale", "act_zero"):
        m._buffers.pop(key, None)
    m._parameters.pop("weight_scale", None)
    for key in _QUANT_STATE:
        m.__dict__.pop(key, None)
    return m


def calibrate(model: nn.Module, layers: list[QuantMixin], calib_data: Iterable[Any], method: Calibration,
              points: Sequence[Any] = (), *, inputs: int = 1) -> int:  # fmt: skip
    """Run ``calib_data`` through the model and freeze each layer's input range and each point's range (see
    :mod:`deepslim.compress.quantize._points`). A tuple batch feeds its first ``inputs`` items. Returns the batches
    seen."""
    for layer in layers:
        layer.observer = Observer(method, layer.act_bits or 8)
    for p in points:
        p.observer = Observer(method, 8)
    seen = 0
    try:
        with inference_mode(model), torch.no_grad():
            for batch in calib_data:
                model(*batch_inputs(model, batch, inputs))
                seen += 1
        if seen == 0:
            raise ConfigError("calib_data yielded no batches")
        for layer in layers:
            if layer.observer is not None and layer.observer.count:
                layer.freeze_activation_range(*layer.observer.range())
        for p in points:
            p.freeze()
    finally:
        for layer in layers:
            layer.observer = None
        for p in points:
            p.observer = None
    return seen
