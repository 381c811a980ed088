"""One forward of a model, with gradients on, under a dispatch mode that applies the saved-for-backward rules.

The planner (:class:`SavedTracer`) decides per ATen operator what autograd keeps, from which of its inputs require a
gradient (:mod:`deepslim.analysis._training_rules`); modules that carry their own autograd function (the
memory-efficient modules of :mod:`deepslim.train.ondevice`) declare theirs with ``saved_for_backward``. The oracle
(:func:`oracle_saved_bytes`) instead counts what autograd really packs, through
``torch.autograd.graph.saved_tensors_hooks``. Both count unique storages and leave out the model's own parameters and
buffers, which are resident anyway.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

from deepslim._hooks import hooked
from deepslim.analysis._tracer import Example, _as_call, owner_name, storage_bytes, storage_key, tensors
from deepslim.analysis._training_peak import OpRecord, activation_peak
from deepslim.analysis._training_rules import saved_by
from deepslim.errors import ConfigError

Trainable = str | Callable[[str, nn.Parameter], bool] | set[str] | frozenset[str]


_CONVOLUTIONS = (torch.ops.aten.convolution, torch.ops.aten._convolution)


class SavedTracer(TorchDispatchMode):
    """Applies the saved-for-backward rules to every operator of a forward; charges each storage to its layer."""

    def __init__(self, resident: set[Hashable]):
        super().__init__()
        self.resident = resident
        self.stack: list[str] = [""]
        self.saved: dict[Hashable, tuple[str, int]] = {}  # storage -> (layer that saved it first, bytes)
        self.saved_total = 0
        self.keep: list[torch.Tensor] = []  # keeps storage keys unique for the whole run
        self.unknown: dict[str, str] = {}  # operator -> first layer it ran in, for operators without a rule
        self.efficient: dict[str, int] = {}  # layer -> bytes its own autograd function declared
        self.ops: list[OpRecord] = []  # per operator, for the peak
        self.inputs: dict[Hashable, int] = {}  # storages of the input batch (held by the caller throughout)
        # private saved buffers (packed masks, copies), by the operator they appear at: kept to the end of the forward
        self.private: list[tuple[int, int]] = []
        self.saved_held = 0  # saved bytes that are not the input batch's
        self.custom = 0  # > 0 while an efficient module's own autograd function runs
        self.own: list[bool] = []  # per running module: whether it declares what it keeps
        self.conv_seen: list[Any] | None = None  # the arguments of the operator being recorded, if a convolution
        # backward records of modules that recompute their forward in backward (checkpointing), sized afterwards
        self.deferred: list[tuple[OpRecord, nn.Module, list[tuple[torch.Size, torch.dtype, bool]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = _fake_batch_norm(func, args) or func(*args, **kwargs)
        self.conv_seen = _positional(func, args, kwargs) if func.overloadpacket in _CONVOLUTIONS else None
        ins, outs = tensors((args, kwargs)), tensors(out)
        self.keep += ins + outs
        if not outs:
            return out  # a query (``prim.device``, sizes): nothing computed, nothing kept
        needs = torch.is_grad_enabled() and any(t.requires_grad for t in ins)
        if self.custom or not needs:
            self._step(ins, outs, needs)
            return out
        name = func.overloadpacket.__name__
        saved, known = saved_by(name, _positional(func, args, kwargs), outs)
        if not known:
            self.unknown.setdefault(name, self.stack[-1])
        for t in saved:
            self.record(t)
        self._step(ins, outs, needs)
        return out

    def record(self, t: torch.Tensor | int) -> None:
        """Count a saved tensor once per storage (an ``int`` is a private buffer of that many bytes)."""
        if isinstance(t, int):
            self.saved[("private", len(self.saved))] = (self.stack[-1], t)
            self.private.append((len(self.ops) + 1, t))  # alive from the operator being recorded (or the next one)
            self.saved_total += t
            self.saved_held += t
            return
        key = storage_key(t)
        if key not in self.resident and key not in self.saved and storage_bytes(t):
            self.keep.append(t)
            self.saved[key] = (self.stack[-1], storage_bytes(t))
            self.saved_total += storage_bytes(t)
            self.saved_held += 0 if key in self.inputs else storage_bytes(t)

    def _step(self, ins: list[torch.Tensor], outs: list[torch.Tensor], needs: bool) -> None:
        op = OpRecord(saved_so_far=self.saved_held)
        for t in ins:
            key = storage_key(t)
            if key not in self.resident:
                op.reads.add(key)
                op.grad_bytes += t.numel() * t.element_size() if needs and t.requires_grad else 0
            elif t.requires_grad:
                canonical = getattr(self.resident, "key_of", None)
                op.params[canonical(key) if canonical else key] = storage_bytes(t)
        for t in outs:
            key = storage_key(t)
            if key not in self.resident:
                op.writes.setdefault(key, storage_bytes(t))
                op.grad_bytes += t.numel() * t.element_size() if needs and t.is_floating_point() else 0
        if self.conv_seen is not None:  # oneDNN computes in a channel-blocked layout (16 to a block): see below
            op.workspace = _conv_forward_scratch(self.conv_seen, ins, outs)
            op.backward_workspace = _conv_backward_scratch(self.conv_seen, ins, outs[0]) if needs else 0
        self.ops.append(op)

    def peak(self, outputs: list[torch.Tensor]) -> tuple[int, int]:
        """(forward, backward) activation peaks of the traced forward (see :mod:`._training_peak`)."""
        seen: set[Hashable] = set()
        for op in reversed(self.ops):  # a parameter's gradient appears at its last use in the forward
            op.param_grad_bytes = sum(b for k, b in op.params.items() if k not in seen)
            seen.update(op.params)
        saved = {k for k in self.saved if k not in self.inputs}
        return activation_peak(self.ops, self.inputs, {storage_key(t) for t in outputs}, saved, self.private)


def _blocked_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` with its channel dimension (1) rounded up to a multiple of 16, as oneDNN's blocked layouts
    (tensors of fewer than 8 channels, such as images, stay plain)."""
    if t.dim() < 3 or t.shape[1] < 8:
        return storage_bytes(t)
    return t.numel() // t.shape[1] * (-(-t.shape[1] // 16) * 16) * t.element_size()


def _blocked_weight_bytes(w: torch.Tensor) -> int:
    """Bytes of a convolution weight in oneDNN's blocked layout: output and input channels (each, when 8 or more)
    rounded up to a multiple of 16."""
    dims = [(-(-d // 16) * 16 if d >= 8 else d) if i < 2 else d for i, d in enumerate(w.shape)]
    return math.prod(dims) * w.element_size()


def _uses_onednn(call: list[Any]) -> bool:
    """Whether torch runs this CPU float convolution with oneDNN (its ``ConvParams::use_mkldnn`` test): a 1×1,
    unstrided, undilated convolution of a batch under 16 on one thread goes to the native kernel instead."""
    x, w, stride, dilation, groups = call[0], call[1], call[3], call[5], call[8]
    if x.dtype != torch.float32 or x.dim() != 4 or w.dim() != 4 or not torch.backends.mkldnn.is_available():
        return False
    one_by_one = w.shape[-1] == 1 and w.shape[-2] == 1
    if not (any(s != 1 for s in stride) or any(d != 1 for d in dilation) or x.shape[0] >= 16 or not one_by_one
            or torch.get_num_threads() > 1):  # fmt: skip
        return False
    return groups > 1 or (w.shape[-1] > 3 and w.shape[-2] > 3) or x.shape[0] > 1 or x.numel() > 20480


def _conv_forward_scratch(call: list[Any], ins: list[torch.Tensor], outs: list[torch.Tensor]) -> int:
    """What a CPU convolution's forward allocates besides its output, at its worst (on top of the output's bytes).

    Measured in the allocation trace: oneDNN reorders the input (8 channels or more) and the weight into blocked
    copies, computes a blocked output, frees the two copies, then allocates the plain output and copies into it. The
    peak is the larger of (input copy + weight copy + blocked output) and (blocked output + plain output).
    """
    out = sum(storage_bytes(t) for t in outs)
    blocked_out = sum(_blocked_bytes(t) for t in outs)
    x, w = ins[0], ins[1] if len(ins) > 1 else None
    if w is None or not _uses_onednn(call):
        return blocked_out
    blocked_x = _blocked_bytes(x) if x.dim() > 1 and x.shape[1] >= 8 else 0  # a plain input (an image) is read as is
    return max(blocked_out, blocked_x + _blocked_weight_bytes(w) + blocked_out - out)


def input_grad_scratch(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, stride: Any, dilation: Any,
                       groups: int) -> int:  # fmt: skip
    """What the transposed convolution that makes a frozen convolution's input gradient allocates besides that
    gradient (``x``-sized), at its worst: as a forward convolution, oneDNN reorders the output gradient and the
    weight into blocked copies and computes a blocked input gradient before the plain one (the allocation trace);
    the native kernel needs one input-sized buffer."""
    if not _uses_onednn([grad, weight, None, _pair2(stride), None, _pair2(dilation), True, None, groups]):
        return storage_bytes(x)
    blocked_x = _blocked_bytes(x)
    scratch = (_blocked_bytes(grad) if grad.shape[1] >= 8 else storage_bytes(grad)) + _blocked_weight_bytes(weight)
    return max(blocked_x, scratch + blocked_x - x.numel() * x.element_size())


def _pair2(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_backward_scratch(call: list[Any], ins: list[torch.Tensor], out: torch.Tensor) -> int:
    """What a CPU (oneDNN) convolution's backward allocates besides the gradients it returns, at its worst.

    Measured in the allocation trace: the input gradient (if needed) comes from blocked copies of the output
    gradient and the weight into a blocked input gradient; the weight and bias gradients (if either is needed) from
    blocked copies of the output gradient, the input and the weight gradient (made even when only the bias trains:
    one primitive computes both; the unwanted one is dropped after the copies). The phases run one after the other.
    """
    x, w = ins[0], ins[1] if len(ins) > 1 else None
    if w is None or not _uses_onednn(call):  # the native kernels: an input-sized buffer for the input gradient
        return storage_bytes(x) if x.requires_grad else 0
    blocked_out, blocked_w = _blocked_bytes(out), _blocked_weight_bytes(w)
    blocked_x = _blocked_bytes(x) if x.dim() > 1 and x.shape[1] >= 8 else 0  # a plain input (an image) is read as is
    data = blocked_out + blocked_w + _blocked_bytes(x) if x.requires_grad else 0
    bias = ins[2] if len(ins) > 2 else None
    if not (w.requires_grad or (bias is not None and bias.requires_grad)):
        return data
    return max(data, blocked_out + blocked_x + blocked_w)  # the dropped weight gradient comes after them


def resolve_deferred(tracer: SavedTracer) -> None:
    """Add to each recomputing module's backward record what its recomputed forward and backward hold at their
    peak (``module.recompute_bytes(metas)``); run after the trace, outside its modes."""
    for record, module, metas in tracer.deferred:
        record.backward_workspace += getattr(module, "recompute_bytes")(metas)  # noqa: B009 (duck-typed)
    tracer.deferred.clear()


def _fake_batch_norm(func: Any, args: tuple[Any, ...]) -> tuple[torch.Tensor, ...] | None:
    """``native_batch_norm``'s outputs on fake tensors, made directly: its fake-tensor decomposition costs ~30 ms a
    call, most of a fake run's time. The statistics it would update in place are not needed (nor wanted) here."""
    if func is not torch.ops.aten.native_batch_norm.default or not isinstance(args[0], FakeTensor):
        return None
    x, training = args[0], args[5]
    stat_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    stats = x.shape[1] if training else 0
    return (torch.empty_like(x), x.new_empty(stats, dtype=stat_dtype), x.new_empty(stats, dtype=stat_dtype))


def _positional(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The operator's arguments in schema order (keyword arguments moved into place)."""
    full = list(args)
    for arg in func._schema.arguments[len(args):]:
        full.append(kwargs.get(arg.name))
    return full


def trace_saved(model: nn.Module, example: Example, tracer: SavedTracer, mode: Any = None) -> list[torch.Tensor]:
    """One training-mode forward of ``model`` with gradients enabled, under ``tracer`` (and a fake-tensor ``mode``)."""
    args, kwargs = _as_call(example)
    tracer.inputs = {storage_key(t): storage_bytes(t) for t in tensors((args, kwargs))}
    owners = [(n, m) for n, m in model.named_modules() if owner_name(n) == n]
    with (hooked(owners, pre=lambda n: lambda m, a: _enter(tracer, m, n, a),
                 forward=lambda n: lambda m, a, o: _leave(tracer, m, n, a, o)),
          torch.enable_grad(), mode or contextlib.nullcontext(), tracer):  # fmt: skip
        return tensors(model(*args, **kwargs))


def _enter(tracer: SavedTracer, module: nn.Module, name: str, inputs: tuple[Any, ...]) -> None:
    tracer.stack.append(name)
    own = hasattr(module, "saved_for_backward") and bool(getattr(module, "efficient_for")(inputs))  # noqa: B009
    tracer.own.append(own)
    tracer.custom += own


def _leave(tracer: SavedTracer, module: nn.Module, name: str, inputs: tuple[Any, ...], output: Any) -> None:
    if tracer.ops:  # the caller holds a module's inputs until it returns: they live at least to its last operator
        tracer.ops[-1].reads.update(k for t in tensors(inputs) if (k := storage_key(t)) not in tracer.resident)
    if tracer.own.pop():
        tracer.custom -= 1
        if torch.is_grad_enabled():
            declared = getattr(module, "saved_for_backward")(inputs, output)  # noqa: B009 (duck-typed)
            before = tracer.saved_total
            for t in declared:
                tracer.record(t)
            tracer.efficient[name] = tracer.efficient.get(name, 0) + tracer.saved_total - before
            record = _backward_record(tracer, module, inputs, output)
            tracer.ops.append(record)
            if hasattr(module, "recompute_bytes"):  # sized after the trace: it runs a trace of its own
                metas = [(t.shape, t.dtype, t.requires_grad) for t in tensors(inputs)]
                tracer.deferred.append((record, module, metas))
    tracer.stack.pop()


class Resident(set):
    """Storages of the model's parameters and buffers, and of their fake twins when a fake-tensor ``mode`` runs it.

    The mode memoizes each conversion while the twin lives, so the twin an operator sees is the one made here; the
    set holds the twins so that they (and their storage keys) stay alive.
    """

    def __init__(self, model: nn.Module, mode: Any = None):
        own = [*model.parameters(), *model.buffers()]
        self.twins = [mode.from_tensor(t) for t in own] if mode is not None else []
        super().__init__(storage_key(t) for t in (*own, *self.twins))
        # an operator may see a parameter itself (the tracer runs before the fake mode converts it) or its twin (the
        # output of an earlier view): both stand for one parameter, whose gradient is counted once
        twins = self.twins or own  # without a fake mode each tensor stands for itself
        self.canonical = {storage_key(twin): storage_key(t) for t, twin in zip(own, twins, strict=True)}

    def key_of(self, key: Hashable) -> Hashable:
        """The parameter's own storage key for a twin's key (any other key as is)."""
        return self.canonical.get(key, key)


def resident_keys(model: nn.Module, mode: Any = None) -> Resident:
    return Resident(model, mode)


def _backward_record(tracer: SavedTracer, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> OpRecord:
    """The backward of an efficient module's own function, which the forward trace cannot see: the gradients of its
    output and input, and the scratch it declares (``backward_workspace``)."""
    outs = tensors(output)
    ins = [t for t in tensors(inputs) if t.requires_grad]
    scratch = getattr(module, "backward_workspace", None)
    return OpRecord(saved_so_far=tracer.saved_held,
                    grad_bytes=sum(t.numel() * t.element_size() for t in (*outs, *ins) if t.requires_grad),
                    backward_workspace=scratch(inputs, output) if scratch and ins else 0)  # fmt: skip


def oracle_saved_bytes(model: nn.Module, example: Example, mode: Any = None) -> int:
    """Bytes autograd really keeps for backward in one forward: unique storages packed by ``saved_tensors_hooks``.

    Parameters and buffers are left out (resident anyway). Run it with the trainable set already applied (see
    :func:`trainable_applied`) and the model in the mode it trains in. With a fake-tensor ``mode`` it runs on fake
    tensors (``example`` must be fake already).
    """
    resident = resident_keys(model, mode)
    seen: dict[Hashable, int] = {}
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in resident and key not in seen:
            seen[key] = storage_bytes(t)
            keep.append(t)
        return t

    args, kwargs = _as_call(example)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.enable_grad(), mode or contextlib.nullcontext(), hooks:
        model(*args, **kwargs)
    return sum(seen.values())


def select_trainable(model: nn.Module, trainable: Trainable) -> set[str]:
    """Names of the parameters that ``trainable`` selects (see :func:`deepslim.analysis.training_profile`)."""
    named = dict(model.named_parameters())
    if callable(trainable):
        return {n for n, p in named.items() if trainable(n, p)}
    if isinstance(trainable, (set, frozenset)):
        missing = sorted(set(trainable) - set(named))
        if missing:
            raise ConfigError(f"trainable names unknown parameters {missing[:3]}; use model.named_parameters() names")
        return set(trainable)
    if not isinstance(trainable, str):
        raise ConfigError(f"trainable must be a name, a set of parameter names or a callable, not {trainable!r}")
    if trainable == "all":
        return set(named)
    if trainable == "none":
        return set()
    if trainable == "current":
        return {n for n, p in named.items() if p.requires_grad}
    if trainable == "bias":
        return {n for n in named if n.rsplit(".", 1)[-1] == "bias"}
    if trainable == "last":
        return {n for n in named if n.rsplit(".", 1)[0] == _layers_with_params(model)[-1]}
    if trainable.startswith("sparse:"):
        return _sparse(model, named, trainable.removeprefix("sparse:"))
    raise ConfigError(f"unknown trainable {trainable!r}; use all, bias, last, none, current, sparse:SPEC, a set or a "
                      "callable")


def _layers_with_params(model: nn.Module) -> list[str]:
    layers = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not layers:
        raise ConfigError("the model has no parameters to train")
    return layers


def _sparse(model: nn.Module, named: dict[str, nn.Parameter], spec: str) -> set[str]:
    """``sparse:`` items, comma-separated: ``bias`` (every bias), ``bias:K`` (biases of the last K layers),
    ``weight:K`` (every parameter of the last K layers), a layer name or ``re:REGEX`` (every parameter of the layers
    it matches)."""
    layers, chosen = _layers_with_params(model), set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, count = item.partition(":")
        if item == "bias" or (kind == "bias" and count.isdigit()):
            last = set(layers[-int(count):]) if count and int(count) else set(layers) if not count else set()
            chosen |= {n for n in named if n.endswith(".bias") and n.rsplit(".", 1)[0] in last}
        elif kind == "weight" and count.isdigit():
            last = set(layers[-int(count):]) if int(count) else set()
            chosen |= {n for n in named if n.rsplit(".", 1)[0] in last}
        else:
            pattern = re.compile(item[3:]) if item.startswith("re:") else None
            match = [n for n in layers if (pattern.fullmatch(n) if pattern else n == item)]
            if not match:
                raise ConfigError(f"sparse item {item!r} names no layer with parameters; layers: {layers[:4]}...")
            chosen |= {n for n in named if n.rsplit(".", 1)[0] in match}
    return chosen


@contextlib.contextmanager
def trainable_applied(model: nn.Module, names: set[str], *, train: bool = True) -> Iterator[None]:
    """``requires_grad`` set to ``names`` and the model in train mode for the block; both put back afterwards."""
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    modes = {m: m.training for m in model.modules()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        model.train(train)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        for m, mode in modes.items():
            m.training = mode


def rebatch(example: Example, batch_size: int | None) -> Example:
    """``example`` with every tensor's first dimension resized to ``batch_size`` (rows repeated); None: as is."""
    if batch_size is None:
        return example
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")

    def resize(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        return t[torch.arange(batch_size, device=t.device) % t.shape[0]]

    from torch.utils._pytree import tree_map

    return tree_map(resize, example)
