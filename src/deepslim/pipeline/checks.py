"""Recipe mistakes caught before the first stage runs, against the model itself: a layer name in ``overrides``,
``ignore`` or ``hints`` that matches no layer, a distillation teacher that does not load, an ``encode`` after a
stage that replaces layers. Training for an hour and then failing on a typo is what these checks prevent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from deepslim.config import matches
from deepslim.errors import ConfigError, DeepSlimError
from deepslim.models import load_model
from deepslim.pipeline.stages import DistillStage, EncodeStage, Stage, TechniqueStage


def layer_patterns(config: Any) -> list[tuple[str, str]]:
    """(where, pattern) of every layer name a config addresses: its ``overrides`` keys and ``ignore`` entries."""
    found = [("overrides", p) for p, _ in getattr(config, "overrides", ()) or ()]
    return found + [("ignore", p) for p in getattr(config, "ignore", ()) or ()]


def _unmatched(patterns: Iterable[tuple[str, str]], names: list[str]) -> list[tuple[str, str]]:
    return [(where, p) for where, p in patterns if not any(matches(p, n) for n in names)]


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _hint(names: list[str]) -> str:
    shown = ", ".join(names[:12])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > 12 else shown


def check_recipe(stages: tuple[Stage, ...], model: nn.Module) -> dict[int, nn.Module]:
    """Check every stage against ``model`` (the input model); return the teachers that distill stages name, loaded
    (by stage index). Raises ``ConfigError`` naming the stage, the key and the layer."""
    names = _names(model)
    replaced: str | None = None  # the first stage that swapped layers: later names cannot be checked statically
    teachers: dict[int, nn.Module] = {}
    for index, stage in enumerate(stages, start=1):
        label = f"stage {index} ({stage.kind})"
        if isinstance(stage, TechniqueStage):
            bad = _unmatched(layer_patterns(stage.config), names) if replaced is None else []
            if bad:
                where, pattern = bad[0]
                raise ConfigError(f"{label}: no layer of the model matches {pattern!r} (in {where}); its layers: "
                                  f"{_hint(names)}")  # fmt: skip
            if stage.spec.replaces_layers and replaced is None:
                replaced = f"stage {index} ({stage.kind}: {stage.technique})"
        elif isinstance(stage, EncodeStage) and replaced is not None:
            raise ConfigError(f"{label}: the .dsz archive holds models whose layers are their architecture's, and "
                              f"{replaced} replaces layers with new ones; move encode before it, or drop encode "
                              "and use export (ONNX)")  # fmt: skip
        elif isinstance(stage, DistillStage):
            teacher = _teacher(stage, label) if stage.teacher != "trained" else None
            if teacher is not None:
                teachers[index] = teacher
            if replaced is None:
                _check_hints(stage, label, names, _names(teacher) if teacher is not None else names)
    return teachers


def _teacher(stage: DistillStage, label: str) -> nn.Module:
    # the teacher is loaded now, so a bad spec fails before training; the RNG is left as the run will find it
    with torch.random.fork_rng():
        try:
            return load_model(stage.teacher)
        except DeepSlimError as exc:
            raise type(exc)(f"{label}: teacher {stage.teacher!r}: {exc}") from None


def _check_hints(stage: DistillStage, label: str, student: list[str], teacher: list[str]) -> None:
    for s, t in stage.kd.hints:
        if s not in student:
            raise ConfigError(f"{label}: hints: the student has no layer {s!r}; its layers: {_hint(student)}")
        if t not in teacher:
            raise ConfigError(f"{label}: hints: the teacher has no layer {t!r}; its layers: {_hint(teacher)}")
