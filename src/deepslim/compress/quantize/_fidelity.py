"""The fidelity check of post-training quantization: does the quantized model still compute the float model?

After calibrating, ``quantize_`` runs the first calibration batches through the quantized model and compares its
output with the float model's (recorded before anything changed): cosine similarity over all outputs and, for
class scores (``(N, C)`` with 10 or more rows), top-1 agreement. Below the thresholds the quantization is refused
(:class:`QuantizationError`) and the model is put back in float — a quantized model that silently computes
something else is the failure this check exists to prevent (a random-weight MobileNetV2 came out at cosine 0.85).

Top-1 agreement means something only where the outputs are class scores: the argmax of a sentence embedding or a
regression vector is noise (MiniLM's 384 embedding dimensions gave "top-1 agreement 56%" at cosine 0.95, and
``min_agreement`` refused it). ``quantize_`` is given calibration batches, not a task, so the task is read from
them (:func:`scores_are_classes`): the model itself when it outputs embeddings (a sentence encoder, whatever its
batches hold), else the :class:`~deepslim.tasks.Task` of the loader (``TASK_ATTR``, set by the data bundle that made
it), else the batches' targets (class indices are integers, regression and embedding targets real
values); without either, a 2-D output with more than one column is taken as class scores, as before.

Which layers to blame is measured locally: each quantized layer's output against its float output *on the same
input* (its own weight and input quantization, not the error it inherits), as a signal-to-quantization-noise ratio
in dB. The layers with the lowest SQNR are named in the error with the ways out.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.compress.quantize._inputs import batch_inputs, batch_target
from deepslim.data import LOADER_TASK_ATTR
from deepslim.errors import QuantizationError

log = logging.getLogger(__name__)
FIDELITY_ATTR = "deepslim_fidelity"  # the model's last Fidelity, read by quantization_report
TASK_ATTR = LOADER_TASK_ATTR  # a calibration loader's Task (or task name): every data bundle sets it on its loaders


# QuantizationError lives in deepslim.errors
__all__ = ["FIDELITY_ATTR", "TASK_ATTR", "CheckBatches", "Fidelity", "QuantizationError", "scores_are_classes"]


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


class CheckBatches(list[tuple[Any, ...]]):
    """The model inputs of the checked batches, and whether the model's outputs on them are class scores (True),
    are not (False: embeddings, regression; cosine alone) or are judged by their shape (None)."""

    classes: bool | None = None


def scores_are_classes(calib_data: Any, batch: Any, inputs: int, model: nn.Module | None = None) -> bool | None:
    """Whether the outputs on ``calib_data`` are class scores: not when ``model`` outputs embeddings
    (:func:`outputs_embeddings`), else what its loader's task says, else the first batch's target (integers: class
    indices; real values: regression or embedding targets), else None (unknown)."""
    if model is not None and outputs_embeddings(model):
        return False
    task = getattr(calib_data, TASK_ATTR, None)
    if isinstance(task, str):
        from deepslim.tasks import get_task

        task = get_task(task)
    if task is not None:
        return bool(task.has_classes)
    target = batch_target(batch, inputs)
    if target is None:
        return None
    return not (target.is_floating_point() or target.is_complex())


def outputs_embeddings(model: nn.Module) -> bool:
    """Whether ``model`` itself outputs embeddings, whose argmax is noise: a sentence encoder
    (:class:`~deepslim.models.hf.SentenceEncoder`, as ``load_model("all-minilm-l6-v2")`` gives; a model that wraps
    one and adds a head outputs what its head does)."""
    from deepslim.models.hf import SentenceEncoder

    return isinstance(model, SentenceEncoder)


def check_batches(calib_data: Iterable[Any], inputs: int, max_batches: int = 4, max_rows: int = 64, *,
                  model: nn.Module | None = None) -> CheckBatches:  # fmt: skip
    """The model inputs of the first calibration batches (at most ``max_batches``, stopping at ``max_rows``); a
    dict batch gives its entries in the order of ``model``'s forward parameters (``_inputs.batch_inputs``)."""
    out = CheckBatches()
    rows = 0
    for batch in itertools.islice(calib_data, max_batches):
        if isinstance(batch, Mapping) and model is not None:
            xs = batch_inputs(model, batch, inputs)
        else:
            xs = tuple(batch[:inputs]) if isinstance(batch, (tuple, list)) else (batch,)
        if not out:
            out.classes = scores_are_classes(calib_data, batch, inputs, model)
        out.append(xs)
        rows += _rows(xs)
        if rows >= max_rows:
            break
    return out


def _rows(xs: tuple[Any, ...]) -> int:
    """The batch size of one batch's model inputs (a dict taken as one input: its ``input_ids`` or first entry)."""
    first = xs[0] if xs else None
    if isinstance(first, Mapping) and first:
        first = first["input_ids"] if "input_ids" in first else next(iter(first.values()))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1


def outputs(model: nn.Module, batches: list[tuple[Any, ...]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(every floating-point output of each batch, flattened and joined; the class scores of each batch, else an
    empty list). Class scores: the ``logits`` of a mapping output, else the first output when it is ``(N, C)`` with
    C > 1 — unless ``batches`` (a :class:`CheckBatches`) says the outputs are not class scores."""
    classes = getattr(batches, "classes", None)
    flat, scores = [], []
    with inference_mode(model), torch.no_grad():
        for xs in batches:
            out = model(*xs)
            leaves = [t.detach().float() for t in tree_leaves(out)
                      if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
            flat.append(torch.cat([t.flatten() for t in leaves]) if leaves else torch.zeros(0))
            logits = out.get("logits") if isinstance(out, Mapping) else None
            first = logits.detach().float() if isinstance(logits, torch.Tensor) else leaves[0] if leaves else None
            if classes is not False and first is not None and first.ndim == 2 and first.shape[1] > 1:
                scores.append(first)
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
        self.layers, self.points = layers, points or {}
        self.signal: dict[str, float] = dict.fromkeys([*layers, *self.points], 0.0)
        self.noise: dict[str, float] = dict.fromkeys([*layers, *self.points], 0.0)

    @contextlib.contextmanager
    def installed(self) -> Iterator[LayerNoise]:
        """The hooks, for the block: the batches run inside it are measured."""
        from deepslim.compress.quantize.linear import float_class

        layer = hooked(self.layers, forward=lambda n: self._hook(n, float_class(type(self.layers[n]))))
        point = hooked(self.points, forward=lambda n: self._hook(n, None))  # its output against its input
        with layer, point:
            yield self

    def _hook(self, name: str, plain: Any) -> Any:
        def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if not args or not isinstance(out, torch.Tensor):
                return
            ref = (plain.forward(m, *args) if plain is not None else args[0]).detach().double()
            self.signal[name] += float(ref.pow(2).sum())
            self.noise[name] += float((out.detach().double() - ref).pow(2).sum())

        return hook

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
    with LayerNoise(layers, points).installed() as noise:
        got, got_cls = outputs(model, batches)
    cos, agree, rows = compare(ref, got, ref_cls, got_cls)
    passed = cos >= min_cosine and (agree is None or agree >= min_agreement)
    rows = rows or sum(_rows(xs) for xs in batches)
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
