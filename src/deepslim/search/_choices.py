"""The space's choices besides channels and int8, checked: the recovery's hyper-parameters (HPO); the choices that
change weights but not the graph, unstructured sparsity and k-means weight sharing per layer (issue 14: "optional
unstructured sparsity for size", "k-means bits to the archive objective"); and the query/key/value trios whose int8
choice is one.

Sparsity and k-means bits change what the ``.dsz`` archive stores (sparse indices, a codebook and Huffman-coded
indices), not what ONNX Runtime runs: the export bakes masks and codebooks into plain weights. So they belong to the
size (archive bytes) objective and budget; a latency-only search gains nothing from them. A policy carries them as
``sparsity: {layer: fraction}`` (0: dense) and ``kmeans: {layer: bits}`` (0: not clustered); they become the
ordinary configs of the same verbs a user calls — :class:`MagnitudePruneConfig` (``prune_``) and
:class:`KMeansConfig` (``cluster_``), each naming its layers in ``overrides`` and skipping every other layer.

A layer in int8 keeps its k-means choice unused: its integer codes are what the archive stores (k-means and linear
quantization both replace the weight's values; the int8 choice is the one the runtime runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from deepslim.compress.prune import MagnitudePruneConfig
from deepslim.compress.quantize import KMeansConfig, attention_trios
from deepslim.errors import ConfigError

RECOVERY_CHOICES = ("lr", "finetune_epochs", "temperature")
DEFAULT_SPARSITY = (0.0, 0.5, 0.75, 0.9)  # the first is the default (dense): the dense and uniform policies use it
DEFAULT_KMEANS_BITS = (0, 8, 6, 4)  # 0: not clustered (the default)
SKIP_REST = ("re:.*", None)  # the override that leaves every layer not named before it alone


def check_recovery(name: Any, options: Any) -> None:
    """One recovery choice: a known name and a non-empty list of distinct, valid options."""
    if name not in RECOVERY_CHOICES:
        raise ConfigError(f"unknown recovery choice {name!r}; choose from {', '.join(RECOVERY_CHOICES)}")
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or not options:
        raise ConfigError(f"recovery choice {name!r} needs a non-empty list of options, got {options!r}")
    if len(set(map(repr, options))) != len(options):
        raise ConfigError(f"recovery choice {name!r} repeats an option: {list(options)}")
    for v in options:
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if name == "lr" and not (number and v > 0):
            raise ConfigError(f"recovery choice 'lr': each option must be a positive number, got {v!r}")
        if name == "finetune_epochs" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ConfigError(f"recovery choice 'finetune_epochs': each option must be an integer >= 0, got {v!r}")
        if name == "temperature" and v is not None and not (number and v > 0):
            raise ConfigError(f"recovery choice 'temperature': each option must be a positive number or null (no "
                              f"distillation), got {v!r}")  # fmt: skip


def check_sparsity(options: Sequence[Any]) -> tuple[float, ...]:
    """Sparsity options: distinct fractions in [0, 1), 0 first (the dense policy's)."""
    found = _distinct("sparsity", options)
    for v in found:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"sparsity options are fractions in [0, 1) (0: dense), got {v!r}")
    if found and found[0] != 0:
        raise ConfigError(f"the first sparsity option is the dense policy's and must be 0, got {list(found)}")
    return tuple(float(v) for v in found)


def check_kmeans_bits(options: Sequence[Any]) -> tuple[int, ...]:
    """K-means options: distinct bit-widths from 1 to 8 or 0 (not clustered), 0 first (the dense policy's)."""
    found = _distinct("k-means bits", options)
    for v in found:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 8:
            raise ConfigError(f"k-means bit options are integers from 1 to 8, or 0 (not clustered), got {v!r}")
    if found and found[0] != 0:
        raise ConfigError(f"the first k-means option is the dense policy's and must be 0 (not clustered), got "
                          f"{list(found)}")  # fmt: skip
    return tuple(int(v) for v in found)


def _distinct(what: str, options: Any) -> tuple[Any, ...]:
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise ConfigError(f"{what} options are a list, got {options!r}")
    if len(set(map(repr, options))) != len(options):
        raise ConfigError(f"{what} options repeat a value: {list(options)}")
    return tuple(options)


def magnitude_config(sparsity: Mapping[str, float]) -> MagnitudePruneConfig | None:
    """The magnitude pruning that gives each named layer its sparsity (0: left dense) and no other layer a mask."""
    chosen = tuple((name, float(s)) for name, s in sparsity.items() if s > 0)
    return MagnitudePruneConfig(sparsity=0.0, overrides=(*chosen, SKIP_REST)) if chosen else None


def kmeans_config(kmeans: Mapping[str, int], int8: Mapping[str, bool]) -> KMeansConfig | None:
    """The k-means weight sharing of each named float layer at its bits (0, or a layer in int8: not clustered)."""
    chosen = tuple((name, int(b)) for name, b in kmeans.items() if b > 0 and not int8.get(name, False))
    return KMeansConfig(bits=max(b for _, b in chosen), overrides=(*chosen, SKIP_REST)) if chosen else None


def lower(name: str, options: Sequence[Any], value: Any) -> list[Any]:
    """The options of a sparsity or k-means choice that compress more than ``value`` (more zeros, fewer bits; 0 bits,
    not clustered, is the least compressed); [] for other choices."""
    if name.startswith("sparsity:"):
        return [v for v in options if v > value]
    if name.startswith("kmeans:"):
        width = value or math.inf
        return [v for v in options if 0 < v < width]
    return []


def follows(key: str, value: Any, params: Mapping[str, Any], tied: Mapping[str, str]) -> bool:
    """Whether flat parameter ``key`` is a tied int8 layer's (``tied``: follower -> the layer it follows), given as
    its group's first is; a different value is a ConfigError naming both (it would split a fused attention)."""
    if not key.startswith("int8:") or key[5:] not in tied:
        return False
    lead = params.get(f"int8:{tied[key[5:]]}")
    if lead is not None and bool(value) != bool(lead):
        raise ConfigError(f"{key}={value!r} splits the int8 choice it is tied to ({tied[key[5:]]}={lead!r}): tied "
                          "layers (a fused attention's query, key and value) are all int8 or all float")  # fmt: skip
    return True


def qkv_trios(model: nn.Module, layers: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """The (query, key, value) linear layers of each attention whose three are all in ``layers``
    (:func:`deepslim.compress.quantize.attention_trios`): ONNX Runtime fuses them into one kernel, and dynamic int8
    (the default calibration of a BERT-style encoder) quantizes all three or none — so a search chooses their
    precision once (review L7: a split trio is a model the export refuses)."""
    names = set(layers)
    return tuple(trio for trio in attention_trios(model) if set(trio) <= names)


def prefix_ties(layers: Sequence[str], parts: int) -> tuple[tuple[str, ...], ...]:
    """The int8 ``layers`` grouped by the first ``parts`` dot-separated parts of their names (0: none grouped), each
    group of two or more one choice: ``parts=1`` ties a ResNet's stages (``layer2.0.conv1`` ... ``layer2.2.conv2``),
    ``parts=2`` its blocks. Why: per layer, a ResNet-20 space has 2^20 precision mixes and a sampler draws mostly
    float-heavy ones; at a tight latency budget those land over it (session 16, 0.5x: 15-19 of 24-28 sampled trials
    over, every winner all int8), and per stage the mixes are 2^5 — the sampler learns a stage's precision at once."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 0:
        raise ConfigError(f"tie_int8 is the number of name parts that group int8 layers (0: none), got {parts!r}")
    if parts == 0:
        return ()
    found: dict[str, list[str]] = {}
    for name in layers:
        found.setdefault(".".join(name.split(".")[:parts]), []).append(name)
    return tuple(tuple(group) for group in found.values() if len(group) > 1)


def merge_ties(layers: Sequence[str], *ties: Iterable[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """The groups of ``ties`` merged where they share a layer (a fused attention's trio inside a tied stage joins
    it), each in the order of ``layers``, ordered by their first layer."""
    owner: dict[str, int] = {}
    groups: list[set[str]] = []
    for group in (g for tie in ties for g in tie):
        joined = {owner[n] for n in group if n in owner}
        merged = set(group).union(*(groups[i] for i in joined))
        for i in joined:
            groups[i] = set()
        groups.append(merged)
        owner.update(dict.fromkeys(merged, len(groups) - 1))
    order = {n: i for i, n in enumerate(layers)}
    return tuple(sorted((tuple(sorted(g, key=order.__getitem__)) for g in groups if g), key=lambda g: order[g[0]]))
