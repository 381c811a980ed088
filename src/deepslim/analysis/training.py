"""Training memory, exactly: weights, gradients, optimizer state and the activations autograd saves for backward.

Training memory dwarfs inference memory, and most of it is activations kept for the backward pass. What each operator
keeps depends on which of its inputs need a gradient — and stock PyTorch keeps a convolution's whole input even when
only its bias trains, which is why bias-only fine-tuning saves about as much as full fine-tuning (Cai et al., TinyTL,
NeurIPS 2020, model the saving; :mod:`deepslim.train.ondevice` makes it real). :func:`training_profile` runs one
forward on fake tensors (any batch size costs the memory of the weights) under a dispatch mode that applies those
rules per ATen operator (:mod:`deepslim.analysis._training_rules`); :func:`measure_saved_bytes` is the oracle it is
tested against (``torch.autograd.graph.saved_tensors_hooks`` on a forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepslim.analysis._execution import fake_mode, fake_state_undone, to_fake
from deepslim.analysis._format import human
from deepslim.analysis._tracer import Example, _as_call, owner_name, storage_bytes, storage_key, tensors
from deepslim.analysis._training_peak import measured_peak_bytes
from deepslim.analysis._training_trace import (
    SavedTracer,
    Trainable,
    input_grad_scratch,
    oracle_saved_bytes,
    rebatch,
    resident_keys,
    resolve_deferred,
    select_trainable,
    trace_saved,
    trainable_applied,
)
from deepslim.errors import ConfigError

if TYPE_CHECKING:
    from deepslim.analysis.devices import DeviceProfile

_OPTIMIZER_STATES = {"sgd": 0, "sgd-momentum": 1, "adam": 2}  # state tensors per trainable parameter
# parameter-sized temporaries of one parameter's update (torch's single-tensor CPU step): Adam's denominator is
# ``sqrt`` then ``div`` of its second moment, both fresh tensors; SGD updates in place
_STEP_TEMPORARIES = {"sgd": 0, "sgd-momentum": 0, "adam": 2}


@dataclass(frozen=True)
class LayerTraining:
    """Training memory of one layer (module); ``saved_bytes`` are the activations its operators keep for backward."""

    name: str
    type: str
    frozen_bytes: int = 0
    trainable_bytes: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    saved_bytes: int = 0
    efficient: bool = False  # the layer saves through its own memory-efficient autograd function

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TrainingProfile:
    """Per-layer and total training memory of one step; ``str()`` is a table, ``to_dict()`` is JSON-ready."""

    model: str
    batch_size: int | None
    trainable: str
    optimizer: str
    layers: tuple[LayerTraining, ...]
    weight_bytes: int  # every parameter, frozen or not
    trainable_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    saved_bytes: int  # activations kept for backward (unique storages; the model's own tensors excluded)
    transient_bytes: int  # the largest forward temporaries / backward workspace on top of the saved activations
    peak_bytes: int  # most held at once in a steady-state step: weights, optimizer state, batch, activations, grads
    unknown_ops: tuple[str, ...] = ()  # operators without a rule, counted conservatively
    stock_layers: tuple[str, ...] = ()  # layers with trainable or saved state that run the stock PyTorch way
    device: str | None = None
    fits_sram: bool | None = None
    fits_dram: bool | None = None

    def layer(self, name: str) -> LayerTraining:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def with_device(self, device: str | DeviceProfile) -> TrainingProfile:
        """This profile with ``fits_sram``/``fits_dram`` for ``device`` (DRAM: None when the device gives no size)."""
        from dataclasses import replace

        from deepslim.analysis.devices import get_device

        dev = get_device(device)
        dram = getattr(dev, "dram_bytes", None)
        return replace(self, device=dev.name, fits_sram=self.peak_bytes <= dev.onchip_bytes,
                       fits_dram=None if dram is None else self.peak_bytes <= dram)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "layers"}
        d["unknown_ops"], d["stock_layers"] = list(self.unknown_ops), list(self.stock_layers)
        d["layers"] = [row.to_dict() for row in self.layers]
        return d

    def __str__(self) -> str:
        header = ["layer", "type", "frozen", "trainable", "grads", "optim", "saved", "how"]
        lines = ["  ".join(f"{h:>10}" if i > 1 else f"{h:<24}" for i, h in enumerate(header))]
        for r in self.layers:
            cells = [r.name or "(model)", r.type] + [human(b, "B") for b in (
                r.frozen_bytes, r.trainable_bytes, r.grad_bytes, r.optimizer_bytes, r.saved_bytes)]
            cells.append("efficient" if r.efficient else "stock" if r.name in self.stock_layers else "-")
            lines.append("  ".join(f"{c:>10}" if i > 1 else f"{c[:24]:<24}" for i, c in enumerate(cells)))
        lines.append(f"{self.model} ({self.trainable}, {self.optimizer}, batch {self.batch_size or 'as given'}): "
                     f"weights {human(self.weight_bytes, 'B')}, grads {human(self.grad_bytes, 'B')}, optimizer "
                     f"{human(self.optimizer_bytes, 'B')}, saved {human(self.saved_bytes, 'B')}, "
                     f"peak {human(self.peak_bytes, 'B')}")  # fmt: skip
        if self.device is not None:
            lines.append(f"on {self.device}: fits SRAM {self.fits_sram}, fits DRAM {self.fits_dram}")
        if self.unknown_ops:
            lines.append(f"operators without a rule (counted conservatively): {', '.join(self.unknown_ops)}")
        return "\n".join(lines)


def training_profile(model: nn.Module, example_batch: Example, *, trainable: Trainable = "all",
                     optimizer: str = "adam", batch_size: int | None = None,
                     device: str | DeviceProfile | None = None) -> TrainingProfile:  # fmt: skip
    """Memory of one training step of ``model`` on ``example_batch``, per layer and in total.

    ``trainable``: ``"all"``, ``"bias"``, ``"last"`` (the last layer with parameters), ``"none"``, ``"current"`` (the
    parameters that require a gradient now, e.g. after ``tinytl_`` or ``sparse_update_``), ``"sparse:SPEC"``
    (comma-separated ``bias``, ``bias:K``, ``weight:K``, layer names or ``re:`` regexes), a set of parameter names
    or a callable ``(name, parameter) -> bool``. ``batch_size`` resizes the example's first dimension. The model runs
    in train mode on fake tensors; its flags and modes are put back afterwards.
    """
    if optimizer not in _OPTIMIZER_STATES:
        raise ConfigError(f"unknown optimizer {optimizer!r}; use one of {', '.join(_OPTIMIZER_STATES)}")
    names = select_trainable(model, trainable)
    mode = fake_mode()
    with trainable_applied(model, names), fake_state_undone(model):
        with mode:
            fake = rebatch(to_fake(mode, example_batch), batch_size)
        tracer = SavedTracer(resident_keys(model, mode))
        outputs = trace_saved(model, fake, tracer, mode)
        resolve_deferred(tracer)
    label = trainable if isinstance(trainable, str) else f"{len(names)} tensors"
    prof = _assemble(model, tracer, names, label, optimizer, batch_size, tracer.peak(outputs))
    return prof.with_device(device) if device is not None else prof


def activation_peaks(model: nn.Module, example_batch: Example) -> tuple[int, int]:
    """(forward, backward) peaks of activation and gradient bytes of one step of ``model`` as its parameters'
    ``requires_grad`` flags stand, the example included; weights and optimizer state excluded. For modules that
    size the recomputation they do in backward (gradient checkpointing)."""
    mode = fake_mode()
    with fake_state_undone(model):
        with mode:
            fake = to_fake(mode, example_batch)
        tracer = SavedTracer(resident_keys(model, mode))
        outputs = trace_saved(model, fake, tracer, mode)
        resolve_deferred(tracer)
    return tracer.peak(outputs)


def measure_saved_bytes(model: nn.Module, example_batch: Example, *, trainable: Trainable = "all",
                        batch_size: int | None = None, fake: bool = False) -> int:  # fmt: skip
    """The oracle: bytes of the unique storages autograd packs for backward in one real training-mode forward.

    ``fake=True`` runs the same count on fake tensors (no activation memory; the same storages).
    """
    names = select_trainable(model, trainable)
    with trainable_applied(model, names), fake_state_undone(model):
        if not fake:
            return oracle_saved_bytes(model, rebatch(example_batch, batch_size))
        mode = fake_mode()
        with mode:
            batch = rebatch(to_fake(mode, example_batch), batch_size)
        return oracle_saved_bytes(model, batch, mode)


def _assemble(model: nn.Module, tracer: SavedTracer, names: set[str], label: str, optimizer: str,
              batch_size: int | None, peaks: tuple[int, int]) -> TrainingProfile:  # fmt: skip
    states = _OPTIMIZER_STATES[optimizer]
    saved: dict[str, int] = {}
    for layer, nbytes in tracer.saved.values():
        saved[layer] = saved.get(layer, 0) + nbytes
    rows, seen = [], set()
    for mod_name, mod in model.named_modules():
        if owner_name(mod_name) != mod_name:
            continue
        frozen = trainable = 0
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            nbytes = p.numel() * p.element_size()
            trainable += nbytes if full in names else 0
            frozen += 0 if full in names else nbytes
        if frozen or trainable or saved.get(mod_name):
            rows.append(LayerTraining(mod_name, type(mod).__name__, frozen, trainable, trainable,
                                      trainable * states, saved.get(mod_name, 0), mod_name in tracer.efficient))
    return _totals(model, tuple(rows), tracer, names, label, optimizer, batch_size, peaks)


def _totals(model: nn.Module, rows: tuple[LayerTraining, ...], tracer: SavedTracer, names: set[str], label: str,
            optimizer: str, batch_size: int | None, peaks: tuple[int, int]) -> TrainingProfile:  # fmt: skip
    weights = sum(r.frozen_bytes + r.trainable_bytes for r in rows)
    grads, states = sum(r.grad_bytes for r in rows), sum(r.optimizer_bytes for r in rows)
    saved_total = sum(r.saved_bytes for r in rows)
    # steady state: weights and optimizer state always; on top, the forward, the backward or the update's gradients
    largest = max((p.numel() * p.element_size() for n, p in model.named_parameters() if n in names), default=0)
    update = grads + _STEP_TEMPORARIES[optimizer] * largest  # the optimizer step, at its largest parameter
    peak = weights + states + max(*peaks, update + sum(tracer.inputs.values()))
    stock = tuple(r.name for r in rows if not r.efficient and (r.saved_bytes or r.trainable_bytes))
    return TrainingProfile(
        model=type(model).__name__, batch_size=batch_size, trainable=label, optimizer=optimizer, layers=rows,
        weight_bytes=weights, trainable_bytes=sum(r.trainable_bytes for r in rows), grad_bytes=grads,
        optimizer_bytes=states, saved_bytes=saved_total,
        transient_bytes=max(0, peak - weights - grads - states - saved_total), peak_bytes=peak,
        unknown_ops=tuple(sorted(tracer.unknown)), stock_layers=stock,
    )  # fmt: skip


def measure_peak_bytes(model: nn.Module, example_batch: Example, *, trainable: Trainable = "all",
                       optimizer: str = "adam", batch_size: int | None = None) -> int:  # fmt: skip
    """The check for ``peak_bytes``: one real steady-state training step's peak, from its allocation trace.

    The step is forward, ``output.sum()`` backward and an optimizer update (Adam or SGD, with momentum if asked, lr
    1e-3), after one warm-up step; parameters, optimizer state and batch count as held. The model's weights change:
    measure a copy if they matter.
    """
    if optimizer not in _OPTIMIZER_STATES:
        raise ConfigError(f"unknown optimizer {optimizer!r}; use one of {', '.join(_OPTIMIZER_STATES)}")
    names = select_trainable(model, trainable)
    if not names:
        raise ConfigError("nothing to train: a training step needs at least one trainable parameter")
    batch = rebatch(example_batch, batch_size)
    args, kwargs = _as_call(batch)
    with trainable_applied(model, names):
        params = [p for p in model.parameters() if p.requires_grad]
        optim = (torch.optim.Adam(params, lr=1e-3) if optimizer == "adam"
                 else torch.optim.SGD(params, lr=1e-3, momentum=0.9 if optimizer == "sgd-momentum" else 0.0))

        def step() -> None:
            model(*args, **kwargs).float().sum().backward()
            optim.step()

        held = sum(storage_bytes(t) for t in {storage_key(t): t for t in tensors((args, kwargs))}.values())
        return measured_peak_bytes(model, step, optim, held)


def sqrt_segments(n_layers: int) -> int:
    """The number of checkpoint segments that minimizes saved activations for ``n_layers`` equal layers: ⌈√n⌉."""
    return max(1, math.ceil(math.sqrt(n_layers)))


__all__ = ["LayerTraining", "TrainingProfile", "activation_peaks", "input_grad_scratch", "measure_peak_bytes",
           "measure_saved_bytes", "rebatch", "sqrt_segments", "training_profile"]
