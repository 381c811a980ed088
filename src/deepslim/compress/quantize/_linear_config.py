"""The configuration of linear quantization (:class:`LinearQuantConfig`) and its checks: the bit-widths, the
fidelity thresholds, and what dynamic int8 (ONNX Runtime's dynamic kernels) can run. The layers that execute it are
in :mod:`deepslim.compress.quantize.linear`, which re-exports these names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepslim.compress.quantize.observers import Calibration
from deepslim.config import Config, Overrides, coerce_enum, freeze_overrides
from deepslim.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class LinearQuantConfig(Config):
    """``bits``-bit weights and ``activation_bits``-bit activations (None: weight-only).

    ``overrides`` maps layer names or ``re:`` patterns to a bit-width (mixed precision), or None to keep the layer in
    floating point. ``qat=True`` makes the scales learnable (LSQ) for training with ``fit``.

    With calibration data, ``quantize_`` checks the quantized model against the float one on the first calibration
    batches: an output cosine below ``min_cosine`` or a top-1 agreement below ``min_agreement`` (classification
    outputs, 10 or more rows) is a ``QuantizationError`` naming the noisiest layers, and the model is left in float —
    unless ``accept_low_fidelity``, which logs a warning instead (``quantization_report(model).fidelity`` has the
    numbers either way). ``min_cosine=0`` turns the check off. QAT models are measured but never refused (training
    follows).

    ``calibration`` ``AUTO`` (the default) is ``DYNAMIC`` for a transformer encoder that ONNX Runtime fuses (a
    Hugging Face BERT-style ``SentenceEncoder``: per-batch activation ranges, the fast int8 file of its fused
    attention) and ``MINMAX`` for every other model; ``quantization_report`` shows what each layer got.
    Dynamic layers only, chosen on the calibration data (one wide channel otherwise sets the dynamic step of all):
    ``split_outliers`` (None: 1) widest GELU-output channels of every feed-forward block are computed in fp32 beside
    the int8 product; ``scale_inputs`` (None: 2, or 0 when ``split_inputs`` is set) widest input channels of its up
    projection are divided down to 4× the median channel's range, their weight columns multiplied by the same factor
    (the same product in float, one ``Mul`` in the file); ``split_inputs`` (None: 0) widest input channels of the up
    projection are instead computed in fp32 (as fine, slower at batch 32).
    """

    bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    activation_bits: int | None = 8
    calibration: Calibration = Calibration.AUTO
    qat: bool = False
    fold_batchnorm: bool = True
    min_cosine: float = 0.98
    min_agreement: float = 0.8
    accept_low_fidelity: bool = False
    overrides: Overrides[int | None] = ()
    split_outliers: int | None = None
    split_inputs: int | None = None
    scale_inputs: int | None = None

    def __post_init__(self) -> None:
        _check_bits("bits", self.bits)
        if self.activation_bits is not None:
            _check_bits("activation_bits", self.activation_bits)
        coerce_enum(self, "calibration", Calibration)
        for what in ("min_cosine", "min_agreement"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{what} must be a number from 0 to 1, got {value!r}")
        object.__setattr__(self, "overrides", freeze_overrides(self.overrides, _check_bits))
        for what in ("split_outliers", "split_inputs", "scale_inputs"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{what} must be a whole number >= 0 (or None: the default), got {value!r}")
        if self.split_inputs and self.scale_inputs:
            raise ConfigError("split_inputs and scale_inputs treat the same channels (the widest inputs of the up "
                              "projections): give one of them")  # fmt: skip
        if self.calibration is Calibration.DYNAMIC:
            _check_dynamic(self)
        elif self.calibration is not Calibration.AUTO and (self.split_outliers or self.split_inputs or
                                                           self.scale_inputs):  # fmt: skip
            raise ConfigError(f"split_outliers/split_inputs/scale_inputs need calibration='dynamic' (or 'auto' on a "
                              f"transformer encoder); {self.calibration.value!r} calibrates static ranges")  # fmt: skip

    def channel_settings(self) -> tuple[int, int, int]:
        """(split_outliers, split_inputs, scale_inputs) with the defaults filled in: 1, 0, and 2 unless
        ``split_inputs`` is given (measured on all-MiniLM-L6-v2: mean cosine 0.9972 at the speed of no input split)."""
        outliers = 1 if self.split_outliers is None else self.split_outliers
        split = self.split_inputs or 0
        scale = (0 if split else 2) if self.scale_inputs is None else self.scale_inputs
        return outliers, split, scale


def dynamic_conflict(config: LinearQuantConfig) -> str:
    """What in ``config`` dynamic int8 cannot do ("" when nothing): it is what ONNX Runtime's dynamic kernels run,
    8-bit symmetric weights and u8 activations, without QAT. ``calibration='auto'`` resolves to static ranges then."""
    bits = {config.bits, *(b for _, b in config.overrides if b is not None)}
    return ("activation_bits=None (weight-only has no activations to quantize)" if config.activation_bits is None
            else f"activation_bits={config.activation_bits}" if config.activation_bits != 8
            else f"{min(bits)}-bit weights" if bits != {8}
            else "qat=True (QAT learns static ranges)" if config.qat
            else "symmetric=False (ONNX Runtime's dynamic weights are symmetric s8)" if not config.symmetric
            else "")  # fmt: skip


def _check_dynamic(config: LinearQuantConfig) -> None:
    why = dynamic_conflict(config)
    if why:
        raise ConfigError(f"calibration='dynamic' is ONNX Runtime's dynamic int8 (8-bit symmetric weights, u8 "
                          f"activations quantized per batch) and cannot be combined with {why}; use "
                          "calibration='minmax' (or another static one)")  # fmt: skip


def _check_bits(what: str, bits: Any) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ConfigError(f"{what} must be an integer from 2 to 8, got {bits!r}")
