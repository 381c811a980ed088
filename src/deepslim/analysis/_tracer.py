"""The dispatch-mode tracer behind :func:`deepslim.analysis.profile`: it sees every ATen operator of one inference.

Each operator is charged to the innermost module active when it ran (the profiler's module hooks keep ``stack``);
reads and writes of activation buffers are recorded as liveness steps. The tracer holds every tensor it saw until the
run ends, so that storage identities stay unique; on a real run that costs the sum of all activations written, which
is why it can stop the run once a memory budget is spent (``budget_bytes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.analysis._liveness import Step
from deepslim.analysis._ops import MAC_HANDLERS, OpKind, classify, is_depthwise, op_name
from deepslim.errors import ConfigError

_DTYPE_LABELS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int8: "int8", torch.uint8: "int8", torch.int32: "int32", torch.int64: "int64"}  # fmt: skip


class OverBudget(Exception):  # noqa: N818 - a signal between the tracer and the profiler, never shown to users
    """A real run held more tensor bytes than the memory budget allowed; the run was stopped."""

    def __init__(self, held_bytes: int):
        super().__init__(held_bytes)
        self.held_bytes = held_bytes


Example = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def dtype_label(dtype: torch.dtype) -> str:
    return _DTYPE_LABELS.get(dtype, str(dtype).removeprefix("torch."))


def storage_key(t: torch.Tensor) -> Hashable:
    """Identity of the memory a tensor lives in (views share it); unique while the tracer holds the tensor."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return ("tensor", id(t))


def storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def tensors(tree: object) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class Row:
    """Running totals of one layer while the model runs."""

    __slots__ = ("name", "type", "calls", "macs", "other_ops", "input_bytes", "output_bytes", "output_shape", "dtype",
                 "depthwise_macs")  # fmt: skip

    def __init__(self, name: str, type_: str):
        self.name, self.type = name, type_
        self.calls = self.macs = self.other_ops = self.input_bytes = self.output_bytes = self.depthwise_macs = 0
        self.output_shape: tuple[int, ...] | None = None
        self.dtype: str | None = None


class Tracer(TorchDispatchMode):
    """Counts every ATen operator that reaches it, charged to ``stack[-1]`` (the innermost running layer)."""

    def __init__(self, weight_keys: set[Hashable], *, budget_bytes: int | None = None):
        super().__init__()
        self.weight_keys = weight_keys
        self.stack: list[str] = [""]
        self.rows: dict[str, Row] = {}
        self.types: dict[str, str] = {}
        self.steps: list[Step] = []
        self.keep: list[torch.Tensor] = []  # holds every tensor so storage keys stay unique for the whole run
        self.held: set[Hashable] = set(weight_keys)  # storages in ``keep``; the model's own are resident already
        self.held_bytes = 0
        self.budget_bytes = budget_bytes  # stop a real run whose held tensors pass this (None: no limit)
        self.unknown: dict[str, str] = {}  # op -> first layer it appeared in
        self.decoding = 0  # > 0 while a parametrization computes a weight
        self.activations: set[Hashable] = set()  # storage of the inputs and of every counted op's outputs
        self.int_layers: dict[str, int] = {}  # layer -> activation bits, for integer (quantized) layers
        self.elem_bytes: dict[Hashable, float] = {}  # bytes per element of activations held as integer codes

    def row(self, name: str) -> Row:
        if name not in self.rows:
            self.rows[name] = Row(name, self.types.get(name, "?"))
        return self.rows[name]

    def hold(self, tensors: list[torch.Tensor]) -> None:
        """Keep ``tensors`` alive to the end of the run, within the memory budget."""
        self.keep += tensors
        for t in tensors:
            key = storage_key(t)
            if key not in self.held:
                self.held.add(key)
                self.held_bytes += 0 if t.device.type == "meta" else storage_bytes(t)
        if self.budget_bytes is not None and self.held_bytes > self.budget_bytes:
            raise OverBudget(self.held_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins, outs = tensors((args, kwargs)), tensors(out)
        if self.decoding or (ins and not any(storage_key(t) in self.activations for t in ins)):
            # weight preparation: a parametrization decoding a weight (mask, codebook lookup, weight norm), or an op
            # that reads no activation (a quantized layer fake-quantizing its float weight). A deployed model stores
            # the result, so it is a weight, and its computation is not inference work.
            self.hold(outs)
            self.weight_keys.update(storage_key(t) for t in outs)
            return out
        kind = classify(func)
        row = self.row(self.stack[-1])
        if kind is None:
            self.unknown.setdefault(op_name(func), row.name)
            kind = OpKind.MOVE
        if kind is OpKind.FREE:
            return out
        self.hold(ins + outs)
        act_in = [t for t in ins if storage_key(t) not in self.weight_keys]
        # integer layers: activations travel as act_bits codes; their quantize ops fuse into the kernel, and
        # element-wise ops on integer activations (ReLU, pooling, additions) stay integer in the runtime
        int_bits = self.int_layers.get(row.name)
        if int_bits is not None and kind is not OpKind.MAC:
            for t in outs:
                self.activations.add(storage_key(t))
                self.elem_bytes[storage_key(t)] = int_bits / 8
            return out
        self._record_step(row, kind, act_in, outs, int_bits)
        if kind is OpKind.MAC:
            macs = MAC_HANDLERS[func.overloadpacket](args, out)
            row.macs += macs
            if is_depthwise(func, args):
                row.depthwise_macs += macs
            row.dtype = row.dtype or dtype_label(ins[0].dtype)
        elif kind is OpKind.ARITH:
            row.other_ops += max([t.numel() for t in ins] + [t.numel() for t in outs] + [0])
        return out

    def _record_step(self, row: Row, kind: OpKind, act_in: list[torch.Tensor], outs: list[torch.Tensor],
                     int_bits: int | None) -> None:  # fmt: skip
        """One liveness step: the activations an operator reads and writes, at their stored width."""
        out_elem = None
        if int_bits is not None:
            out_elem = int_bits / 8
        elif act_in and all(storage_key(t) in self.elem_bytes for t in act_in) and kind is not OpKind.MAC:
            out_elem = max(self.elem_bytes[storage_key(t)] for t in act_in)
        step = Step()
        for t in act_in:
            key = storage_key(t)
            step.reads.add(key)
            elem = int_bits / 8 if int_bits is not None else self.elem_bytes.get(key, t.element_size())
            row.input_bytes += min(int(t.numel() * elem), storage_bytes(t))
        for t in outs:
            key = storage_key(t)
            self.activations.add(key)
            if out_elem is not None:
                self.elem_bytes[key] = out_elem
            size = int(t.numel() * out_elem) if out_elem is not None else t.numel() * t.element_size()
            step.writes.setdefault(key, size if out_elem is not None else storage_bytes(t))
            row.output_bytes += size
        self.steps.append(step)


def owner_name(name: str) -> str:
    """The layer a module belongs to: a parametrization (e.g. a pruning mask) belongs to the layer it modifies."""
    return name.split(".parametrizations.")[0] if ".parametrizations." in name else name


def run(model: nn.Module, example: Example, tracer: Tracer, mode: FakeTensorMode | None = None) -> Any:
    """One forward of ``model`` under ``tracer`` (and a fake-tensor ``mode``), with hooks naming the running layer."""
    args, kwargs = _as_call(example)
    tracer.activations.update(storage_key(t) for t in tensors((args, kwargs)))
    modules = list(model.named_modules())
    # deployment stores the decoded weight (or decodes it once): its computation is not inference work
    decoders = [(n, m) for n, m in modules if isinstance(m, parametrize.ParametrizationList)]
    decoding = hooked(decoders, pre=lambda _: lambda m, a: _decoding(tracer, 1),
                      forward=lambda _: lambda m, a, o: _decoding(tracer, -1))  # fmt: skip
    owners = [(n, m) for n, m in modules if owner_name(n) == n]  # a parametrization's operators belong to its layer
    naming = hooked(owners, pre=lambda n: lambda m, a: _enter(tracer, n),
                    forward=lambda n: lambda m, a, o: _leave(tracer, n, o))  # fmt: skip
    with decoding, naming, inference_mode(model), torch.no_grad(), mode or contextlib.nullcontext(), tracer:
        return model(*args, **kwargs)


def _as_call(example: Example) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    raise ConfigError(f"example_input must be a tensor, a tuple of tensors or a dict, not {type(example).__name__}")


def _decoding(tracer: Tracer, step: int) -> None:
    tracer.decoding += step


def _enter(tracer: Tracer, name: str) -> None:
    tracer.stack.append(name)
    tracer.row(name).calls += 1


def _leave(tracer: Tracer, name: str, output: Any) -> None:
    tracer.stack.pop()
    row = tracer.row(name)
    if row.output_shape is None:
        first = next((t for t in tensors(output) if not t.is_nested), None)  # nested tensors have no one shape
        row.output_shape = tuple(first.shape) if first is not None else None
