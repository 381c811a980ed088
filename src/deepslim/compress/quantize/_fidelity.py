"""The fidelity check of post-training quantization: does the quantized model still compute the float model?

After calibrating, ``quantize_`` runs the first calibration batches through the quantized model and compares its
output with the float model's (recorded before anything changed): cosine similarity over all outputs and, for
classification outputs (``(N, C)`` with 10 or more rows), top-1 agreement. Below the thresholds the quantization is
refused (:class:`QuantizationError`) and the model is put back in float — a quantized model that silently computes
something else is the failure this check exists to prevent (a random-weight MobileNetV2 came out at cosine 0.85).

Which layers to blame is measured locally: each quantized layer's output against its float output *on the same
input* (its own weight and input quantization, not the error it inherits), as a signal-to-quantization-noise ratio
in dB. The layers with the lowest SQNR are named in the error with the ways out.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from deepslim._modes import inference_mode
from deepslim.errors import QuantizationError

log = logging.getLogger(__name__)
FIDELITY_ATTR = "deepslim_fidelity"  # the model's last Fidelity, read by quantization_report


__all__ = ["FIDELITY_ATTR", "Fidelity", "QuantizationError"]  # QuantizationError lives in deepslim.errors


@dataclass(frozen=True)
class Fidelity:
    """How closely the quantized model follows the float one on the checked calibration batches."""

    cosine: float  # of all outputs, quantized vs float
    top1_agreement: float | None  # classification outputs with >= 10 rows, else None
    rows: int
    # (layer, or "LAYER output" for an activation point after it; SQNR in dB of its own quantization), lowest first
    worst_layers: tuple[tuple[str, float], ...]
    passed: bool

    def __str__(self) -> str:
        agree = f", top-1 agreement {100 * self.top1_agreement:.0f}%" if self.top1_agreement is not None else ""
        worst = ", ".join(f"{n} ({db:.1f} dB)" for n, db in self.worst_layers[:3])
        return f"cosine {self.cosine:.3f}{agree} over {self.rows} rows; noisiest layers: {worst or 'none'}"


def check_batches(calib_data: Iterable[Any], inputs: int, max_batches: int = 4,
                  max_rows: int = 64) -> list[tuple[Any, ...]]:  # fmt: skip
    """The model inputs of the first calibration batches (at most ``max_batches``, stopping at ``max_rows``)."""
    out: list[tuple[Any, ...]] = []
    rows = 0
    for batch in itertools.islice(calib_data, max_batches):
        xs = tuple(batch[:inputs]) if isinstance(batch, (tuple, list)) else (batch,)
        out.append(xs)
        first = xs[0] if xs else None
        rows += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1
        if rows >= max_rows:
            break
    return out


def outputs(model: nn.Module, batches: list[tuple[Any, ...]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(every floating-point output of each batch, flattened and joined; the class scores of each batch when the
    first output is ``(N, C)`` with C > 1, else an empty list)."""
    flat, scores = [], []
    with inference_mode(model), torch.no_grad():
        for xs in batches:
            leaves = [t.detach().float() for t in tree_leaves(model(*xs))
                      if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
            flat.append(torch.cat([t.flatten() for t in leaves]) if leaves else torch.zeros(0))
            if leaves and leaves[0].ndim == 2 and leaves[0].shape[1] > 1:
                scores.append(leaves[0])
    return flat, scores if len(scores) == len(batches) else []


def compare(ref: list[torch.Tensor], got: list[torch.Tensor], ref_cls: list[torch.Tensor],
            got_cls: list[torch.Tensor]) -> tuple[float, float | None, int]:  # fmt: skip
    """(cosine over every output, top-1 agreement of class scores or None, rows)."""
    a = torch.cat([t.double() for t in ref]) if ref else torch.zeros(0, dtype=torch.float64)
    b = torch.cat([t.double() for t in got]) if got else torch.zeros(0, dtype=torch.float64)
    if a.shape != b.shape:
        return 0.0, None, 0
    denom = float(a.norm() * b.norm())
    cos = float(a @ b) / denom if denom > 0 else float(torch.allclose(a, b))
    rows = sum(len(t) for t in ref_cls)
    agree = None
    if ref_cls and len(ref_cls) == len(got_cls) and rows >= 10:
        hits = sum(int((r.argmax(1) == g.argmax(1)).sum()) for r, g in zip(ref_cls, got_cls, strict=True))
        agree = hits / rows
    return cos, agree, rows


class LayerNoise:
    """Hooks on quantized layers measuring each one's own quantization noise (its output vs its float output on
    the same input), accumulated over the batches run while installed."""

    def __init__(self, layers: Mapping[str, nn.Module], points: Mapping[str, nn.Module] | None = None) -> None:
        from deepslim.compress.quantize.linear import float_class

        points = points or {}
        self.signal: dict[str, float] = dict.fromkeys([*layers, *points], 0.0)
        self.noise: dict[str, float] = dict.fromkeys([*layers, *points], 0.0)
        self.handles = []
        for name, m in layers.items():
            plain = float_class(type(m))
            self.handles.append(m.register_forward_hook(self._hook(name, plain)))
        for name, p in points.items():  # a point's noise: its output against its input
            self.handles.append(p.register_forward_hook(self._hook(name, None)))

    def _hook(self, name: str, plain: Any) -> Any:
        def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if not args or not isinstance(out, torch.Tensor):
                return
            ref = (plain.forward(m, *args) if plain is not None else args[0]).detach().double()
            self.signal[name] += float(ref.pow(2).sum())
            self.noise[name] += float((out.detach().double() - ref).pow(2).sum())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def worst(self, n: int = 5) -> tuple[tuple[str, float], ...]:
        db = {k: _db(self.signal[k], self.noise[k]) for k in self.signal if self.signal[k] > 0}
        return tuple(sorted(db.items(), key=lambda kv: kv[1])[:n])


def _db(signal: float, noise: float) -> float:
    import math

    return 10 * math.log10(signal / max(noise, 1e-30))


def measure(model: nn.Module, layers: Mapping[str, nn.Module], batches: list[tuple[Any, ...]],
            ref: list[torch.Tensor], ref_cls: list[torch.Tensor], min_cosine: float,
            min_agreement: float, points: Mapping[str, nn.Module] | None = None) -> Fidelity:  # fmt: skip
    """The quantized ``model``'s fidelity to the recorded float outputs ``ref`` (see the module docstring);
    ``points`` (label -> activation point) are measured beside the layers."""
    noise = LayerNoise(layers, points)
    try:
        got, got_cls = outputs(model, batches)
    finally:
        noise.remove()
    cos, agree, rows = compare(ref, got, ref_cls, got_cls)
    passed = cos >= min_cosine and (agree is None or agree >= min_agreement)
    rows = rows or sum(int(xs[0].shape[0]) if isinstance(xs[0], torch.Tensor) and xs[0].ndim else 1
                       for xs in batches if xs)  # fmt: skip
    return Fidelity(cos, agree, rows, noise.worst(), passed)


def refusal(fid: Fidelity, *, per_channel: bool, calibration: str, min_cosine: float, weight_only: bool,
            layers: Iterable[str], min_agreement: float | None = None) -> str:  # fmt: skip
    """The error message: what failed, which layers, and every way out."""
    named = [n.removesuffix(" output") for n, _ in fid.worst_layers]
    worst = list(dict.fromkeys(n for n in named if n in layers))[:2]
    skip = ", ".join(f"{n!r}: None" for n in worst)
    outs = [f"keep the noisiest layers in float with overrides={{{skip}}}"] if worst else []
    if not per_channel:
        outs.append("per_channel=True")
    if calibration == "minmax" and not weight_only:
        outs.append("calibration='percentile' or 'mse' (clips activation outliers)")
    outs += [] if weight_only else ["activation_bits=None (weight-only)"]
    outs += ["or accept it with LinearQuantConfig(accept_low_fidelity=True) "
             "(a warning, and the numbers in quantization_report(model).fidelity)"]
    limits = f"thresholds: cosine {min_cosine:g}"
    if min_agreement is not None and fid.top1_agreement is not None:
        limits += f", top-1 agreement {min_agreement:.0%}"
    return (f"the quantized model does not compute the float model on the calibration data ({fid}; {limits}); the "
            f"model is left in float. Ways out: {'; '.join(outs)}")
