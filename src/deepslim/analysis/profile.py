"""Operator-level profiling of a PyTorch model: parameters, MACs, bytes and activation memory, per layer.

The model runs once on an example input under a ``TorchDispatchMode`` that sees every ATen operator — so functional
calls, attention products, depthwise and grouped convolutions and any module layout are counted — while module hooks
say which layer is running. Each operator is charged to the innermost module active when it ran. Counting
conventions are in :mod:`deepslim.analysis._ops`. Models on the ``meta`` device profile without computing anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deepslim._modes import inference_mode
from deepslim.analysis._liveness import Step, peak_live_bytes
from deepslim.analysis._ops import MAC_HANDLERS, OpKind, classify, is_depthwise, op_name
from deepslim.errors import ConfigError, InputShapeError, UnsupportedOpError

if TYPE_CHECKING:
    from deepslim.analysis.cost import CostEstimate
    from deepslim.analysis.devices import DeviceProfile

log = logging.getLogger(__name__)

_DTYPE_LABELS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int8: "int8", torch.uint8: "int8", torch.int32: "int32", torch.int64: "int64"}  # fmt: skip
Example = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


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


def dtype_label(dtype: torch.dtype) -> str:
    return _DTYPE_LABELS.get(dtype, str(dtype).removeprefix("torch."))


def module_weight_bytes(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Bytes of a module's own weights as stored; compressed modules report theirs via ``deepslim_weight_bytes()``."""
    custom = getattr(module, "deepslim_weight_bytes", None)
    if callable(custom):
        return int(custom())
    own_buffers = [b for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
    total = sum(t.numel() * t.element_size() for t in (*params, *own_buffers))
    for name, chain in getattr(module, "parametrizations", {}).items():
        # a parametrization that encodes its tensor (codebook + indices, ±α signs, …) reports the true storage
        reporter = next((p for p in chain if callable(getattr(p, "deepslim_storage_bytes", None))), None)
        if reporter is not None:
            original = chain.original
            stored = original.numel() * original.element_size()
            total += reporter.deepslim_storage_bytes(original, getattr(module, name)) - stored
    return total


def owner_name(name: str) -> str:
    """The layer a module belongs to: a parametrization (e.g. a pruning mask) belongs to the layer it modifies."""
    return name.split(".parametrizations.")[0] if ".parametrizations." in name else name


def _logical_params(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Parameters as the layer computes with them: an encoded weight (codebook + indices) counts as its weights."""
    chains = getattr(module, "parametrizations", None)
    if not chains:
        return sum(p.numel() for p in params)
    stored = {id(chain.original) for chain in chains.values()}
    return sum(p.numel() for p in params if id(p) not in stored) + sum(getattr(module, n).numel() for n in chains)


def _nonzeros(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Nonzero weights as the layer computes with them (masks applied); on the meta device, all of them."""
    tensors = list(params)
    if hasattr(module, "parametrizations"):
        tensors = [getattr(module, name) for name in module.parametrizations] + [
            p for n, p in module.named_parameters(recurse=False)]  # fmt: skip
    if any(t.is_meta for t in tensors):
        return sum(t.numel() for t in tensors)
    return sum(int(torch.count_nonzero(t)) for t in tensors)


def _storage_key(t: torch.Tensor) -> Hashable:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return ("tensor", id(t))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Row:
    __slots__ = ("name", "type", "calls", "macs", "other_ops", "input_bytes", "output_bytes", "output_shape", "dtype",
                 "depthwise_macs")

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.macs = self.other_ops = self.input_bytes = self.output_bytes = self.depthwise_macs = 0
        self.output_shape: tuple[int, ...] | None = None
        self.dtype: str | None = None


class _Tracer(TorchDispatchMode):
    def __init__(self, weight_keys: set[Hashable]):
        super().__init__()
        self.weight_keys = weight_keys
        self.stack: list[str] = [""]
        self.rows: dict[str, _Row] = {}
        self.types: dict[str, str] = {}
        self.steps: list[Step] = []
        self.keep: list[torch.Tensor] = []  # holds every tensor so storage keys stay unique for the whole run
        self.unknown: dict[str, str] = {}  # op -> first layer it appeared in
        self.decoding = 0  # > 0 while a parametrization computes a weight
        self.activations: set[Hashable] = set()  # storage of the inputs and of every counted op's outputs
        self.int_layers: dict[str, int] = {}  # layer -> activation bits, for integer (quantized) layers
        self.elem_bytes: dict[Hashable, float] = {}  # bytes per element of activations held as integer codes

    def row(self, name: str) -> _Row:
        if name not in self.rows:
            self.rows[name] = _Row(name, self.types.get(name, "?"))
        return self.rows[name]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if self.decoding or (tensors_in and not any(_storage_key(t) in self.activations for t in tensors_in)):
            # weight preparation: a parametrization decoding a weight (mask, codebook lookup), or an op that reads
            # no activation (a quantized layer fake-quantizing its float weight). A deployed model stores the
            # result, so it is a weight, and its computation is not inference work.
            decoded = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.keep += decoded
            self.weight_keys.update(_storage_key(t) for t in decoded)
            return out
        kind = classify(func)
        row = self.row(self.stack[-1])
        if kind is None:
            self.unknown.setdefault(op_name(func), row.name)
            kind = OpKind.MOVE
        if kind is OpKind.FREE:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.keep += ins + outs
        act_in = [t for t in ins if _storage_key(t) not in self.weight_keys]
        # integer layers: activations travel as act_bits codes; their quantize ops fuse into the kernel, and
        # element-wise ops on integer activations (ReLU, pooling, additions) stay integer in the runtime
        int_bits = self.int_layers.get(row.name)
        if int_bits is not None and kind is not OpKind.MAC:
            for t in outs:
                self.activations.add(_storage_key(t))
                self.elem_bytes[_storage_key(t)] = int_bits / 8
            return out
        out_elem = None
        if int_bits is not None:
            out_elem = int_bits / 8
        elif act_in and all(_storage_key(t) in self.elem_bytes for t in act_in) and kind is not OpKind.MAC:
            out_elem = max(self.elem_bytes[_storage_key(t)] for t in act_in)
        step = Step()
        for t in act_in:
            key = _storage_key(t)
            step.reads.add(key)
            elem = int_bits / 8 if int_bits is not None else self.elem_bytes.get(key, t.element_size())
            row.input_bytes += min(int(t.numel() * elem), t.untyped_storage().nbytes())
        for t in outs:
            key = _storage_key(t)
            self.activations.add(key)
            if out_elem is not None:
                self.elem_bytes[key] = out_elem
            size = int(t.numel() * out_elem) if out_elem is not None else _nbytes(t)
            step.writes.setdefault(key, size if out_elem is not None else t.untyped_storage().nbytes())
            row.output_bytes += size
        self.steps.append(step)
        if kind is OpKind.MAC:
            macs = MAC_HANDLERS[func.overloadpacket](args, out)
            row.macs += macs
            if is_depthwise(func, args):
                row.depthwise_macs += macs
            row.dtype = row.dtype or dtype_label(ins[0].dtype)
        elif kind is OpKind.ARITH:
            row.other_ops += max([t.numel() for t in ins] + [t.numel() for t in outs] + [0])
        return out


def _decoding(tracer: _Tracer, step: int) -> None:
    tracer.decoding += step


def _as_call(example: Example) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    raise ConfigError(f"example_input must be a tensor, a tuple of tensors or a dict, not {type(example).__name__}")


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
    if example_input is None:
        example_input = _default_example(model, input_shape)
    result = _trace(model, example_input, strict=strict, name=name or type(model).__name__)
    return result.with_device(device) if device is not None else result


def _default_example(model: nn.Module, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    from deepslim.models._registry import ARCH_ATTR, example_input, get_model_entry

    arch = getattr(model, ARCH_ATTR, None)
    if input_shape is not None:
        if arch is not None and get_model_entry(arch["name"]).task == "text":
            vocab = get_model_entry(arch["name"]).resolve(arch["options"]).get("vocab_size", 2)
            return torch.randint(0, vocab, tuple(input_shape))
        return torch.randn(*input_shape)
    if arch is None:
        raise ConfigError("example_input is required for a model that is not from the zoo (CLI: --input-shape)")
    return example_input(arch["name"], **arch["options"])


def _trace(model: nn.Module, example: Example, *, strict: bool, name: str) -> Profile:
    args, kwargs = _as_call(example)
    inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    owner: dict[int, str] = {}  # parameter id -> name of the first module holding it (shared weights count once)
    own_params: dict[str, list[torch.Tensor]] = {}
    types: dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        layer = owner_name(mod_name)
        types.setdefault(layer, type(mod).__name__)
        own = [p for p in mod.parameters(recurse=False) if owner.setdefault(id(p), layer) == layer]
        own_params.setdefault(layer, []).extend(own)
    weight_keys = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    tracer = _Tracer(weight_keys)
    tracer.types = types
    tracer.activations.update(_storage_key(t) for t in inputs)
    tracer.int_layers = {name: m.act_bits for name, m in model.named_modules()
                         if getattr(m, "act_bits", None) is not None and hasattr(m, "weight_codes")}  # fmt: skip
    handles = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, parametrize.ParametrizationList):
            # deployment stores the decoded weight (or decodes it once): its computation is not inference work
            handles.append(mod.register_forward_pre_hook(lambda m, a: _decoding(tracer, 1)))
            handles.append(mod.register_forward_hook(lambda m, a, o: _decoding(tracer, -1)))
        if owner_name(mod_name) != mod_name:
            continue  # a parametrization's operators belong to its layer
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=mod_name: _enter(tracer, n)))
        handles.append(mod.register_forward_hook(lambda m, a, o, n=mod_name: _leave(tracer, n, o)))
    try:
        with inference_mode(model), torch.no_grad(), tracer:
            output = model(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputShapeError(f"running {name} on an input of shape {shapes} failed: {first}") from exc
    finally:
        for h in handles:
            h.remove()
    warnings = []
    if tracer.unknown:
        listed = ", ".join(f"{op} (in {layer or '(model)'})" for op, layer in tracer.unknown.items())
        if strict:
            raise UnsupportedOpError(f"cannot count operator {listed}; pass strict=False (CLI: --allow-unknown-ops) "
                                     "to count it as zero MACs")  # fmt: skip
        warnings.append(f"counted as zero MACs: {listed}")
        log.warning("profile: %s", warnings[-1])
    return _assemble(model, name, tracer, own_params, inputs, output, tuple(warnings))


def _enter(tracer: _Tracer, name: str) -> None:
    tracer.stack.append(name)
    tracer.row(name).calls += 1


def _leave(tracer: _Tracer, name: str, output: Any) -> None:
    tracer.stack.pop()
    row = tracer.row(name)
    if row.output_shape is None:
        first = next((t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)), None)
        row.output_shape = tuple(first.shape) if first is not None else None


def _assemble(model: nn.Module, name: str, tracer: _Tracer, own_params: dict[str, list[torch.Tensor]],
              inputs: list[torch.Tensor], output: Any, warnings: tuple[str, ...]) -> Profile:  # fmt: skip
    modules = dict(model.named_modules())
    layers = []
    names = list(tracer.rows) + [n for n in modules if n not in tracer.rows and owner_name(n) == n]
    for row_name in names:
        row = tracer.rows.get(row_name) or _Row(row_name, type(modules[row_name]).__name__)
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
    in_sizes = {_storage_key(t): t.untyped_storage().nbytes() for t in inputs}
    out_keys = [_storage_key(t) for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    return Profile.from_layers(name, tuple(tuple(t.shape) for t in inputs), tuple(layers),
                               peak_live_bytes(tracer.steps, in_sizes, out_keys), warnings=warnings)  # fmt: skip
