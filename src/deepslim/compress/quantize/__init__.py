"""Quantization: linear PTQ and QAT, fp16/bf16, and the non-linear encodings (k-means sharing, power-of-two,
binary, ternary)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepslim._modes import inference_mode
from deepslim.compress.quantize._fakequant import fake_quantize, qrange, sqnr_db
from deepslim.compress.quantize._fold import fold_batchnorm_
from deepslim.compress.quantize._inputs import model_inputs
from deepslim.compress.quantize._points import insert_points_, share_layer_inputs_
from deepslim.compress.quantize.linear import (
    QUANTIZABLE,
    LinearQuantConfig,
    QuantMixin,
    calibrate,
    swap_to_quantized,
)
from deepslim.compress.quantize.nonlinear import (
    Binary,
    BinaryConfig,
    KMeansConfig,
    KMeansInit,
    PowerOfTwo,
    PowerOfTwoConfig,
    SharedWeight,
    Ternary,
    TernaryConfig,
    share_weights_,
)
from deepslim.compress.quantize.observers import Calibration
from deepslim.config import lookup, unmatched
from deepslim.errors import ConfigError

log = logging.getLogger(__name__)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True, kw_only=True)
class Float16Config:
    """Store and run the layers in half precision: ``dtype`` "fp16" or "bf16"."""

    dtype: str = "fp16"
    overrides: Any = ()

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "bf16"):
            raise ConfigError(f"dtype must be 'fp16' or 'bf16', got {self.dtype!r}")
        from deepslim.config import freeze_overrides

        object.__setattr__(self, "overrides", freeze_overrides(self.overrides))


@dataclass(frozen=True)
class QuantReport:
    """What a quantization did: each layer's encoding, and the layers with weights it left alone (and why)."""

    quantized: tuple[tuple[str, str], ...]  # (layer, encoding such as "int8 w / u8 act" or "k-means 5-bit")
    left: tuple[tuple[str, str], ...]  # (layer, reason)

    def __str__(self) -> str:
        rows = [f"{n}: {e}" for n, e in self.quantized] + [f"not quantized: {n} ({why})" for n, why in self.left]
        return "\n".join(rows)


def _targets(model: nn.Module, overrides: tuple[tuple[str, Any], ...],
             default: Any) -> dict[str, tuple[nn.Module, Any]]:  # fmt: skip
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS) and not isinstance(m, QuantMixin)}
    bad = unmatched(overrides, layers)
    if bad:
        raise ConfigError(f"no quantizable layer matches {', '.join(map(repr, bad))}")
    chosen = {n: (m, lookup(overrides, n, default)) for n, m in layers.items()}
    return {n: v for n, v in chosen.items() if v[1] is not None}


def _linear(model: nn.Module, config: LinearQuantConfig, *, calib_data: Iterable[Any] | None) -> None:
    if config.activation_bits is not None and calib_data is None:
        raise ConfigError("activation quantization needs calib_data (a few hundred representative inputs): pass "
                          "calib_data=data.calib, or activation_bits=None for weight-only quantization")
    if calib_data is not None and iter(calib_data) is calib_data:  # one-shot: the capture needs a first batch
        calib_data = list(calib_data)
    first = next(iter(calib_data), None) if calib_data is not None else None
    example = model_inputs(model, first) if first is not None else None
    if config.fold_batchnorm:
        folded = fold_batchnorm_(model, example)
        log.info("folded %d batch norms into their convolutions", len(folded))
    swapped = []
    for name, (m, bits) in _targets(model, config.overrides, config.bits).items():
        swap_to_quantized(m, bits, config, name)
        swapped.append(m)
    if config.activation_bits is not None:
        assert calib_data is not None
        points = []
        if config.activation_bits == 8 and example is not None:  # the runtime's additions, concatenations, outputs
            with inference_mode(model):
                points = insert_points_(model, example[0] if len(example) == 1 else example, config.calibration)
        calibrate(model, swapped, calib_data, config.calibration, points, inputs=len(example or (0,)))
        share_layer_inputs_(model)
    model.deepslim_calibration = config.calibration


def _half(model: nn.Module, config: Float16Config, **_: Any) -> None:
    for _, (m, _) in _targets(model, config.overrides, True).items():
        apply_half(m, config.dtype)


def apply_half(m: nn.Module, dtype: str) -> None:
    """Store ``m``'s tensors in ``dtype`` ("fp16" or "bf16") and run it in that dtype (fp32 in and out)."""
    half = torch.float16 if dtype == "fp16" else torch.bfloat16
    m.to(half)
    m.deepslim_half = dtype
    m.register_forward_pre_hook(lambda mod, args: tuple(a.to(half) if torch.is_tensor(a) else a for a in args))
    m.register_forward_hook(lambda mod, args, out: out.float())


def _elementwise(model: nn.Module, config: Any, **_: Any) -> None:
    for _, (m, value) in _targets(model, config.overrides, getattr(config, "bits", True)).items():
        if isinstance(config, PowerOfTwoConfig):
            p: nn.Module = PowerOfTwo(value)
        elif isinstance(config, BinaryConfig):
            p = Binary()
        else:
            p = Ternary(config.threshold_factor)
        parametrize.register_parametrization(m, "weight", p)


_HANDLERS: dict[type, Callable[..., None]] = {
    LinearQuantConfig: _linear,
    Float16Config: _half,
    PowerOfTwoConfig: _elementwise,
    BinaryConfig: _elementwise,
    TernaryConfig: _elementwise,
}
QuantConfig = LinearQuantConfig | Float16Config | PowerOfTwoConfig | BinaryConfig | TernaryConfig


def quantize_(model: nn.Module, config: QuantConfig, *, calib_data: Iterable[Any] | None = None) -> nn.Module:
    """Quantize ``model`` in place and return it; ``quantization_report(model)`` says what was done."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"quantize_ takes one of {', '.join(t.__name__ for t in _HANDLERS)}, "
                          f"not {type(config).__name__} (k-means weight sharing is cluster_)")  # fmt: skip
    handler(model, config, calib_data=calib_data)
    return model


def cluster_(model: nn.Module, config: KMeansConfig) -> nn.Module:
    """Deep Compression's weight sharing: a 2^bits-entry codebook per layer; zeros (pruned weights) stay zero."""
    for _, (m, bits) in _targets(model, config.overrides, config.bits).items():
        if parametrize.is_parametrized(m, "weight"):
            from deepslim.compress.prune.masks import bake_masks_

            bake_masks_(m)  # a pruning mask is kept as the zeros the codebook leaves out
        share_weights_(m, bits, config.init, config.iterations)
        if config.share_bias and m.bias is not None:
            share_weights_(m, bits, config.init, config.iterations, "bias")
    return model


def quantization_report(model: nn.Module) -> QuantReport:
    done, left = [], []
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):
            act = f" / u{m.act_bits} act" if m.act_bits is not None else " (weight-only)"
            done.append((name, f"int{m.bits} w{' per-channel' if m.per_channel else ''}{act}"))
        elif parametrize.is_parametrized(m, "weight"):
            enc = next((p for p in m.parametrizations.weight
                        if isinstance(p, (SharedWeight, PowerOfTwo, Binary, Ternary))), None)  # fmt: skip
            if enc is not None:
                done.append((name, {SharedWeight: f"k-means {getattr(enc, 'bits', '')}-bit",
                                    PowerOfTwo: f"power-of-two {getattr(enc, 'bits', '')}-bit",
                                    Binary: "binary", Ternary: "ternary"}[type(enc)]))  # fmt: skip
        elif any(p.dtype in (torch.float16, torch.bfloat16) for p in m.parameters(recurse=False)):
            done.append((name, str(next(m.parameters()).dtype).removeprefix("torch.")))
        elif any(True for _ in m.parameters(recurse=False)):
            why = "skipped by an override" if isinstance(m, _LAYERS) else f"{type(m).__name__} is not quantized"
            left.append((name, why))
    return QuantReport(tuple(done), tuple(left))


__all__ = [
    "BinaryConfig", "Calibration", "Float16Config", "KMeansConfig", "KMeansInit", "LinearQuantConfig",
    "PowerOfTwoConfig", "QUANTIZABLE", "QuantReport", "TernaryConfig", "apply_half", "cluster_", "fake_quantize",
    "fold_batchnorm_",
    "qrange", "quantization_report", "quantize_", "sqnr_db",
]  # fmt: skip
