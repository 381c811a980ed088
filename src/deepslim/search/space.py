"""A compression search space as data: per channel group a grid of channel counts, per layer int8 or float.

The space is built from the channel dependency graph (:func:`deepslim.compress.prune.plan_channel_pruning`), so it
covers every model ``prune_`` and ``quantize_`` accept: one choice per prunable *group* (coupled layers lose the same
channels), named by the group's first producing layer, whose options are channel counts that are multiples of the
group's step (``round_to`` × the group's blocks: ONNX Runtime's NCHWc kernels block channels by 8 or 16, and counts
off that grid run slower at fewer MACs); one choice per quantizable layer: int8 (ONNX Runtime's integer kernels) or
float. A policy picks one option per choice; it becomes the ordinary technique configs
(:meth:`SearchSpace.configs`): a :class:`ChannelPruneConfig` whose ``overrides`` give each group its ratio and a
:class:`LinearQuantConfig` whose ``overrides`` keep the float layers float. Space and policy are plain JSON.

Optionally (kind ``"hpo"``, or ``recovery={...}``) the hyper-parameters of the recovery join the space: the
fine-tune's learning rate and epochs and a distillation temperature (None: fine-tune on the labels alone). A policy
then carries its own values (:attr:`Policy.recovery`); each option list's first value is the default that the dense
and uniform policies use. Kinds ``"sparsity"`` and ``"kmeans"`` add, per weighted layer, an unstructured sparsity
and k-means bits (weight sharing): choices for the size (archive bytes) objective (:mod:`deepslim.search._choices`).
The query, key and value layers of a fused attention share one int8 choice (``tied``); so, on request
(``tie_int8``), do the layers of one stage or block. Kind ``"depth"`` adds, per
droppable residual block, keep or drop (:mod:`deepslim.search._depth`): dropped before the channels are pruned.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from deepslim.compress.prune import (
    BlockDropConfig,
    ChannelPruneConfig,
    MagnitudePruneConfig,
    plan_channel_pruning,
    prune_,
)
from deepslim.compress.prune.masks import prunable_layers
from deepslim.compress.quantize import QUANTIZABLE, KMeansConfig, LinearQuantConfig, cluster_, quantize_
from deepslim.errors import ConfigError
from deepslim.models.adapters import weight_layers
from deepslim.search import _choices, _depth
from deepslim.search._choices import RECOVERY_CHOICES, check_recovery

KINDS = ("prune", "int8")  # what a space holds unless told otherwise
ALL_KINDS = ("prune", "int8", "hpo", "sparsity", "kmeans", "depth")
DEFAULT_RECOVERY: dict[str, tuple[Any, ...]] = {"lr": (1e-3, 3e-4, 3e-3), "finetune_epochs": (1, 2),
                                                "temperature": (None, 4.0)}  # fmt: skip
ROLES = ("depthwise", "residual", "plain")  # what a group's channels are (GroupChoice.role)
DEFAULT_KEEP_RATIOS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
FORMAT = "deepslim-search-space"


@dataclass(frozen=True)
class GroupChoice:
    """One prunable channel group: its name (first producing layer), full width and the channel counts to try."""

    name: str
    width: int
    keep: tuple[int, ...]  # ascending; the last is ``width``
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "keep": list(self.keep), "description": self.description}

    @property
    def role(self) -> str:
        """What the channels are, read from the dependency graph's description: ``"depthwise"`` (they pass a
        depthwise convolution: an inverted residual's expansion, MobileNet's hidden channels), ``"residual"`` (shared
        by several producers through residual additions: a stage's bottleneck) or ``"plain"`` (any other). Known good
        policies for inverted-residual networks (AMC, NetAdapt) prune the first far more than the second."""
        parts = self.description.rpartition(" (")[0].split(" ⇒ ")  # "a out ⇒ b (depthwise) ⇒ c in (8 channels)"
        if any(p.endswith(" (depthwise)") for p in parts):
            return "depthwise"
        return "residual" if sum(p.endswith(" out") for p in parts) > 1 else "plain"


@dataclass(frozen=True)
class Policy:
    """What a search chooses: channels kept per group, per quantizable layer int8 (True) or float (False), (when the
    space has them) the recovery's hyper-parameters (``lr``, ``finetune_epochs``, ``temperature``), per layer an
    unstructured ``sparsity`` (0: dense) and ``kmeans`` bits (0: not clustered), and per residual block ``drop``
    (True: replaced by an identity)."""

    keep: Mapping[str, int] = field(default_factory=dict)
    int8: Mapping[str, bool] = field(default_factory=dict)
    recovery: Mapping[str, Any] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    kmeans: Mapping[str, int] = field(default_factory=dict)
    drop: Mapping[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"keep": dict(self.keep), "int8": dict(self.int8)}
        for name in ("recovery", "sparsity", "kmeans", "drop"):  # only when chosen: older policies read the same
            if getattr(self, name):
                doc[name] = dict(getattr(self, name))
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Policy:
        if not isinstance(doc, Mapping) or set(doc) - {"keep", "int8", "recovery", "sparsity", "kmeans", "drop"}:
            raise ConfigError(f"a policy is a mapping with 'keep', 'int8' and optionally 'recovery', 'sparsity', "
                              f"'kmeans' and 'drop', got {doc!r}")  # fmt: skip
        return cls(keep=dict(doc.get("keep", {})), int8=dict(doc.get("int8", {})),
                   recovery=dict(doc.get("recovery", {})), sparsity=dict(doc.get("sparsity", {})),
                   kmeans=dict(doc.get("kmeans", {})), drop=dict(doc.get("drop", {})))  # fmt: skip

    def params(self) -> dict[str, Any]:
        """The policy as flat parameters (``keep:GROUP``, ``int8:LAYER``, ``recovery:NAME``, ``sparsity:LAYER``,
        ``kmeans:LAYER``, ``drop:BLOCK``): how a study stores a trial's choices."""
        return {**{f"keep:{g}": k for g, k in self.keep.items()}, **{f"int8:{n}": b for n, b in self.int8.items()},
                **{f"recovery:{n}": v for n, v in self.recovery.items()},
                **{f"sparsity:{n}": v for n, v in self.sparsity.items()},
                **{f"kmeans:{n}": v for n, v in self.kmeans.items()},
                **{f"drop:{n}": v for n, v in self.drop.items()}}  # fmt: skip


@dataclass(frozen=True)
class SearchSpace:
    """Choices per group and layer (see the module docstring); ``to_dict``/``from_dict`` round-trip through JSON.

    ``recovery`` maps a recovery hyper-parameter (:data:`RECOVERY_CHOICES`) to its options, the default first; a
    mapping given here is checked and kept as ``{name: tuple of options}`` in that order of names. ``tied``: groups
    of ``int8_layers`` chosen together (a fused attention's query, key and value: the first names the choice).
    ``sparse_layers`` each choose one of ``sparsity`` (fractions, 0 first) and ``kmeans_layers`` one of
    ``kmeans_bits`` (0 first: not clustered); given layers without options get the defaults. ``blocks``: the residual
    blocks each policy keeps or drops (kind "depth")."""

    groups: tuple[GroupChoice, ...] = ()
    int8_layers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    round_to: int = 1
    recovery: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    tied: tuple[tuple[str, ...], ...] = ()
    sparse_layers: tuple[str, ...] = ()
    sparsity: tuple[float, ...] = ()
    kmeans_layers: tuple[str, ...] = ()
    kmeans_bits: tuple[int, ...] = ()
    blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.recovery, Mapping):
            raise ConfigError(f"recovery choices are a mapping of name to options, got {self.recovery!r}")
        for name, options in self.recovery.items():
            check_recovery(name, options)
        ordered = {n: tuple(self.recovery[n]) for n in RECOVERY_CHOICES if n in self.recovery}
        object.__setattr__(self, "recovery", ordered)
        if ordered and "hpo" not in self.kinds:
            object.__setattr__(self, "kinds", (*self.kinds, "hpo"))
        object.__setattr__(self, "int8_layers", _names(self.int8_layers, "int8_layers"))
        self._weight_choices()
        object.__setattr__(self, "blocks", _names(self.blocks, "blocks"))
        if self.blocks and "depth" not in self.kinds:
            object.__setattr__(self, "kinds", (*self.kinds, "depth"))
        stray = [n for t in self.tied for n in t if n not in self.int8_layers]
        if stray or any(len(t) < 2 for t in self.tied):
            raise ConfigError(f"tied int8 layers are groups of two or more of int8_layers, got {self.tied!r}")

    def _weight_choices(self) -> None:
        """Check and normalise the sparsity and k-means choices; their kinds follow from their layers."""
        for layers, options, kind, default, check in (
                ("sparse_layers", "sparsity", "sparsity", _choices.DEFAULT_SPARSITY, _choices.check_sparsity),
                ("kmeans_layers", "kmeans_bits", "kmeans", _choices.DEFAULT_KMEANS_BITS, _choices.check_kmeans_bits)):
            names = _names(getattr(self, layers), layers)
            object.__setattr__(self, layers, names)
            found = check(getattr(self, options) or (default if names else ()))
            object.__setattr__(self, options, found if names else ())
            if names and len(found) < 2:
                raise ConfigError(f"{options} needs two or more options (the first: none), got {list(found)}")
            if names and kind not in self.kinds:
                object.__setattr__(self, "kinds", (*self.kinds, kind))

    @classmethod
    def from_model(cls, model: nn.Module, example_input: Any, *, kinds: Sequence[str] = KINDS,
                   keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS, round_to: int = 8,
                   recovery: Mapping[str, Sequence[Any]] | None = None,
                   sparsity: Sequence[float] = _choices.DEFAULT_SPARSITY,
                   kmeans_bits: Sequence[int] = _choices.DEFAULT_KMEANS_BITS,
                   tie_int8: int = 0) -> SearchSpace:  # fmt: skip
        """The space of ``model``: ``kinds`` "prune" (channel counts near ``keep_ratios`` of each group's width,
        multiples of ``round_to``), "int8" (each quantizable layer int8 or float; a fused attention's query, key and
        value together), "hpo" (the recovery's hyper-parameters: ``recovery``'s options, by default
        :data:`DEFAULT_RECOVERY`; ``recovery`` given alone adds them too), "sparsity" (each prunable layer's
        unstructured sparsity, one of ``sparsity``) and/or "kmeans" (each weighted layer's k-means bits, one of
        ``kmeans_bits``; 0: not clustered) — those two for the size objective — and "depth" (each droppable residual
        block kept or dropped). ``tie_int8`` > 0: the int8 layers whose names share their first ``tie_int8``
        dot-separated parts choose their precision together (1: a ResNet's stages, 2: its blocks;
        :func:`~deepslim.search._choices.prefix_ties`) — kept as the space's ``tied`` groups, so plain data."""
        _choices.prefix_ties((), tie_int8)  # a bad tie_int8 refused before the model is traced
        bad = [k for k in kinds if k not in ALL_KINDS]
        if bad or not kinds:
            raise ConfigError(f"unknown search space kind {bad[0] if bad else ''!r}; choose from "
                              f"{', '.join(ALL_KINDS)}")  # fmt: skip
        if tie_int8 and "int8" not in kinds:  # it would tie nothing: said, not ignored (review R17 L5.3)
            raise ConfigError(f"tie_int8={tie_int8} ties int8 choices, but the space's kinds ({', '.join(kinds)}) have "
                              f"no int8: add int8 to them or leave tie_int8 at 0")  # fmt: skip
        if any(not 0.0 < r <= 1.0 for r in keep_ratios) or not keep_ratios:
            raise ConfigError(f"keep ratios must be in (0, 1], got {list(keep_ratios)}")
        if round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {round_to}")
        groups: tuple[GroupChoice, ...] = ()
        if "prune" in kinds:
            groups = _groups(model, example_input, keep_ratios, round_to)
        layers: tuple[str, ...] = ()
        if "int8" in kinds:
            layers = tuple(n for n, (m, _) in weight_layers(model).items() if isinstance(m, tuple(QUANTIZABLE)))
        if recovery is None and "hpo" in kinds:
            recovery = DEFAULT_RECOVERY
        sparse = tuple(prunable_layers(model)) if "sparsity" in kinds else ()
        shared = tuple(n for n, (m, _) in weight_layers(model).items() if isinstance(m, tuple(QUANTIZABLE))) \
            if "kmeans" in kinds else ()  # fmt: skip
        blocks = _depth.blocks_of(model, example_input) if "depth" in kinds else ()
        tied, stages = _choices.qkv_trios(model, layers), _choices.prefix_ties(layers, tie_int8)
        if stages:
            tied = _choices.merge_ties(layers, tied, stages)
        return cls(groups=groups, int8_layers=layers, kinds=tuple(kinds), round_to=round_to, recovery=recovery or {},
                   tied=tied, sparse_layers=sparse, sparsity=tuple(sparsity),
                   kmeans_layers=shared, kmeans_bits=tuple(kmeans_bits), blocks=blocks)  # fmt: skip

    # -- JSON --------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc = {"format": FORMAT, "kinds": list(self.kinds), "round_to": self.round_to,
               "groups": [g.to_dict() for g in self.groups], "int8_layers": list(self.int8_layers)}  # fmt: skip
        if self.recovery:
            doc["recovery"] = {n: list(options) for n, options in self.recovery.items()}
        for name in _OPTIONAL:  # only when present: an older space keeps its JSON (and a study its fingerprint)
            if getattr(self, name):
                doc[name] = [list(v) if isinstance(v, tuple) else v for v in getattr(self, name)]
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise ConfigError(f"not a search space (expected format {FORMAT!r})")
        try:
            groups = tuple(GroupChoice(g["name"], int(g["width"]), tuple(int(k) for k in g["keep"]),
                                       g.get("description", "")) for g in doc["groups"])  # fmt: skip
            extra: dict[str, Any] = {n: doc[n] if isinstance(doc[n], str) else  # a string: __post_init__ refuses it
                                     tuple(tuple(v) if isinstance(v, list) else v for v in doc[n])
                                     for n in _OPTIONAL if n in doc}  # fmt: skip
            return cls(groups=groups, int8_layers=doc["int8_layers"], kinds=tuple(doc["kinds"]),
                       round_to=int(doc["round_to"]), recovery=doc.get("recovery", {}), **extra)  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed search space: {exc}") from None

    # -- policies ----------------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """How many policies the space holds."""
        return math.prod(len(options) for options in self.choices().values())

    def lacking(self) -> str | None:
        """Where the space holds a single policy (the model's own: nothing to search), what its kinds found none of
        (e.g. "prune: no channel group with two or more channel counts (round_to=8)"); None where it has a choice."""
        if self.size > 1:
            return None
        lacks = {"prune": f"no channel group with two or more channel counts (round_to={self.round_to})",
                 "int8": "no layer that can be quantized", "hpo": "no recovery choice with two or more options",
                 "sparsity": "no layer that can be pruned", "kmeans": "no layer that can be clustered",
                 "depth": "no residual block that can be dropped"}  # fmt: skip
        return "; ".join(f"{kind}: {lacks[kind]}" for kind in self.kinds if kind in lacks) or "no kind to search"

    def followers(self) -> dict[str, str]:
        """Each tied int8 layer but the first of its group, and the layer whose choice it follows."""
        return {n: t[0] for t in self.tied for n in t[1:]}

    def choices(self) -> dict[str, list[Any]]:
        """Every flat parameter (:meth:`Policy.params`) and its options (a tied layer follows its group's first)."""
        tied = self.followers()
        found: dict[str, list[Any]] = {f"keep:{g.name}": list(g.keep) for g in self.groups}
        found.update({f"int8:{n}": [False, True] for n in self.int8_layers if n not in tied})
        found.update({f"recovery:{n}": list(options) for n, options in self.recovery.items()})
        found.update({f"sparsity:{n}": list(self.sparsity) for n in self.sparse_layers})
        found.update({f"kmeans:{n}": list(self.kmeans_bits) for n in self.kmeans_layers})
        found.update({f"drop:{n}": [False, True] for n in self.blocks})
        return found

    def default_recovery(self) -> dict[str, Any]:
        """The first option of each recovery choice: what the dense, uniform and smallest policies use."""
        return {n: options[0] for n, options in self.recovery.items()}

    def policy(self, params: Mapping[str, Any]) -> Policy:
        """The policy of flat parameters; a parameter outside the space is a ConfigError naming it."""
        choices, tied = self.choices(), self.followers()
        for key, value in params.items():
            if _choices.follows(key, value, params, tied):  # a tied layer may be given: as its group's first
                continue
            if key not in choices or value not in choices[key]:
                raise ConfigError(f"{key}={value!r} is not in the search space")
        missing = [k for k in choices if k not in params]
        if missing:
            raise ConfigError(f"the policy does not choose {missing[0]!r}")
        return Policy(keep={g.name: int(params[f"keep:{g.name}"]) for g in self.groups},
                      int8={n: bool(params[f"int8:{tied.get(n, n)}"]) for n in self.int8_layers},
                      recovery={n: params[f"recovery:{n}"] for n in self.recovery},
                      sparsity={n: float(params[f"sparsity:{n}"]) for n in self.sparse_layers},
                      kmeans={n: int(params[f"kmeans:{n}"]) for n in self.kmeans_layers},
                      drop={n: bool(params[f"drop:{n}"]) for n in self.blocks})  # fmt: skip

    def uniform(self, keep_ratio: float = 1.0, int8: bool = False) -> Policy:
        """The same keep ratio for every group (nearest option) and one precision for every layer."""
        keep = {g.name: _nearest(g, keep_ratio) for g in self.groups}
        return Policy(keep=keep, int8={n: int8 for n in self.int8_layers}, recovery=self.default_recovery(),
                      **self._weights())  # fmt: skip

    def _weights(self, least: bool = False) -> dict[str, dict[str, Any]]:
        """Every sparsity, k-means and depth choice at its default (dense, not clustered, kept), or with ``least`` at
        the most compressing option (the highest sparsity, the fewest bits, dropped)."""
        sparsity = max(self.sparsity, default=0.0) if least else 0.0
        bits = min((b for b in self.kmeans_bits if b > 0), default=0) if least else 0
        return {"sparsity": dict.fromkeys(self.sparse_layers, sparsity),
                "kmeans": dict.fromkeys(self.kmeans_layers, bits), "drop": dict.fromkeys(self.blocks, least)}

    def dense(self) -> Policy:
        return self.uniform(1.0, False)

    def by_role(self, ratios: Mapping[str, float], int8: bool = False) -> Policy:
        """A structured policy: each group at the keep ratio of its :attr:`GroupChoice.role` (``"depthwise"``,
        ``"residual"``, ``"plain"``; a role not given keeps every channel), nearest option, one precision for every
        layer. ``{"depthwise": 0.375}`` is the "hidden-heavy" family's member that prunes only the expansions."""
        bad = [r for r in ratios if r not in ROLES]
        if bad:
            raise ConfigError(f"unknown group role {bad[0]!r}; choose from {', '.join(ROLES)}")
        if any(not 0.0 < float(r) <= 1.0 for r in ratios.values()):
            raise ConfigError(f"keep ratios must be in (0, 1], got {dict(ratios)}")
        keep = {g.name: _nearest(g, float(ratios.get(g.role, 1.0))) for g in self.groups}
        return Policy(keep=keep, int8={n: int8 for n in self.int8_layers}, recovery=self.default_recovery(),
                      **self._weights())  # fmt: skip

    def smallest(self, int8: bool = True) -> Policy:
        """Fewest channels everywhere, every layer in ``int8`` (or float), the highest sparsity and fewest k-means
        bits the space offers (they change the archive, not the graph the runtime runs), every droppable block
        dropped."""
        return Policy(keep={g.name: g.keep[0] for g in self.groups}, int8={n: int8 for n in self.int8_layers},
                      recovery=self.default_recovery(), **self._weights(least=True))  # fmt: skip

    def narrower(self, policy: Policy, notches: int, int8: bool | None = None) -> Policy:
        """``policy`` with every group's channel count moved ``notches`` options down its grid (clamped at the
        fewest) and, with ``int8`` given, every layer in that precision: the steps a repair of a policy over a
        latency budget takes (:func:`deepslim.search.trials.repaired`)."""
        keep = {g.name: g.keep[max(0, g.keep.index(policy.keep[g.name]) - notches)] if policy.keep[g.name] in g.keep
                else policy.keep[g.name] for g in self.groups}  # fmt: skip
        precision = dict(policy.int8) if int8 is None else dict.fromkeys(policy.int8, int8)
        return replace(policy, keep=keep, int8=precision)

    def canonical(self, policy: Policy) -> Policy:
        """``policy`` with every choice inside a dropped block at the dense policy's value (all channels, float,
        dense, not clustered). The configs leave those choices out (:meth:`configs`), so two policies with one
        canonical form build one model: a search judges it once (a repeated trial reuses the first's judgement)."""
        if not any(policy.drop.values()):
            return policy
        dense = self.dense()
        return replace(policy, **{name: _depth.settled(getattr(policy, name), policy.drop, getattr(dense, name))
                                  for name in ("keep", "int8", "sparsity", "kmeans")})  # fmt: skip

    def sample(self, rng: random.Random) -> Policy:
        return self.policy({k: rng.choice(v) for k, v in self.choices().items()})

    def sample_at(self, rng: random.Random, level: float) -> Policy:
        """A random policy around ``level`` (0: the fewest channels, 1: all): each group's keep option drawn within
        one step of that position, each layer int8 with a probability drawn once for the policy. Policies at levels
        spread over [0, 1] span the space's latencies; :meth:`sample`'s independent draws crowd its middle."""
        params: dict[str, Any] = {}
        for g in self.groups:
            pos = round(level * (len(g.keep) - 1)) + rng.choice((-1, 0, 1))
            params[f"keep:{g.name}"] = g.keep[min(max(pos, 0), len(g.keep) - 1)]
        share = rng.random()
        tied = self.followers()
        params.update({f"int8:{n}": rng.random() < share for n in self.int8_layers if n not in tied})
        params.update({f"recovery:{n}": rng.choice(options) for n, options in self.recovery.items()})
        params.update({k: rng.choice(v) for k, v in self.choices().items() if k.startswith(("sparsity:", "kmeans:"))})
        params.update({f"drop:{n}": rng.random() >= level for n in self.blocks})  # fewer blocks at lower levels
        return self.policy(params)

    def all_policies(self) -> Iterable[Policy]:
        """Every policy (for small spaces: tests, exhaustive search)."""
        import itertools

        keys, options = zip(*self.choices().items(), strict=True) if self.choices() else ((), ())
        for combo in itertools.product(*options):
            yield self.policy(dict(zip(keys, combo, strict=True)))

    # -- policies as technique configs -------------------------------------------------------------------------------
    def weight_configs(self, policy: Policy) -> tuple[MagnitudePruneConfig | None, KMeansConfig | None]:
        """The unstructured pruning and k-means configs that carry out ``policy``'s sparsity and k-means bits (None
        where it chooses none; a layer in int8 is not clustered: :mod:`deepslim.search._choices`; a layer in a dropped
        block is gone)."""
        sparsity, kmeans = _depth.alive(policy.sparsity, policy.drop), _depth.alive(policy.kmeans, policy.drop)
        return _choices.magnitude_config(sparsity), _choices.kmeans_config(kmeans, policy.int8)

    def depth_config(self, policy: Policy) -> BlockDropConfig | None:
        """The block drop that carries out ``policy``'s depth (None: every block kept); it runs before the others."""
        return _depth.depth_config(policy.drop)

    def configs(self, policy: Policy) -> tuple[ChannelPruneConfig | None, LinearQuantConfig | None]:
        """The channel pruning and int8 configs that carry out ``policy`` on the model its :meth:`depth_config` left
        (None where it does nothing; groups and layers inside dropped blocks are gone)."""
        widths = {g.name: g.width for g in self.groups}
        keep, int8 = _depth.alive(policy.keep, policy.drop), _depth.alive(policy.int8, policy.drop)
        overrides = tuple((g, 1.0 - k / widths[g]) for g, k in keep.items() if k < widths[g])
        prune = ChannelPruneConfig(ratio=0.0, overrides=overrides) if overrides else None
        floats: tuple[tuple[str, int | None], ...] = tuple((n, None) for n, q in int8.items() if not q)
        quant = LinearQuantConfig(bits=8, overrides=floats) if any(int8.values()) else None
        return prune, quant


_OPTIONAL = ("tied", "sparse_layers", "sparsity", "kmeans_layers", "kmeans_bits", "blocks")  # written when present


def _names(given: Any, what: str) -> tuple[str, ...]:
    """``given`` as a tuple of names; a single string is refused (a tuple of it would hold its characters)."""
    if isinstance(given, str):
        raise ConfigError(f"{what} is a list of names, got the string {given!r} (write [{given!r}] for one name)")
    return tuple(given)


def _nearest(group: GroupChoice, keep_ratio: float) -> int:
    """The option of ``group`` nearest ``keep_ratio`` of its width (the larger one on a tie)."""
    target = keep_ratio * group.width
    return min(group.keep, key=lambda k: (abs(k - target), -k))


def prune_policy(model: nn.Module, space: SearchSpace, policy: Policy, *, example_input: Any,
                 calib_data: Iterable[Any] | None = None) -> nn.Module:  # fmt: skip
    """A pruned copy of ``model``: blocks dropped, channels removed (the dropped model's groups), then the chosen
    layers' smallest weights masked (unstructured sparsity: the masks stay through recovery). Quantization comes after
    recovery (:func:`quantize_policy`)."""
    net = copy.deepcopy(model)
    depth = space.depth_config(policy)
    if depth is not None:
        prune_(net, depth, example_input=example_input)
    prune, _ = space.configs(policy)
    if prune is not None:
        prune_(net, prune, example_input=example_input, calib_data=calib_data)
    sparse, _ = space.weight_configs(policy)
    if sparse is not None:
        prune_(net, sparse)
    return net


def quantize_policy(model: nn.Module, space: SearchSpace, policy: Policy, *, calib_data: Iterable[Any],
                    accept_low_fidelity: bool = False) -> nn.Module:  # fmt: skip
    """Share the chosen float layers' weights (k-means) and quantize the int8 layers of ``policy`` in place (BN
    folded, activations calibrated on ``calib_data``).
    ``accept_low_fidelity``: quantization's fidelity check (float vs int8 top-1 agreement) logs a warning instead of
    refusing — for models whose logits are near-flat (random weights, a speed-only search), where agreement says
    nothing."""
    _, shared = space.weight_configs(policy)
    if shared is not None:  # weight sharing first: the int8 layers are not clustered
        cluster_(model, shared)
    _, quant = space.configs(policy)
    if quant is not None:
        if accept_low_fidelity:
            quant = replace(quant, accept_low_fidelity=True)
        quantize_(model, quant, calib_data=calib_data)
    return model


def _groups(model: nn.Module, x: Any, keep_ratios: Sequence[float], round_to: int) -> tuple[GroupChoice, ...]:
    whole = plan_channel_pruning(model, ChannelPruneConfig(ratio=0.0), x).groups
    least = plan_channel_pruning(model, ChannelPruneConfig(ratio=0.99, round_to=round_to), x).groups
    found = []
    for plan, small in zip(whole, least, strict=True):
        if not plan.owners:
            continue
        step = small.keep  # the group's smallest count: round_to x its blocks (or the whole width)
        keep = sorted({min(plan.width, max(step, round(plan.width * r / step) * step)) for r in keep_ratios})
        if plan.width not in keep:
            keep.append(plan.width)
        if len(keep) > 1:
            found.append(GroupChoice(plan.owners[0], plan.width, tuple(keep), plan.description))
    return tuple(found)


def example_of(data: Any) -> torch.Tensor:
    """The example input of a data bundle (a batch of one)."""
    x = getattr(data, "example_input", None)
    if x is None:
        raise ConfigError("the data has no example input")
    return x
