"""Operator-level profiling of a PyTorch model: parameters, MACs, bytes and activation memory, per layer.

The model runs once on an example input under a ``TorchDispatchMode`` that sees every ATen operator — so functional
calls, attention products, depthwise and grouped convolutions and any module layout are counted — while module hooks
say which layer is running. Each operator is charged to the innermost module active when it ran. Counting
conventions are in :mod:`deepslim.analysis._ops`.

Nothing needs values, so the run is on fake tensors (:mod:`deepslim.analysis._execution`): any input size profiles in
the memory of the weights. A model whose forward reads values runs for real, within the memory that is free. Models
on the ``meta`` device profile without computing anything either way.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from deepslim.analysis._execution import (
    available_memory_bytes,
    fake_mode,
    fake_state_undone,
    has_lazy_parameters,
    to_fake,
)
from deepslim.analysis._format import human
from deepslim.analysis._liveness import peak_live_bytes
from deepslim.analysis._tracer import (
    Example,
    OverBudget,
    Row,
    Tracer,
    dtype_label,
    owner_name,
    run,
    storage_bytes,
    storage_key,
    tensors,
)
from deepslim.errors import ConfigError, DeepSlimError, InputShapeError, UnsupportedOpError

if TYPE_CHECKING:
    from deepslim.analysis.cost import CostEstimate
    from deepslim.analysis.devices import DeviceProfile

log = logging.getLogger(__name__)
_USABLE_FRACTION = 0.8  # of the free memory, what a real profiling run may hold



@dataclass(frozen=True)
class LayerProfile:
    """What one layer (module, or functional code in a module's own forward) costs for one inference."""

    name: str
    type: str
    calls: int = 0
    params: int = 0
    nonzero_params: int = 0  # parameters that are not exactly zero (after any pruning mask)
    weight_bytes: int = 0
    macs: int = 0
    other_ops: int = 0
    input_bytes: int = 0  # activation bytes read by the layer's operators
    output_bytes: int = 0  # activation bytes written by them
    output_shape: tuple[int, ...] | None = None
    dtype: str = "fp32"  # the arithmetic the layer's MACs use
    depthwise_macs: int = 0  # the part of ``macs`` in depthwise convolutions (they run far below a CPU's GEMM peak)

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """MACs per byte moved (weights read + activations read and written)."""
        return self.macs / self.bytes_moved if self.bytes_moved else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["output_shape"] = list(self.output_shape) if self.output_shape is not None else None
        d["bytes_moved"], d["arithmetic_intensity"] = self.bytes_moved, self.arithmetic_intensity
        return d


@dataclass(frozen=True)
class Profile:
    """Per-layer and total costs of one inference; ``str()`` is a table, ``to_dict()`` is JSON-ready."""

    model: str
    input_shapes: tuple[tuple[int, ...], ...]
    layers: tuple[LayerProfile, ...]
    params: int
    nonzero_params: int
    weight_bytes: int
    macs: int
    other_ops: int
    activation_bytes: int  # every activation byte written during the inference
    peak_activation_bytes: int  # most activation bytes alive at once (inputs included, weights excluded)
    source: str = "pytorch"
    warnings: tuple[str, ...] = ()
    cost: CostEstimate | None = field(default=None, compare=False)

    @property
    def bytes_moved(self) -> int:
        return sum(layer.bytes_moved for layer in self.layers)

    @property
    def arithmetic_intensity(self) -> float:
        return self.macs / self.bytes_moved if self.bytes_moved else 0.0

    @classmethod
    def from_layers(cls, model: str, input_shapes: tuple[tuple[int, ...], ...], layers: tuple[LayerProfile, ...],
                    peak_activation_bytes: int, source: str = "pytorch",
                    warnings: tuple[str, ...] = ()) -> Profile:  # fmt: skip
        """A profile whose totals are the sums over ``layers``."""
        return cls(
            model=model, input_shapes=input_shapes, layers=layers,
            params=sum(lp.params for lp in layers), nonzero_params=sum(lp.nonzero_params for lp in layers),
            weight_bytes=sum(lp.weight_bytes for lp in layers), macs=sum(lp.macs for lp in layers),
            other_ops=sum(lp.other_ops for lp in layers), activation_bytes=sum(lp.output_bytes for lp in layers),
            peak_activation_bytes=peak_activation_bytes, source=source, warnings=warnings,
        )  # fmt: skip

    def layer(self, name: str) -> LayerProfile:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(name)

    def with_device(self, device: str | DeviceProfile) -> Profile:
        """This profile with a roofline latency and energy estimate on ``device``."""
        from deepslim.analysis.cost import estimate_cost

        return replace(self, cost=estimate_cost(self, device))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "input_shapes": [list(s) for s in self.input_shapes],
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "weight_bytes": self.weight_bytes,
            "macs": self.macs,
            "other_ops": self.other_ops,
            "activation_bytes": self.activation_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "bytes_moved": self.bytes_moved,
            "arithmetic_intensity": self.arithmetic_intensity,
            "warnings": list(self.warnings),
            "layers": [lp.to_dict() for lp in self.layers],
            "cost": self.cost.to_dict() if self.cost is not None else None,
        }

    def __str__(self) -> str:
        from deepslim.analysis._format import format_profile

        return format_profile(self)


def module_weight_bytes(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Bytes of a module's own weights as stored; compressed modules report theirs via ``deepslim_weight_bytes()``."""
    custom = getattr(module, "deepslim_weight_bytes", None)
    if callable(custom):
        return int(custom())
    skip = module._non_persistent_buffers_set | _power_iteration_buffers(module)
    own_buffers = [b for n, b in module.named_buffers(recurse=False) if n not in skip]
    total = sum(t.numel() * t.element_size() for t in (*params, *own_buffers))
    for name, chain in getattr(module, "parametrizations", {}).items():
        # a parametrization that encodes its tensor (codebook + indices, ±α signs, …) reports the true storage
        reporter = next((p for p in chain if callable(getattr(p, "deepslim_storage_bytes", None))), None)
        if reporter is not None and chain.is_tensor:
            original = chain.original
            stored = original.numel() * original.element_size()
            total += reporter.deepslim_storage_bytes(original, getattr(module, name)) - stored
    return total


def _power_iteration_buffers(module: nn.Module) -> set[str]:
    """The u and v vectors of a hook-based ``spectral_norm``: training state, not part of the deployed weight."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]
    return {f"{h.name}{suffix}" for h in hooks for suffix in ("_u", "_v")}


def _logical_params(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Parameters as the layer computes with them: an encoded weight (codebook + indices) counts as its weights.

    A parametrization of several originals (``weight_norm``'s magnitude and direction) keeps them as the parameters:
    they are what is trained and stored, and the weight computed from them is counted once, as theirs.
    """
    chains = getattr(module, "parametrizations", None)
    if not chains:
        return sum(p.numel() for p in params)
    single = {n: chain for n, chain in chains.items() if chain.is_tensor}
    stored = {id(chain.original) for chain in single.values()}
    return sum(p.numel() for p in params if id(p) not in stored) + sum(getattr(module, n).numel() for n in single)


def _nonzeros(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Nonzero weights as the layer computes with them (masks applied); on the meta device, all of them."""
    tensors = list(params)
    chains = getattr(module, "parametrizations", None)
    if chains:
        single = {n for n, chain in chains.items() if chain.is_tensor}
        stored = {id(chains[n].original) for n in single}
        tensors = [getattr(module, n) for n in single] + [p for p in params if id(p) not in stored]
    if any(t.is_meta for t in tensors):
        return sum(t.numel() for t in tensors)
    return sum(int(torch.count_nonzero(t)) for t in tensors)


def profile(model: nn.Module | str | os.PathLike[str], example_input: Example | None = None, *,
            device: str | DeviceProfile | None = None, strict: bool = True, name: str | None = None,
            input_shape: tuple[int, ...] | None = None) -> Profile:  # fmt: skip
    """Profile one inference of ``model`` on ``example_input``.

    ``model`` may be a module, a zoo name or model file (see :func:`deepslim.load_model`), or an ``.onnx`` file.
    Zoo models supply their own example input. ``device`` adds a roofline latency and energy estimate.
    ``strict=False`` counts operators the profiler does not know as free (with a warning) instead of failing.
    """
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".onnx"):
        from deepslim.analysis.onnx_profile import profile_onnx

        result = profile_onnx(model, input_shape=input_shape, strict=strict)
        return result.with_device(device) if device is not None else result
    if not isinstance(model, nn.Module):
        from deepslim.models import load_model

        spec = os.fspath(model)
        model = load_model(spec)
        name = name or spec
    if example_input is None:  # made on the fake run's own terms: a fake input is never allocated
        example: Example | Callable[[], Example] = functools.partial(_default_example, model, input_shape)
    else:
        example = example_input
    result = _trace(model, example, strict=strict, name=name or type(model).__name__)
    return result.with_device(device) if device is not None else result


def _default_example(model: nn.Module, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    from deepslim.models import input_of_shape, recorded_example_input

    if input_shape is not None:
        return input_of_shape(model, input_shape)
    recorded = recorded_example_input(model)  # a file's recorded input shape, else the zoo entry's
    if recorded is None:
        raise ConfigError("example_input is required for a model that is not from the zoo and records no input "
                          "shape (CLI: --input-shape)")  # fmt: skip
    return recorded


@dataclass(frozen=True)
class _Layout:
    """Which layer owns which parameters, computed once before any run."""

    own_params: dict[str, list[torch.Tensor]]
    types: dict[str, str]

    @classmethod
    def of(cls, model: nn.Module) -> _Layout:
        owner: dict[int, str] = {}  # parameter id -> name of the first module holding it (shared weights count once)
        own_params: dict[str, list[torch.Tensor]] = {}
        types: dict[str, str] = {}
        for mod_name, mod in model.named_modules():
            layer = owner_name(mod_name)
            types.setdefault(layer, type(mod).__name__)
            own = [p for p in mod.parameters(recurse=False) if owner.setdefault(id(p), layer) == layer]
            own_params.setdefault(layer, []).extend(own)
        return cls(own_params, types)

    def tracer(self, model: nn.Module, budget_bytes: int | None = None) -> Tracer:
        tracer = Tracer({storage_key(t) for t in (*model.parameters(), *model.buffers())}, budget_bytes=budget_bytes)
        tracer.types = self.types
        tracer.int_layers = {name: m.act_bits for name, m in model.named_modules()
                             if getattr(m, "act_bits", None) is not None and hasattr(m, "weight_codes")}  # fmt: skip
        return tracer


def _trace(model: nn.Module, example: Example | Callable[[], Example], *, strict: bool, name: str,
           fake: bool = True) -> Profile:  # fmt: skip
    """Profile on fake tensors (shapes only, nothing computed); run for real only when the model needs values."""
    make = example if callable(example) else lambda: example
    layout = _Layout.of(model)
    on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    if not fake or on_meta or has_lazy_parameters(model):
        return _trace_real(model, make, layout, strict=strict, name=name)
    mode = fake_mode()
    tracer = layout.tracer(model)
    inputs: list[torch.Tensor] = []
    try:
        with fake_state_undone(model):
            with mode:
                fake_example = to_fake(mode, make())
            inputs = tensors(fake_example)
            output = run(model, fake_example, tracer, mode)
    except DeepSlimError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure on fake tensors is settled by a real run
        log.info("profile: %s needs real values (%s: %s); running it for real", name, type(exc).__name__, exc)
        need = tracer.held_bytes + sum(storage_bytes(t) for t in inputs if storage_key(t) not in tracer.held)
        return _trace_real(model, make, layout, strict=strict, name=name, need_bytes=need, fake_error=exc)
    return _finish(model, name, tracer, layout, inputs, output, strict=strict)


def _trace_real(model: nn.Module, make: Callable[[], Example], layout: _Layout, *, strict: bool, name: str,
                need_bytes: int = 0, fake_error: Exception | None = None) -> Profile:  # fmt: skip
    """A real run, refused or stopped when the tensors it holds would not fit in the memory that is free."""
    free = available_memory_bytes()
    usable = None if free is None else int(free * _USABLE_FRACTION)
    if free is not None and usable is not None and need_bytes > usable:
        raise InputShapeError(f"profiling {name} needs real values ({_first_line(fake_error)}), and running it needs "
                              f"at least {human(need_bytes, 'B')} while {human(free, 'B')} is free; "
                              "profile a smaller input shape (CLI: --input-shape)")  # fmt: skip
    example = make()
    inputs = tensors(example)
    tracer = layout.tracer(model, budget_bytes=usable)
    try:
        output = run(model, example, tracer)
    except OverBudget as exc:
        raise InputShapeError(f"profiling {name} on an input of shape {_shapes(inputs)} was stopped after it held "
                              f"{human(exc.held_bytes, 'B')} of tensors ({human(free or 0, 'B')} free); "
                              "profile a smaller input shape (CLI: --input-shape)") from None  # fmt: skip
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        raise InputShapeError(f"running {name} on an input of shape {_shapes(inputs)} failed: "
                              f"{_first_line(exc)}") from exc  # fmt: skip
    return _finish(model, name, tracer, layout, inputs, output, strict=strict)


def _finish(model: nn.Module, name: str, tracer: Tracer, layout: _Layout, inputs: list[torch.Tensor], output: Any,
            *, strict: bool) -> Profile:  # fmt: skip
    warnings = []
    if tracer.unknown:
        listed = ", ".join(f"{op} (in {layer or '(model)'})" for op, layer in tracer.unknown.items())
        if strict:
            raise UnsupportedOpError(f"cannot count operator {listed}; pass strict=False (CLI: --allow-unknown-ops) "
                                     "to count it as zero MACs")  # fmt: skip
        warnings.append(f"counted as zero MACs: {listed}")
        log.warning("profile: %s", warnings[-1])
    return _assemble(model, name, tracer, layout.own_params, inputs, output, tuple(warnings))


def _shapes(inputs: list[torch.Tensor]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)


def _first_line(exc: Exception | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


def _assemble(model: nn.Module, name: str, tracer: Tracer, own_params: dict[str, list[torch.Tensor]],
              inputs: list[torch.Tensor], output: Any, warnings: tuple[str, ...]) -> Profile:  # fmt: skip
    modules = dict(model.named_modules())
    layers = []
    names = list(tracer.rows) + [n for n in modules if n not in tracer.rows and owner_name(n) == n]
    for row_name in names:
        row = tracer.rows.get(row_name) or Row(row_name, type(modules[row_name]).__name__)
        params = own_params.get(row_name, [])
        wbytes = module_weight_bytes(modules[row_name], params) if row_name in modules else 0
        if not (row.macs or row.other_ops or row.output_bytes or params or wbytes):
            continue  # containers that only delegate to their children
        dtype = getattr(modules.get(row_name), "deepslim_compute_dtype", None) or row.dtype
        if dtype is None:
            dtype = dtype_label(params[0].dtype) if params else "fp32"
        layers.append(LayerProfile(
            name=row_name, type=row.type, calls=row.calls,
            params=_logical_params(modules[row_name], params) if row_name in modules else 0,
            nonzero_params=_nonzeros(modules[row_name], params) if row_name in modules else 0,
            weight_bytes=wbytes, macs=row.macs, other_ops=row.other_ops, input_bytes=row.input_bytes,
            output_bytes=row.output_bytes, output_shape=row.output_shape, dtype=dtype,
            depthwise_macs=row.depthwise_macs,
        ))  # fmt: skip
    in_sizes = {storage_key(t): storage_bytes(t) for t in inputs}
    out_keys = [storage_key(t) for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    return Profile.from_layers(name, tuple(tuple(t.shape) for t in inputs), tuple(layers),
                               peak_live_bytes(tracer.steps, in_sizes, out_keys), warnings=warnings)  # fmt: skip
