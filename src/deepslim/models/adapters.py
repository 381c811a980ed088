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

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
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
    ops: Iterable[str] = frozenset()
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
            weight = m.weight
            assert isinstance(weight, nn.Parameter | torch.Tensor)
            return ndim - (weight.ndim - 1)
        return ndim - 1


_CONV: dict[str, Any] = dict(axis=Axis.CONV, out_attr="out_channels", in_attr="in_channels")
LINEAR = LayerKind(name="linear", out_attr="out_features", in_attr="in_features", ops={"linear"})
CONV1D_HF = LayerKind(name="transposed linear (HF Conv1D)", out_dim=1, in_dim=0, out_attr="nf", in_attr="nx",
                      ops={"addmm"}, input_arg=1)  # fmt: skip
EMBEDDING = LayerKind(name="embedding", out_dim=1, in_dim=None, per_channel=(), out_attr="embedding_dim",
                      ops={"embedding"}, input_arg=1)  # fmt: skip
_NORM: dict[str, Any] = dict(role=Role.NORM, in_dim=None, per_channel=("bias", "running_mean", "running_var"))

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


# -- attention and feed-forward blocks -----------------------------------------------------------------------------
# Head pruning needs more than a layer kind: which projections make a head's queries, keys and values, which one
# reads the heads' outputs, how wide a head is, and which attributes count heads. Each family of attention classes
# says so once, by paths relative to the module the adapter matches.


@dataclass(frozen=True, kw_only=True)
class AttentionAdapter:
    """Where one family of attention modules keeps its heads (paths are relative to the matched module).

    ``query``/``key``/``value`` name three projections, or ``qkv`` one fused projection whose outputs are
    [queries; keys; values] (given both, ``qkv`` is used where the module has it); ``output`` reads the heads'
    concatenated outputs (its input features). ``head_dim`` is the attribute holding a head's width. Keys and
    values may have fewer heads than queries (grouped-query attention): then a *unit* is one key/value head with
    the query heads that share it. ``counts`` are attributes to update after pruning: ``(path, "heads")`` takes the
    number of query heads, ``(path, "width")`` heads × width; attributes the module lacks are skipped.
    """

    name: str
    output: str
    head_dim: str
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None
    counts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if None in (self.query, self.key, self.value) and self.qkv is None:
            raise ConfigError(f"attention adapter {self.name!r}: give query, key and value, or qkv (fused)")
        for path, what in self.counts:
            if what not in ("heads", "width"):
                raise ConfigError(f"attention adapter {self.name!r}: count {path!r} must be 'heads' or 'width'")


@dataclass(frozen=True, kw_only=True)
class FFNAdapter:
    """A feed-forward block: ``inputs`` make the hidden units (their outputs: one layer, or gate and up projections
    multiplied together), ``output`` reads them (its input features); paths relative to the matched module."""

    name: str
    inputs: tuple[str, ...]
    output: str


def submodule(m: nn.Module, path: str) -> nn.Module:
    """``m``'s submodule at a dotted path (ConfigError naming the path when an adapter does not fit the module)."""
    try:
        return m.get_submodule(path)
    except AttributeError as exc:
        raise ConfigError(f"{type(m).__name__} has no submodule {path!r}: its adapter does not describe it") from exc


def _attr_owner(m: nn.Module, path: str) -> tuple[Any, str]:
    head, _, attr = path.rpartition(".")
    return (submodule(m, head) if head else m), attr


def get_count(m: nn.Module, path: str) -> int:
    owner, attr = _attr_owner(m, path)
    value = getattr(owner, attr, None)
    if not isinstance(value, int):
        raise ConfigError(f"{type(m).__name__}.{path} is not an integer attribute: its adapter does not describe it")
    return value


def set_count(m: nn.Module, path: str, value: int) -> None:
    """Set an integer attribute at a dotted path, if the module has it."""
    owner, attr = _attr_owner(m, path)
    if isinstance(getattr(owner, attr, None), int):
        setattr(owner, attr, value)


_BERT_ATTN = AttentionAdapter(name="BERT-style attention", query="self.query", key="self.key", value="self.value",
                              output="output.dense", head_dim="self.attention_head_size",
                              counts=(("self.num_attention_heads", "heads"), ("self.all_head_size", "width")))
_QKVO_ATTN = AttentionAdapter(name="q/k/v/o projections", query="q_proj", key="k_proj", value="v_proj",
                              output="o_proj", head_dim="head_dim",
                              counts=(("num_attention_heads", "heads"), ("num_heads", "heads")))
_HF = "transformers.models"
_ATTENTION: list[tuple[type | str, AttentionAdapter]] = [
    ("deepslim.models.transformer.SelfAttention",
     AttentionAdapter(name="deepslim SelfAttention", qkv="qkv", query="query", key="key", value="value",
                      output="proj", head_dim="head_dim", counts=(("num_heads", "heads"),))),
    *((f"{_HF}.{m}", _BERT_ATTN) for m in ("bert.modeling_bert.BertAttention", "roberta.modeling_roberta."
                                            "RobertaAttention", "electra.modeling_electra.ElectraAttention")),
    *((f"{_HF}.{m}", _QKVO_ATTN) for m in ("vit.modeling_vit.ViTAttention", "deit.modeling_deit.DeiTAttention",
                                            "dinov2.modeling_dinov2.Dinov2Attention",
                                            "llama.modeling_llama.LlamaAttention",
                                            "mistral.modeling_mistral.MistralAttention",
                                            "qwen2.modeling_qwen2.Qwen2Attention")),
    (f"{_HF}.gpt2.modeling_gpt2.GPT2Attention",
     AttentionAdapter(name="GPT-2 attention", qkv="c_attn", output="c_proj", head_dim="head_dim",
                      counts=(("num_heads", "heads"), ("split_size", "width")))),
    (f"{_HF}.distilbert.modeling_distilbert.DistilBertSelfAttention",
     AttentionAdapter(name="DistilBERT attention", query="q_lin", key="k_lin", value="v_lin", output="out_lin",
                      head_dim="attention_head_size", counts=(("n_heads", "heads"),))),
]  # fmt: skip
_FFN: list[tuple[type | str, FFNAdapter]] = [
    ("deepslim.models.transformer.MLP", FFNAdapter(name="deepslim MLP", inputs=("0",), output="3")),
    *((f"{_HF}.{m}", FFNAdapter(name="BERT-style layer", inputs=("intermediate.dense",), output="output.dense"))
      for m in ("bert.modeling_bert.BertLayer", "roberta.modeling_roberta.RobertaLayer",
                "electra.modeling_electra.ElectraLayer")),
    *((f"{_HF}.{m}", FFNAdapter(name="fc1/fc2 MLP", inputs=("fc1",), output="fc2"))
      for m in ("vit.modeling_vit.ViTMLP", "deit.modeling_deit.DeiTMLP", "dinov2.modeling_dinov2.Dinov2MLP")),
    *((f"{_HF}.{m}", FFNAdapter(name="gated MLP", inputs=("gate_proj", "up_proj"), output="down_proj"))
      for m in ("llama.modeling_llama.LlamaMLP", "mistral.modeling_mistral.MistralMLP",
                "qwen2.modeling_qwen2.Qwen2MLP")),
    (f"{_HF}.gpt2.modeling_gpt2.GPT2MLP", FFNAdapter(name="GPT-2 MLP", inputs=("c_fc",), output="c_proj")),
    (f"{_HF}.distilbert.modeling_distilbert.FFN", FFNAdapter(name="DistilBERT FFN", inputs=("lin1",), output="lin2")),
]  # fmt: skip
_USER_ATTENTION: list[tuple[type | str, AttentionAdapter]] = []
_USER_FFN: list[tuple[type | str, FFNAdapter]] = []


def _matches(m: nn.Module, cls: type | str) -> bool:
    if isinstance(cls, type):
        return isinstance(m, cls)
    return any(f"{c.__module__}.{c.__qualname__}" == cls for c in type(m).__mro__)


def register_attention_adapter(cls: type | str, adapter: AttentionAdapter | FFNAdapter) -> None:
    """Describe an attention class (or a feed-forward block, with an :class:`FFNAdapter`) to head pruning.

    ``cls`` is the class or its dotted path; registered adapters take precedence over the built-in ones. Example:
    ``register_attention_adapter("mylib.MyAttention", AttentionAdapter(name="mine", query="wq", key="wk",
    value="wv", output="wo", head_dim="head_size", counts=(("n_head", "heads"),)))``.
    """
    if not isinstance(cls, (type, str)):
        raise ConfigError(f"register_attention_adapter needs a class or its dotted path, got {cls!r}")
    if isinstance(adapter, AttentionAdapter):
        _USER_ATTENTION.insert(0, (cls, adapter))
    elif isinstance(adapter, FFNAdapter):
        _USER_FFN.insert(0, (cls, adapter))
    else:
        raise ConfigError(f"register_attention_adapter needs an AttentionAdapter or FFNAdapter, "
                          f"got {type(adapter).__name__}")  # fmt: skip


def unregister_attention_adapter(cls: type | str) -> None:
    """Forget the adapters registered for ``cls``."""
    _USER_ATTENTION[:] = [(c, a) for c, a in _USER_ATTENTION if c != cls]
    _USER_FFN[:] = [(c, a) for c, a in _USER_FFN if c != cls]


def attention_adapter(m: nn.Module) -> AttentionAdapter | None:
    """The adapter describing ``m``'s heads (user registrations first), or None."""
    return next((a for c, a in (*_USER_ATTENTION, *_ATTENTION) if _matches(m, c)), None)


def ffn_adapter(m: nn.Module) -> FFNAdapter | None:
    """The adapter describing ``m`` as a feed-forward block, or None."""
    return next((a for c, a in (*_USER_FFN, *_FFN) if _matches(m, c)), None)


def looks_like_attention(m: nn.Module) -> bool:
    """Whether ``m`` is probably an attention module (its class name says so, and it holds weights)."""
    name = type(m).__name__.lower()
    return "attention" in name and any(True for _ in m.parameters())


def weight_of(m: nn.Module) -> torch.Tensor:
    """``m.weight`` as a tensor (TypeError naming the class when the module has none)."""
    weight = getattr(m, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(m).__name__} has no weight tensor")
    return weight
