"""Layer kinds: how a layer holds its channels, so techniques can handle layers they have never seen by class.

Pruning, masks and factorization used to look layers up by exact class (``nn.Conv2d``, ``nn.Linear``), so a subclass,
Hugging Face's GPT-2 ``Conv1D`` (a linear layer whose weight is stored transposed, (in, out)) or a user's own layer
was invisible to them — magnitude pruning at 0.5 left GPT-2 12% sparse without a word. A :class:`LayerKind` says
where the output and input channels sit in the weight, which other tensors follow the output channels, which
attributes count them, where channels sit in the activations, and which ATen operators the layer appears as in a
captured graph. Kinds are matched through the class hierarchy (subclasses inherit their base's kind); a class can be
named by its dotted path so that optional libraries are not imported to describe them. Users add their own with
:func:`register_layer_kind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from deepslim.errors import ConfigError


class Role(Enum):
    PRODUCER = "producer"  # makes channels: convolutions, linear layers, embeddings (their columns)
    NORM = "norm"  # scales channels one by one: batch, layer and group norms


class Axis(Enum):
    """Where a layer's channels sit in its input and output activations."""

    FIRST = "first"  # dimension 1: (N, C, ...) — batch norm, group norm
    LAST = "last"  # the last dimension: linear layers, layer norm, embeddings
    CONV = "conv"  # dimension -(spatial dims + 1): convolutions, batched or not


@dataclass(frozen=True, kw_only=True)
class LayerKind:
    """How one class of layers holds its channels.

    ``out_dim``/``in_dim``: dimensions of ``weight`` that index output/input channels (``in_dim=None``: no input
    channels, as in an embedding table; for a norm ``out_dim`` is 0 of its 1-D per-channel weight). ``per_channel``:
    other tensors (parameters or buffers) indexed by output channel along dimension 0. ``out_attr``/``in_attr``:
    attributes that count them (updated by surgery; a tuple-valued one such as ``normalized_shape`` stays a tuple).
    ``ops``: ATen operator names the layer appears as in a ``torch.export`` graph, ``input_arg`` the position of the
    activation among their arguments.
    """

    name: str
    role: Role = Role.PRODUCER
    out_dim: int = 0
    in_dim: int | None = 1
    axis: Axis = Axis.LAST
    per_channel: tuple[str, ...] = ("bias",)
    out_attr: str | None = None
    in_attr: str | None = None
    ops: frozenset[str] = frozenset()
    input_arg: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", frozenset(self.ops))
        object.__setattr__(self, "per_channel", tuple(self.per_channel))
        if self.in_dim is not None and self.in_dim == self.out_dim:
            raise ConfigError(f"layer kind {self.name!r}: in_dim and out_dim must differ")

    def channel_dim(self, m: nn.Module, ndim: int) -> int:
        """The dimension of an ``ndim``-D activation that holds this layer's channels."""
        if self.axis is Axis.FIRST:
            return 1 if ndim > 1 else 0
        if self.axis is Axis.CONV:
            return ndim - (m.weight.ndim - 1)
        return ndim - 1


_CONV = dict(axis=Axis.CONV, out_attr="out_channels", in_attr="in_channels")
LINEAR = LayerKind(name="linear", out_attr="out_features", in_attr="in_features", ops={"linear"})
CONV1D_HF = LayerKind(name="transposed linear (HF Conv1D)", out_dim=1, in_dim=0, out_attr="nf", in_attr="nx",
                      ops={"addmm"}, input_arg=1)  # fmt: skip
EMBEDDING = LayerKind(name="embedding", out_dim=1, in_dim=None, per_channel=(), out_attr="embedding_dim",
                      ops={"embedding"}, input_arg=1)  # fmt: skip
_NORM = dict(role=Role.NORM, in_dim=None, per_channel=("bias", "running_mean", "running_var"))

# most specific first; a class matches the first entry that is one of its bases (or names one of them)
_KINDS: list[tuple[type | str, LayerKind]] = [
    (nn.Conv1d, LayerKind(name="conv1d", ops={"conv1d", "convolution"}, **_CONV)),
    (nn.Conv2d, LayerKind(name="conv2d", ops={"conv2d", "convolution"}, **_CONV)),
    (nn.Conv3d, LayerKind(name="conv3d", ops={"conv3d", "convolution"}, **_CONV)),
    (nn.Linear, LINEAR),
    ("transformers.pytorch_utils.Conv1D", CONV1D_HF),
    (nn.Embedding, EMBEDDING),
    (nn.modules.batchnorm._BatchNorm, LayerKind(name="batch norm", axis=Axis.FIRST, out_attr="num_features",
                                                ops={"batch_norm", "_native_batch_norm_legit_no_training"},
                                                **_NORM)),  # fmt: skip
    (nn.LayerNorm, LayerKind(name="layer norm", out_attr="normalized_shape", ops={"layer_norm"}, **_NORM)),
    (nn.RMSNorm, LayerKind(name="RMS norm", out_attr="normalized_shape", ops={"rms_norm"}, **_NORM)),
    (nn.GroupNorm, LayerKind(name="group norm", axis=Axis.FIRST, out_attr="num_channels", ops={"group_norm"},
                             **_NORM)),  # fmt: skip
]
_USER: list[tuple[type | str, LayerKind]] = []


def register_layer_kind(cls: type | str, kind: LayerKind) -> None:
    """Describe a layer class (or its dotted path, ``"pkg.module.Class"``) to pruning, masks and factorization.

    Registered kinds take precedence over the built-in ones, later registrations over earlier ones. Example: a layer
    storing its weight as (in, out) — ``register_layer_kind(MyDense, LayerKind(name="dense", out_dim=1, in_dim=0,
    out_attr="units", in_attr="fan_in", ops={"matmul"}))``.
    """
    if not isinstance(kind, LayerKind):
        raise ConfigError(f"register_layer_kind needs a LayerKind, got {type(kind).__name__}")
    if not isinstance(cls, (type, str)):
        raise ConfigError(f"register_layer_kind needs a class or its dotted path, got {cls!r}")
    _USER.insert(0, (cls, kind))


def unregister_layer_kind(cls: type | str) -> None:
    """Forget a kind registered with :func:`register_layer_kind`."""
    _USER[:] = [(c, k) for c, k in _USER if c != cls]


def layer_kind(m: nn.Module) -> LayerKind | None:
    """The kind of ``m``: the first registered entry (user entries first) that its class or a base matches."""
    paths = {f"{c.__module__}.{c.__qualname__}" for c in type(m).__mro__}
    for cls, kind in (*_USER, *_KINDS):
        if (isinstance(cls, str) and cls in paths) or (isinstance(cls, type) and isinstance(m, cls)):
            return kind
    return None


def is_user_kind(m: nn.Module) -> bool:
    paths = {f"{c.__module__}.{c.__qualname__}" for c in type(m).__mro__}
    return any((isinstance(c, str) and c in paths) or (isinstance(c, type) and isinstance(m, c)) for c, _ in _USER)


def weight_layers(model: nn.Module) -> dict[str, tuple[nn.Module, LayerKind]]:
    """Layers with a weight matrix that maps input to output channels (convolutions, linear-like), by name."""
    found = {}
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind is not None and kind.role is Role.PRODUCER and kind.in_dim is not None:
            found[name] = (m, kind)
    return found


def weight_parametrizations(m: nn.Module, ignore: tuple[type, ...] = ()) -> list[str]:
    """Names of the parametrizations or weight hooks that compute ``m.weight`` (weight_norm, spectral_norm, …)."""
    found = []
    plist = getattr(m, "parametrizations", None)
    if plist is not None and "weight" in plist:
        found += [type(p).__name__ for p in plist["weight"] if not isinstance(p, ignore)]
    for hook in getattr(m, "_forward_pre_hooks", {}).values():  # the old torch.nn.utils.weight_norm / spectral_norm
        if type(hook).__name__ in ("WeightNorm", "SpectralNorm"):
            found.append(type(hook).__name__)
    return found
