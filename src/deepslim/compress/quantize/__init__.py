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
from deepslim.compress.quantize import _dynamic
from deepslim.compress.quantize._dynamic import (
    attention_trios,
    dynamic_state,
    fp32_channels,
    set_dynamic_state,
    weight_from_codes,
)
from deepslim.compress.quantize._fakequant import fake_quantize, qrange, sqnr_db
from deepslim.compress.quantize._fidelity import (
    FIDELITY_ATTR,
    Fidelity,
    QuantizationError,
    check_batches,
    measure,
    outputs,
    refusal,
    scores_are_classes,
)
from deepslim.compress.quantize._fold import fold_batchnorm_
from deepslim.compress.quantize._inputs import batch_inputs, model_inputs
from deepslim.compress.quantize._points import (
    disable_points_,
    exporting,
    insert_points_,
    point_labels,
    remove_points_,
    share_layer_inputs_,
)
from deepslim.compress.quantize.linear import (
    QUANTIZABLE,
    LinearQuantConfig,
    QuantMixin,
    calibrate,
    quantizable,
    swap_to_float,
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
from deepslim.config import Config, Overrides, lookup, unmatched
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.models.adapters import weight_layers, weight_parametrizations

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Float16Config(Config):
    """Store and run the layers in half precision: ``dtype`` "fp16" or "bf16"."""

    dtype: str = "fp16"
    overrides: Overrides[None] = ()  # layers to keep in fp32 (None)

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "bf16"):
            raise ConfigError(f"dtype must be 'fp16' or 'bf16', got {self.dtype!r}")
        from deepslim.config import freeze_overrides, skip_only

        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, skip_only("fp16/bf16")))


@dataclass(frozen=True)
class QuantReport:
    """What a quantization did: each layer's encoding, and the layers with weights it left alone (and why)."""

    quantized: tuple[tuple[str, str], ...]  # (layer, encoding such as "int8 w / u8 act" or "k-means 5-bit")
    left: tuple[tuple[str, str], ...]  # (layer, reason)
    fidelity: Fidelity | None = None  # the linear quantization's output check on the calibration data
    calibration: str | None = None  # the linear quantization's activation calibration ("auto" resolved)

    def __str__(self) -> str:
        rows = [f"{n}: {e}" for n, e in self.quantized] + [f"not quantized: {n} ({why})" for n, why in self.left]
        if self.calibration is not None:
            rows.append(f"activation calibration: {self.calibration}")
        if self.fidelity is not None:
            rows.append(f"fidelity to the float model: {self.fidelity}"
                        f"{'' if self.fidelity.passed else ' (below the thresholds, accepted)'}")  # fmt: skip
        return "\n".join(rows)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers with a weight matrix, from the layer-kind registry (convolutions, linear layers and their
    subclasses, HF ``Conv1D``, registered kinds), not yet linearly quantized."""
    return {n: m for n, (m, _) in weight_layers(model).items() if not isinstance(m, QuantMixin)}


def _targets(model: nn.Module, overrides: tuple[tuple[str, Any], ...],
             default: Any) -> dict[str, tuple[nn.Module, Any]]:  # fmt: skip
    layers = _layers(model)
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
    check = None
    if calib_data is not None and example is not None and config.min_cosine > 0:
        batches = check_batches(calib_data, len(example), model=model)
        check = (batches, *outputs(model, batches))  # the float model's outputs, before anything changes
    method = _calibration(model, config)  # refusals before anything changes (batch norms folded)
    if config.fold_batchnorm:
        folded = fold_batchnorm_(model, example)
        log.info("folded %d batch norms into their convolutions", len(folded))
    stats = {}
    if method is Calibration.DYNAMIC:  # the feed-forward blocks' channel ranges, in float
        assert calib_data is not None
        stats = _dynamic.channel_stats(model, _targets(model, config.overrides, config.bits), calib_data,
                                       len(example or (0,)))  # fmt: skip
    swapped = _swap_layers(model, config)
    points: list[Any] = []
    previous = getattr(model, "deepslim_calibration", None)
    if method is Calibration.DYNAMIC:
        _dynamic_(model, config, swapped, stats)
    elif config.activation_bits is not None:
        assert calib_data is not None
        if config.activation_bits == 8 and example is not None:  # the runtime's additions, concatenations, outputs
            with inference_mode(model):
                points = insert_points_(model, example[0] if len(example) == 1 else example, method)
        calibrate(model, list(swapped.values()), calib_data, method, points, inputs=len(example or (0,)))
        share_layer_inputs_(model)
    setattr(model, "deepslim_calibration", method)  # noqa: B010  (read by the archive and the report)
    if check is not None:
        fid = measure(model, swapped, check[0], check[1], check[2], config.min_cosine, config.min_agreement,
                      point_labels(model, points))  # fmt: skip
        setattr(model, FIDELITY_ATTR, fid)
        if not fid.passed:
            _low_fidelity(model, config, fid, swapped, points, previous, method)


def _calibration(model: nn.Module, config: LinearQuantConfig) -> Calibration:
    """``config.calibration`` for ``model`` (AUTO resolved); split channels asked of a static one are refused."""
    method = _dynamic.resolve(model, config)
    if method is Calibration.DYNAMIC and config.calibration is Calibration.AUTO and _dynamic.split_trio(
            model, _targets(model, config.overrides, config.bits)) is not None:  # fmt: skip
        method = Calibration.MINMAX  # part of a query/key/value trio (a sensitivity trial): no fused file to match
    if method is not Calibration.DYNAMIC and (config.split_outliers or config.split_inputs or config.scale_inputs):
        raise ConfigError(f"split_outliers/split_inputs/scale_inputs are for dynamic int8 of a transformer "
                          f"encoder; this model's calibration is {method.value!r} (calibration='auto' means "
                          "'dynamic' only for encoders that ONNX Runtime fuses): leave them unset or pass "
                          "calibration='dynamic'")  # fmt: skip
    if method is Calibration.DYNAMIC:
        targets = {n: m for n, (m, _) in _targets(model, config.overrides, config.bits).items() if quantizable(m)}
        _dynamic.check_dynamic(model, targets)
        if not _dynamic.gelu_blocks(model) and (config.split_outliers or config.split_inputs or config.scale_inputs):
            raise ConfigError("split_outliers/split_inputs/scale_inputs act on feed-forward blocks whose activation "
                              "ONNX Runtime fuses (exact GELU, hidden_act='gelu'); this encoder's is another: leave "
                              "them unset")  # fmt: skip
    return method


def _dynamic_(model: nn.Module, config: LinearQuantConfig, swapped: dict[str, QuantMixin],
              stats: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Make the swapped layers dynamic int8 and choose their outlier channels from the float model's channel ranges
    ``stats`` (the model back in float on a ConfigError)."""
    try:
        _dynamic.make_dynamic_(swapped)
        # no fused (MatMul, BiasGelu, MatMul) block to split or scale channels in when the activation is not GELU
        settings = config.channel_settings() if _dynamic.gelu_blocks(model) else (0, 0, 0)
        _dynamic.plan_splits_(model, swapped, stats, *settings)
    except ConfigError:
        for m in swapped.values():
            swap_to_float(m)
        raise


def _swap_layers(model: nn.Module, config: LinearQuantConfig) -> dict[str, QuantMixin]:
    """Swap the targeted layers to their quantized classes; returns them by name."""
    swapped: dict[str, QuantMixin] = {}
    kept = []
    for name, (m, bits) in _targets(model, config.overrides, config.bits).items():
        if not quantizable(m):
            kept.append(f"{name} ({type(m).__name__})")
            continue
        _bake_foreign_(m, name)
        swapped[name] = swap_to_quantized(m, bits, config, name)
    if kept:  # quantization_report names them too
        log.warning("left in float (linear quantization holds Conv1d/Conv2d/Linear, their subclasses and HF Conv1D): "
                    "%s", ", ".join(kept))  # fmt: skip
    return swapped


def _low_fidelity(model: nn.Module, config: LinearQuantConfig, fid: Fidelity, swapped: dict[str, QuantMixin],
                  points: list[Any], previous: Any, method: Calibration) -> None:  # fmt: skip
    """A quantized model below the fidelity thresholds: a warning when accepted (or QAT, which trains next), else
    the model back in float (batch norms stay folded: the same function) and a QuantizationError."""
    if config.accept_low_fidelity or config.qat:
        log.warning("int8 model accepted below the fidelity thresholds: %s", fid)
        return
    for m in swapped.values():
        swap_to_float(m)
    remove_points_(model, points)
    delattr(model, FIDELITY_ATTR)
    if previous is None:
        delattr(model, "deepslim_calibration")
    else:
        setattr(model, "deepslim_calibration", previous)  # noqa: B010
    raise QuantizationError(refusal(fid, per_channel=config.per_channel, calibration=method.value,
                                    min_cosine=config.min_cosine, weight_only=config.activation_bits is None,
                                    layers=swapped, min_agreement=config.min_agreement))  # fmt: skip


def _half(model: nn.Module, config: Float16Config, **_: Any) -> None:
    for layer, _skip in _targets(model, config.overrides, True).values():
        apply_half(layer, config.dtype)


def apply_half(m: nn.Module, dtype: str) -> None:
    """Store ``m``'s tensors in ``dtype`` ("fp16" or "bf16") and run it in that dtype (fp32 in and out)."""
    half = torch.float16 if dtype == "fp16" else torch.bfloat16
    m.to(half)
    setattr(m, "deepslim_half", dtype)  # noqa: B010  (read by the profiler and the archive)
    m.register_forward_pre_hook(lambda mod, args: tuple(a.to(half) if torch.is_tensor(a) else a for a in args))
    m.register_forward_hook(lambda mod, args, out: out.float())


def _elementwise(model: nn.Module, config: Any, **_: Any) -> None:
    for m, value in _targets(model, config.overrides, getattr(config, "bits", True)).values():
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
    targets = _targets(model, config.overrides, config.bits)
    for name, (m, _) in targets.items():
        _plain_weight_(m, name)
    for _, (m, bits) in targets.items():
        share_weights_(m, bits, config.init, config.iterations)
        if config.share_bias and m.bias is not None:
            share_weights_(m, bits, config.init, config.iterations, "bias")
    return model


def _bake_foreign_(m: nn.Module, name: str) -> None:
    """Bake another library's weight parametrization (weight_norm, spectral_norm) into a plain weight before linear
    quantization swaps the layer's class (the quantized weight is that of the weight it computes); refused by name
    when it is combined with deepslim's own (a pruning mask)."""
    if not parametrize.is_parametrized(m, "weight"):
        return
    plist = getattr(m, "parametrizations")["weight"]  # noqa: B009  (typed as a tensor by nn.Module)
    foreign = [type(p).__name__ for p in plist if not type(p).__module__.startswith("deepslim.")]
    if not foreign:
        return
    if len(foreign) < len(plist):
        raise UnsupportedModelError(f"{name}: its weight is computed by {', '.join(foreign)} and a deepslim mask; "
                                    f"skip it with overrides={{{name!r}: None}} or remove the {foreign[0]} before "
                                    "pruning")  # fmt: skip
    log.info("%s: %s baked into the weight before quantization", name, ", ".join(foreign))
    parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def _plain_weight_(m: nn.Module, name: str) -> None:
    """Make ``m.weight`` a plain parameter before its codebook replaces it: a pruning mask stays as the zeros the
    codebook leaves out; weight_norm or spectral_norm is baked into the weight it computes (the codebook stores that
    weight; the model computes the same). Hook-based weight_norm (``torch.nn.utils.weight_norm``) is refused."""
    from deepslim.compress.prune.masks import WeightMask

    hooks = [h for h in weight_parametrizations(m) if h in ("WeightNorm", "SpectralNorm")
             and not (parametrize.is_parametrized(m, "weight"))]  # fmt: skip
    if hooks:
        raise UnsupportedModelError(f"{name}: its weight is computed by a {hooks[0]} hook (torch.nn.utils."
                                    "weight_norm), which k-means cannot encode; remove it first "
                                    f"(torch.nn.utils.remove_weight_norm) or skip the layer with "
                                    f"overrides={{{name!r}: None}}")  # fmt: skip
    if not parametrize.is_parametrized(m, "weight"):
        return
    others = weight_parametrizations(m, ignore=(WeightMask,))
    if any(o == "SharedWeight" for o in others):
        raise UnsupportedModelError(f"{name} is already k-means clustered; skip it with overrides={{{name!r}: None}}")
    if others:
        log.info("%s: %s baked into the weight before clustering", name, ", ".join(others))
    parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def quantization_report(model: nn.Module) -> QuantReport:
    """Each layer's encoding, and the layers with weights left in float (a parametrized weight, such as a pruning
    mask, belongs to its layer: the parametrization containers are not layers of their own)."""
    done, left = [], []
    layers = {n for n, m in _layers(model).items() if quantizable(m)}
    for name, m in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        own = _own_params(m)
        if isinstance(m, QuantMixin):
            act = f" / u{m.act_bits} act" if m.act_bits is not None else " (weight-only)"
            act += _dynamic_encoding(m) if m.dynamic else ""
            done.append((name, f"int{m.bits} w{' per-channel' if m.per_channel else ''}{act}"))
        elif (enc := _encoding(m)) is not None:
            done.append((name, {SharedWeight: f"k-means {getattr(enc, 'bits', '')}-bit",
                                PowerOfTwo: f"power-of-two {getattr(enc, 'bits', '')}-bit",
                                Binary: "binary", Ternary: "ternary"}[type(enc)]))  # fmt: skip
        elif any(p.dtype in (torch.float16, torch.bfloat16) for p in own):
            done.append((name, str(next(p for p in own if p.dtype.is_floating_point).dtype).removeprefix("torch.")))
        elif own:
            why = "skipped by an override" if name in layers else f"{type(m).__name__} is not quantized"
            left.append((name, why))
    method = getattr(model, "deepslim_calibration", None)
    return QuantReport(tuple(done), tuple(left), getattr(model, FIDELITY_ATTR, None),
                       method.value if isinstance(method, Calibration) else None)  # fmt: skip


def _dynamic_encoding(m: QuantMixin) -> str:
    """' dynamic' and the layer's fp32 channels, for the report."""
    parts = [f"input channels {m.split_in.tolist()}"] if m.split_in is not None else []
    parts += [f"output channels {m.split_out.tolist()}"] if m.split_out is not None else []
    scaled = [] if m.in_scale is None else [i for i, v in enumerate(m.in_scale.tolist()) if v != 1.0]
    return " dynamic" + (f" ({', '.join(parts)} in fp32)" if parts else "") + (
        f" (input channels {scaled} scaled down)" if scaled else "")  # fmt: skip


def _own_params(m: nn.Module) -> list[torch.Tensor]:
    """``m``'s own parameters, a parametrized tensor's original included (it lives in ``m.parametrizations``)."""
    own: list[torch.Tensor] = list(m.parameters(recurse=False))
    if parametrize.is_parametrized(m):
        plists = m.parametrizations
        assert isinstance(plists, nn.ModuleDict)
        own += [p for plist in plists.values() for p in plist.parameters(recurse=False)]
    return own


def _encoding(m: nn.Module) -> nn.Module | None:
    """The weight encoding (k-means, power of two, binary, ternary) parametrizing ``m.weight``, if any."""
    if not parametrize.is_parametrized(m, "weight"):
        return None
    plists = m.parametrizations
    assert isinstance(plists, nn.ModuleDict)
    return next((p for p in plists["weight"].children() if isinstance(p, (SharedWeight, PowerOfTwo, Binary, Ternary))),
                None)  # fmt: skip


__all__ = [
    "BinaryConfig", "Calibration", "Fidelity", "Float16Config", "KMeansConfig", "KMeansInit", "LinearQuantConfig",
    "PowerOfTwoConfig", "QUANTIZABLE", "QuantReport", "QuantizationError", "TernaryConfig", "apply_half",
    "attention_trios",
    "batch_inputs", "cluster_", "disable_points_", "dynamic_state", "exporting", "fake_quantize", "fold_batchnorm_",
    "fp32_channels", "insert_points_", "qrange", "quantization_report", "quantize_", "scores_are_classes",
    "set_dynamic_state", "sqnr_db", "weight_from_codes",
]  # fmt: skip
