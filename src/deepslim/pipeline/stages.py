"""The stages of a recipe: a technique (its registered config, then optional fine-tuning) or a training/recovery
stage (train, finetune, distill, encode, export). Each is a frozen dataclass and reads and writes one YAML/JSON
form, ``{KIND: {key: value, ...}}``; per-layer policy is always ``overrides: {LAYER or re:PATTERN: value or null}``.

Older recipe files still load: ``quantize: {type: ...}`` is read as ``method``, and per-layer ``bits: {default: b,
LAYER: b}`` as ``bits`` plus ``overrides``; where an older key cannot be read the error names the key that changed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deepslim.compress.prune.masks import MagnitudePruneConfig
from deepslim.compress.prune.schedule import Schedule
from deepslim.config import Config, coerce_enum
from deepslim.errors import ConfigError
from deepslim.techniques import Technique, default_technique, get_technique, kinds, technique_for
from deepslim.train import KDConfig, Optimizer

log = logging.getLogger(__name__)


def _check_epochs(epochs: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")


def _check_lr(lr: Any) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")


@dataclass(frozen=True, kw_only=True)
class TrainStage(Config):
    """Train with the task's loss; masks and codebooks are kept. ``train`` also makes the model the default
    distillation teacher; ``finetune`` (:class:`FinetuneStage`) does not."""

    kind: ClassVar[str] = "train"
    epochs: int
    lr: float = 1e-3
    optimizer: Optimizer = Optimizer.ADAM
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_epochs(self.epochs)
        _check_lr(self.lr)
        coerce_enum(self, "optimizer", Optimizer)
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not self.weight_decay >= 0:  # fmt: skip
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True, kw_only=True)
class FinetuneStage(TrainStage):
    """Train further (recovery); the distillation teacher stays the model after the last ``train`` stage."""

    kind: ClassVar[str] = "finetune"


@dataclass(frozen=True, kw_only=True)
class DistillStage(Config):
    """Knowledge distillation from ``teacher``: "trained" (the model after the last train stage, or the input model
    when there is none) or a model spec; ``kd`` holds temperature, alpha and hints (written flat in YAML)."""

    kind: ClassVar[str] = "distill"
    epochs: int
    teacher: str = "trained"
    lr: float = 1e-3
    kd: KDConfig = field(default_factory=KDConfig)

    def __post_init__(self) -> None:
        _check_epochs(self.epochs)
        _check_lr(self.lr)
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError(f"teacher must be 'trained' or a model spec, got {self.teacher!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "teacher": self.teacher, "lr": self.lr, **self.kd.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillStage:
        own = {k: v for k, v in data.items() if k in ("epochs", "teacher", "lr")}
        kd = KDConfig.from_dict({k: v for k, v in data.items() if k not in own})
        return super().from_dict({**own, "kd": kd})


@dataclass(frozen=True, kw_only=True)
class EncodeStage(Config):
    """Write the ``.dsz`` archive (``huffman: false`` writes fixed-width streams)."""

    kind: ClassVar[str] = "encode"
    huffman: bool = True


@dataclass(frozen=True, kw_only=True)
class ExportStage(Config):
    """Export to ONNX and measure latency in ONNX Runtime (``benchmark: false`` skips the measurement)."""

    kind: ClassVar[str] = "export"
    format: str = "onnx"
    benchmark: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.format != "onnx":
            raise ConfigError(f"format must be one of onnx; got {self.format!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):  # fmt: skip
            raise ConfigError(f"threads must be a positive integer or null, got {self.threads!r}")


@dataclass(frozen=True, kw_only=True)
class TechniqueStage:
    """Apply a registered technique with ``config``, then fine-tune for ``epochs`` at ``lr`` (default: the
    technique's). ``schedule`` gradual or iterative (``rounds``) prunes while it trains (magnitude pruning).

    ``technique`` defaults to the one ``config`` is registered for, so ``TechniqueStage(config=MagnitudePruneConfig(
    sparsity=0.9), epochs=2)`` is a whole stage.
    """

    config: Config
    technique: str = ""
    epochs: int = 0
    lr: float | None = None
    schedule: Schedule = Schedule.ONESHOT
    rounds: int = 3

    def __post_init__(self) -> None:
        tech = get_technique(self.technique) if self.technique else technique_for(self.config)
        if not isinstance(self.config, tech.config):
            raise ConfigError(f"technique {tech.name!r} takes a {tech.config.__name__}, not "
                              f"{type(self.config).__name__}")  # fmt: skip
        object.__setattr__(self, "technique", tech.name)
        _check_epochs(self.epochs)
        object.__setattr__(self, "lr", tech.lr if self.lr is None else self.lr)
        _check_lr(self.lr)
        coerce_enum(self, "schedule", Schedule)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if self.schedule is not Schedule.ONESHOT and not isinstance(self.config, MagnitudePruneConfig):
            raise ConfigError(f"schedule {self.schedule.value!r} prunes while training: it works with magnitude "
                              f"pruning only, not {tech.name!r} (use schedule: oneshot)")  # fmt: skip
        if self.schedule is Schedule.GRADUAL and self.epochs == 0:
            raise ConfigError("a gradual schedule needs epochs > 0 (sparsity rises while the model trains)")

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def spec(self) -> Technique:
        """The registered technique."""
        return get_technique(self.technique)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"method": self.technique, **self.config.to_dict(), "epochs": self.epochs,
                               "lr": self.lr}  # fmt: skip
        if self.schedule is not Schedule.ONESHOT:
            doc["schedule"] = self.schedule.value
            if self.schedule is Schedule.ITERATIVE:
                doc["rounds"] = self.rounds
        return doc


Stage = TrainStage | DistillStage | EncodeStage | ExportStage | TechniqueStage
RECOVERY: dict[str, type[Config]] = {c.kind: c for c in (TrainStage, FinetuneStage, DistillStage, EncodeStage,
                                                           ExportStage)}  # fmt: skip
_STAGE_KEYS = ("epochs", "lr", "schedule", "rounds")


def stage_kind(stage: Stage) -> str:
    return stage.kind


def stage_to_dict(stage: Stage) -> dict[str, Any]:
    """``{KIND: {settings}}``, the form a recipe file writes."""
    return {stage.kind: stage.to_dict()}


def stage_from_dict(item: Any, index: int) -> Stage:
    """A stage from its recipe form (a mapping of one kind to its settings, or a bare kind name); errors name the
    stage's position and kind."""
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ConfigError(f"stage {index}: each stage is one mapping like '- prune: {{sparsity: 0.9}}', got {item!r}")
    ((kind, params),) = item.items()
    known = [*RECOVERY, *kinds()]
    if kind not in known:
        raise ConfigError(f"stage {index}: unknown stage {kind!r} (known: {', '.join(known)})")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ConfigError(f"stage {index} ({kind}): its settings must be a mapping, got {params!r}")
    try:
        if kind in RECOVERY:
            return _recovery(RECOVERY[kind], dict(params))  # type: ignore[return-value]
        return _technique_stage(kind, dict(params))
    except ConfigError as exc:
        raise ConfigError(f"stage {index} ({kind}): {exc}") from None


def _recovery(cls: type[Config], params: dict[str, Any]) -> Config:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "kd"]  # type: ignore[arg-type]
    if cls is DistillStage:
        names += [f.name for f in dataclasses.fields(KDConfig)]
    _unknown(params, names)
    _required(params, cls)
    return _from_dict(cls, params)


def _technique_stage(kind: str, params: dict[str, Any]) -> TechniqueStage:
    _legacy(kind, params)
    method = params.pop("method", None)
    tech = default_technique(kind) if method is None else get_technique(method)
    if tech.kind != kind:
        raise ConfigError(f"method {tech.name!r} is a {tech.kind} technique: write it as '- {tech.kind}: "
                          f"{{method: {tech.name}, ...}}'")  # fmt: skip
    fields = {f.name: f for f in dataclasses.fields(tech.config)}  # type: ignore[arg-type]
    _unknown(params, ["method", *fields, *_STAGE_KEYS])
    stage = {k: params.pop(k) for k in _STAGE_KEYS if k in params}
    schedule = stage.get("schedule", Schedule.ONESHOT)  # checked before the config: "sometimes" is the error
    if not isinstance(schedule, Schedule) and schedule not in {s.value for s in Schedule}:
        raise ConfigError(f"schedule must be one of {', '.join(s.value for s in Schedule)}; got {schedule!r}")
    if "qat" in fields and "qat" not in params:  # a fine-tuned quantization learns its scales unless told not to
        params["qat"] = isinstance(stage.get("epochs", 0), int) and stage.get("epochs", 0) > 0
    _required(params, tech.config, f" ({tech.name})")
    config = _from_dict(tech.config, params)
    for key in ("epochs", "rounds"):
        if key in stage and (isinstance(stage[key], bool) or not isinstance(stage[key], int)):
            raise ConfigError(f"{key} must be a non-negative integer, got {stage[key]!r}")
    return TechniqueStage(technique=tech.name, config=config, **stage)


def _legacy(kind: str, params: dict[str, Any]) -> None:
    """Read the older forms of a technique stage (``type``; ``bits`` as a per-layer mapping) in place."""
    if "type" in params:
        if "method" in params:
            raise ConfigError("'type' is the older name of 'method': give only 'method'")
        legacy = params.pop("type")
        params["method"] = {"fp16": "half", "bf16": "half"}.get(legacy, legacy)
        if legacy in ("fp16", "bf16"):
            params.setdefault("dtype", legacy)
        log.info("recipe: %s 'type: %s' is read as 'method: %s'", kind, legacy, params["method"])
    bits = params.get("bits")
    if isinstance(bits, Mapping):
        if params.get("overrides"):
            raise ConfigError("per-layer bits go in 'overrides' ({LAYER: bits}); 'bits' as a mapping is the older "
                              "form, and both were given: write 'bits: B' and move its layers to 'overrides'")
        params["overrides"] = {k: v for k, v in bits.items() if k != "default"}
        if "default" in bits:
            params["bits"] = bits["default"]
        else:
            del params["bits"]


def _unknown(params: Mapping[str, Any], names: list[str]) -> None:
    for key in params:
        if key not in names:
            raise ConfigError(f"unknown key {key!r} (known: {', '.join(names)})")


def _required(params: Mapping[str, Any], cls: type[Any], what: str = "") -> None:
    for f in dataclasses.fields(cls):
        if f.init and f.name not in params and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:  # fmt: skip
            raise ConfigError(f"missing required key {f.name!r}{what}")


def _from_dict(cls: type[Any], params: dict[str, Any]) -> Any:
    try:
        return cls.from_dict(params)
    except ConfigError as exc:  # "EncodeStage.huffman must be ..." reads as "huffman must be ..." in a stage
        message = str(exc)
        for name in (cls.__name__, "KDConfig"):
            message = message.replace(f"{name}.", "").replace(f"{name}: ", "")
        raise ConfigError(message) from None
