"""Recipes: an ordered list of stages (train, prune, cluster, quantize, factorize, finetune, distill, encode, export).

A recipe is YAML (or the same structure as a dict)::

    model: lenet5            # optional: the CLI's MODEL argument wins
    weights: trained.pt      # optional: a state dict loaded into the model (the CLI's --weights wins)
    arch: my_net.py:build    # optional: the architecture of a state-dict model file (the CLI's --arch wins)
    data: digits             # optional: the CLI's --data wins
    device: cortex-m7        # energy and latency estimates are for this device
    seed: 0
    stages:
      - train: {epochs: 30, lr: 0.002}
      - prune: {method: magnitude, sparsity: 0.92, schedule: gradual, epochs: 20}
      - cluster: {bits: {default: 5, "re:features.*": 8}, epochs: 10}
      - encode: {}

Every stage and every key is checked before anything runs, and an error names the stage (its position and kind)
and the key. A run directory's ``recipe.yaml`` is the recipe as run (the command line's model, data, device and seed
filled in) plus a ``context`` mapping that records what the run saw (the data's preprocessing); ``context`` is
ignored when the file is loaded again. docs/recipes.md is the reference.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepslim.errors import ConfigError, DeepSlimError


@dataclass(frozen=True, kw_only=True)
class TrainStage:
    """Train (or fine-tune: ``finetune`` is the same stage) with cross-entropy; masks and codebooks are kept."""

    epochs: int
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PruneStage:
    """``method``: magnitude (masks; ``schedule`` oneshot, iterative or gradual), channel (physical) or nm."""

    method: str = "magnitude"
    sparsity: float = 0.9  # magnitude
    scope: str = "layer"  # magnitude
    schedule: str = "oneshot"  # magnitude
    rounds: int = 3  # magnitude, iterative
    ratio: float = 0.5  # channel
    importance: str = "l1"  # channel
    ignore: tuple[str, ...] = ()  # channel
    round_to: int = 1  # channel
    n: int = 2  # nm
    m: int = 4  # nm
    overrides: Any = ()
    epochs: int = 0  # fine-tuning (gradual: the epochs over which sparsity rises, then holds)
    lr: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class ClusterStage:
    """k-means weight sharing; ``bits`` is an int or {default: b, layer-or-pattern: b}; then centroid fine-tuning."""

    bits: Any = 5
    init: str = "linear"
    share_bias: bool = False
    epochs: int = 0
    lr: float = 1e-4


@dataclass(frozen=True, kw_only=True)
class QuantizeStage:
    """``type`` linear (PTQ; QAT when ``epochs`` > 0), fp16, bf16, binary, ternary or pow2."""

    type: str = "linear"
    bits: Any = 8
    per_channel: bool = True
    symmetric: bool = True
    activation_bits: int | None = 8
    calibration: str = "minmax"
    epochs: int = 0
    lr: float = 1e-4


@dataclass(frozen=True, kw_only=True)
class FactorizeStage:
    """Low-rank factorization: ``method`` svd (Linear) or tucker (Conv2d); one of rank_ratio, energy, mac_ratio."""

    method: str = "svd"
    rank_ratio: float | None = None
    energy: float | None = None
    mac_ratio: float | None = None
    overrides: Any = ()
    epochs: int = 0
    lr: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class DistillStage:
    """Knowledge distillation from ``teacher``: "trained" (the model after the last train stage, or the input model
    when there is none) or a model spec."""

    epochs: int
    teacher: str = "trained"
    temperature: float = 4.0
    alpha: float = 0.9
    hints: Any = ()
    lr: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class EncodeStage:
    """Write the ``.dsz`` archive (``huffman: false`` writes fixed-width streams)."""

    huffman: bool = True


@dataclass(frozen=True, kw_only=True)
class ExportStage:
    """Export to ONNX and measure latency in ONNX Runtime (``benchmark: false`` skips the measurement)."""

    format: str = "onnx"
    benchmark: bool = True
    threads: int | None = None


STAGES: dict[str, type] = {
    "train": TrainStage, "finetune": TrainStage, "prune": PruneStage, "cluster": ClusterStage,
    "quantize": QuantizeStage, "factorize": FactorizeStage, "distill": DistillStage, "encode": EncodeStage,
    "export": ExportStage,
}  # fmt: skip
_CHOICES = {
    (PruneStage, "method"): ("magnitude", "channel", "nm"),
    (PruneStage, "schedule"): ("oneshot", "iterative", "gradual"),
    (QuantizeStage, "type"): ("linear", "fp16", "bf16", "binary", "ternary", "pow2"),
    (FactorizeStage, "method"): ("svd", "tucker"), (ExportStage, "format"): ("onnx",),
}  # fmt: skip


@dataclass(frozen=True)
class StageSpec:
    kind: str
    params: Any  # one of the stage dataclasses
    index: int  # 1-based position in the recipe

    @property
    def label(self) -> str:
        return f"stage {self.index} ({self.kind})"


@dataclass(frozen=True)
class Recipe:
    stages: tuple[StageSpec, ...]
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    arch: str | None = None
    data: str | None = None
    device: str = "cortex-m7"
    seed: int = 0
    source: dict[str, Any] = field(default_factory=dict)  # the recipe as written

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)


_TOP_KEYS = {"model", "model_options", "weights", "arch", "data", "device", "seed", "stages", "name", "description",
             "context"}  # fmt: skip


BUILTIN = Path(__file__).resolve().parent.parent / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes that ship with deepslim (``load_recipe(name)`` loads one)."""
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def load_recipe(spec: str | os.PathLike[str] | dict[str, Any]) -> Recipe:
    """Parse and check a recipe from a YAML file, a built-in recipe's name, or a dict.

    Every error names the stage and key at fault.
    """
    if isinstance(spec, dict):
        raw, where = spec, "recipe"
    else:
        path = Path(spec)
        if not path.is_file() and str(spec) in list_recipes():
            path = BUILTIN / f"{spec}.yaml"
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist (built-in recipes: "
                              f"{', '.join(list_recipes())})")  # fmt: skip
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with a 'stages' list")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS))
        raise ConfigError(f"{where}: unknown top-level key {sorted(unknown)[0]!r} (known: {known})")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{where}: 'stages' must be a non-empty list")
    stages = tuple(_stage(i, item) for i, item in enumerate(stages_raw, start=1))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{where}: seed must be an integer, got {seed!r}")
    options = raw.get("model_options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: model_options must be a mapping")
    for key in ("model", "weights", "arch", "data", "device"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {raw[key]!r}")
    return Recipe(stages=stages, model=raw.get("model"), model_options=options, weights=raw.get("weights"),
                  arch=raw.get("arch"), data=raw.get("data"), device=raw.get("device", "cortex-m7"), seed=seed,
                  source=raw)  # fmt: skip


def _stage(index: int, item: Any) -> StageSpec:
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        raise ConfigError(f"stage {index}: each stage is one mapping like '- prune: {{sparsity: 0.9}}', got {item!r}")
    (kind, params), = item.items()
    cls = STAGES.get(kind)
    if cls is None:
        raise ConfigError(f"stage {index}: unknown stage {kind!r} (known: {', '.join(STAGES)})")
    params = params or {}
    if not isinstance(params, dict):
        raise ConfigError(f"stage {index} ({kind}): its settings must be a mapping, got {params!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in params:
        if key not in fields:
            raise ConfigError(f"stage {index} ({kind}): unknown key {key!r} (known: {', '.join(fields)})")
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and name not in params:
            raise ConfigError(f"stage {index} ({kind}): missing required key {name!r}")
    for key, value in params.items():
        _check_value(index, kind, cls, key, value, fields[key].default)
    if isinstance(params.get("ignore"), list):
        params = {**params, "ignore": tuple(params["ignore"])}
    spec = StageSpec(kind, cls(**params), index)
    _check_configs(spec)
    return spec


def _check_value(index: int, kind: str, cls: type, key: str, value: Any, default: Any) -> None:
    where = f"stage {index} ({kind}): {key}"
    choices = _CHOICES.get((cls, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}; got {value!r}")
    if key == "epochs" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"{where} must be a non-negative integer, got {value!r}")
    if key == "lr" and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def _check_configs(spec: StageSpec) -> None:
    """Build the stage's technique config now, so that a bad value fails before any stage runs."""
    from deepslim.pipeline.run import stage_config

    try:
        stage_config(spec)
    except DeepSlimError as exc:
        raise ConfigError(f"{spec.label}: {exc}") from None


def bits_overrides(bits: Any) -> tuple[int, dict[str, int | None]]:
    """``bits: 5`` or ``bits: {default: 5, "re:fc.*": 8}`` as (default, overrides)."""
    if isinstance(bits, dict):
        rest = {k: v for k, v in bits.items() if k != "default"}
        return bits.get("default", 8), rest
    return bits, {}
