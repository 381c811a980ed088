"""Recipes: an ordered list of stages (techniques from the registry, and train, finetune, distill, encode, export).

A recipe is data: a :class:`Recipe` built in code, loaded from YAML or JSON, or proposed by a search is the same
object, and ``Recipe.from_dict(r.to_dict()) == r``. In YAML::

    model: lenet5            # optional: the CLI's MODEL argument wins
    weights: trained.pt      # optional: a state dict loaded into the model (the CLI's --weights wins)
    arch: my_net.py:build    # optional: the architecture of a state-dict model file (the CLI's --arch wins)
    data: digits             # optional: the CLI's --data wins
    device: cortex-m7        # energy and latency estimates are for this device
    seed: 0
    nproc: 1                 # train, finetune and distill stages on N data-parallel processes (torchrun)
    stages:
      - train: {epochs: 30, lr: 0.002}
      - prune: {method: magnitude, sparsity: 0.92, schedule: gradual, epochs: 20}
      - cluster: {bits: 5, overrides: {"re:features.*": 8}, epochs: 10}
      - encode: {}

Every stage and every key is checked when the recipe is read, and an error names the stage (its position and
kind) and the key; layer names are checked against the model before the first stage runs (:mod:`.checks`). A run
directory's ``recipe.yaml`` is the recipe as run (the command line's model, data, device and seed filled in, every
setting explicit) plus a ``context`` mapping that records what the run saw; ``context`` is ignored when the file is
loaded again. docs/recipes.md is the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepslim._io import atomic_path
from deepslim.errors import ConfigError
from deepslim.pipeline.stages import Stage, stage_from_dict, stage_to_dict

_TOP_KEYS = ("name", "description", "model", "model_options", "weights", "arch", "data", "device", "seed", "nproc",
             "stages", "context")  # fmt: skip
BUILTIN = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Stages and the settings of a run. ``model``, ``weights``, ``arch``, ``model_options`` and ``data`` are
    optional (the command line or ``run_recipe``'s arguments give them otherwise). ``nproc`` above 1 runs the
    train, finetune and distill stages data-parallel on that many processes (:func:`deepslim.train.fit_ddp`)."""

    stages: tuple[Stage, ...]
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    arch: str | None = None
    data: str | None = None
    device: str = "cortex-m7"
    seed: int = 0
    nproc: int = 1
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ConfigError("a recipe needs at least one stage")
        for key in ("model", "weights", "arch", "data", "name", "description"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"recipe {key} must be a string, got {value!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"recipe device must be a device name, got {self.device!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.nproc, bool) or not isinstance(self.nproc, int) or self.nproc < 1:
            raise ConfigError(f"nproc must be a positive number of processes, got {self.nproc!r}")
        if not isinstance(self.model_options, Mapping):
            raise ConfigError(f"model_options must be a mapping, got {self.model_options!r}")
        object.__setattr__(self, "model_options", dict(self.model_options))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON/YAML data, every setting explicit; stages last (the settings read first)."""
        doc: dict[str, Any] = {k: getattr(self, k) for k in ("name", "description") if getattr(self, k)}
        doc.update({k: getattr(self, k) for k in ("model", "weights", "arch", "data") if getattr(self, k) is not None})
        if self.model_options:
            doc["model_options"] = json.loads(json.dumps(self.model_options))
        doc.update(device=self.device, seed=self.seed, nproc=self.nproc, stages=[stage_to_dict(s) for s in self.stages])
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "recipe") -> Recipe:
        """Read and check a recipe; every error names the stage and key at fault (``where``: the file, in errors)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a recipe is a mapping with a 'stages' list")
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
        stages_raw = data.get("stages")
        if not isinstance(stages_raw, list) or not stages_raw:
            raise ConfigError(f"{where}: 'stages' must be a non-empty list")
        stages = tuple(stage_from_dict(item, i) for i, item in enumerate(stages_raw, start=1))
        settings = {k: data[k] for k in _TOP_KEYS if k in data and k not in ("stages", "context")}
        if settings.get("model_options") is None:
            settings.pop("model_options", None)
        try:
            return cls(stages=stages, **settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_yaml(self, context: Mapping[str, Any] | None = None) -> str:
        doc = self.to_dict()
        if context is not None:
            stages = doc.pop("stages")
            doc["context"] = dict(context)
            doc["stages"] = stages
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)

    def save(self, path: str | os.PathLike[str], *, context: Mapping[str, Any] | None = None) -> Path:
        """Write the recipe as YAML (atomically); ``context`` (what a run saw) is recorded and ignored on loading."""
        dest = Path(path)
        with atomic_path(dest) as tmp:
            tmp.write_text(self.to_yaml(context))
        return dest

    def fingerprint(self) -> str:
        """A hash of the recipe's data: equal recipes, equal fingerprints (a resumed run checks it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def list_recipes() -> list[str]:
    """Names of the recipes that ship with deepslim (``load_recipe(name)`` loads one)."""
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def load_recipe(spec: str | os.PathLike[str] | Mapping[str, Any] | Recipe) -> Recipe:
    """A recipe from a YAML (or JSON) file, a built-in recipe's name, a dict, or a :class:`Recipe` (returned as is).

    Every error names the stage and key at fault; a duplicate key in the file is an error (YAML would silently keep
    the last one).
    """
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Mapping):
        return Recipe.from_dict(spec)
    path = Path(spec)
    if not path.is_file() and str(spec) in list_recipes():
        path = BUILTIN / f"{spec}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist (built-in recipes: {', '.join(list_recipes())})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} cannot be read: {exc}") from None
    return Recipe.from_dict(read_yaml(text, str(path)), where=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}): YAML would keep only "
                              "the last; give each key once")  # fmt: skip
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str, where: str = "recipe") -> Any:
    """YAML text as data; invalid YAML or a duplicate key is a one-line ``ConfigError`` naming ``where``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"recipe {where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {where} is not valid YAML: {str(exc).splitlines()[0]}") from None
