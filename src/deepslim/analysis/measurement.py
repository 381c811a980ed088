"""One measurement record: what a model was measured to be (task metric, size, work, bytes on disk, predicted and
measured latency, energy, memory) and under what conditions (device, runtime, threads, machine load).

The record is plain data with a strict JSON round trip, so that the CLI, recipe runs, benchmarks and search all
write and read the same thing (a trial's result travels as its ``to_dict()``). It lives in ``analysis``, below every
layer that reads it; the function that fills it from a model, :func:`deepslim.pipeline.measure`, lives above the
layers it calls (profile, cost model, coding, export, train).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from deepslim.errors import ConfigError

_INT: tuple[type, ...] = (int,)
_REAL: tuple[type, ...] = (int, float)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """A model's measurement. ``None`` means "not measured" (never zero). Latencies are milliseconds per batch of
    the example input; ``estimated_*`` come from the cost model on ``device``, ``measured_latency_ms`` from a real
    runtime (``runtime``, ``threads``); ``load_average`` is ``os.getloadavg()`` when it was taken (a loaded machine
    measures slower); ``seconds`` is how long the measured work took (a recipe stage's running time in a run)."""

    params: int
    nonzero_params: int
    macs: int
    weight_bytes: int
    accuracy: float | None = None  # top-1 on the test split (NaN for tasks without classes)
    metric: str | None = None  # the task's primary metric ("accuracy", "mse", "spearman", ...)
    metric_value: float | None = None
    archive_bytes: int | None = None  # bytes of the model's .dsz archive
    device: str | None = None  # device profile of the estimates
    estimated_latency_ms: float | None = None
    estimated_energy_uj: float | None = None
    measured_latency_ms: float | None = None
    runtime: str | None = None
    threads: int | None = None
    peak_activation_bytes: int | None = None  # most activation bytes alive at once during inference
    seconds: float | None = None
    load_average: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what a caller adds (per-layer rows, archive parts)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = _KINDS.get(f.name)
            if kinds is None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(f"Measurement.{f.name} must be {_KIND_NAMES[kinds]}, got {value!r}")
        if self.load_average is not None:
            if len(self.load_average) != 3 or not all(isinstance(v, _REAL) for v in self.load_average):
                raise ConfigError(f"Measurement.load_average must be three numbers, got {self.load_average!r}")
            object.__setattr__(self, "load_average", tuple(float(v) for v in self.load_average))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (a NaN accuracy of a task without classes stays NaN, as Python's json writes it)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["load_average"] = list(self.load_average) if self.load_average is not None else None
        doc["extra"] = dict(self.extra)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Measurement:
        """The record ``to_dict`` wrote; an unknown key or a value of the wrong type raises ConfigError naming it."""
        if not isinstance(doc, dict):
            raise ConfigError(f"a measurement is a JSON object, got {type(doc).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"unknown measurement key(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(sorted(known))}")  # fmt: skip
        missing = sorted(f.name for f in fields(cls) if f.name in _REQUIRED and f.name not in doc)
        if missing:
            raise ConfigError(f"measurement lacks {', '.join(map(repr, missing))}")
        values = dict(doc)
        if values.get("load_average") is not None:
            values["load_average"] = tuple(values["load_average"])
        if values.get("extra") is None:
            values["extra"] = {}
        return cls(**values)

    def to_row(self, **stage: Any) -> dict[str, Any]:
        """A flat row (``stage`` keys first, ``extra``'s keys beside the fields): a stage in metrics.json."""
        doc = self.to_dict()
        extra = doc.pop("extra")
        clash = sorted(set(extra) & set(doc))
        if clash:
            raise ConfigError(f"Measurement.extra repeats field(s) {clash}")
        return {**stage, **doc, **extra}

    @classmethod
    def from_row(cls, row: dict[str, Any], *, stage_keys: tuple[str, ...] = ()) -> Measurement:
        """The record of a flat row (``to_row``'s, or a metrics.json stage of an earlier version, which lacks the
        newer fields): ``stage_keys`` are dropped, keys that are not fields go to ``extra``."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kept = {k: v for k, v in row.items() if k in known}
        extra = {k: v for k, v in row.items() if k not in known and k not in stage_keys}
        return cls.from_dict({**kept, "extra": extra})


_REQUIRED = ("params", "nonzero_params", "macs", "weight_bytes")
_KINDS: dict[str, tuple[type, ...]] = {
    **{name: _INT for name in ("params", "nonzero_params", "macs", "weight_bytes", "archive_bytes", "threads",
                               "peak_activation_bytes")},
    **{name: _REAL for name in ("accuracy", "metric_value", "estimated_latency_ms", "estimated_energy_uj",
                                "measured_latency_ms", "seconds")},
    **{name: (str,) for name in ("metric", "device", "runtime")},
    "extra": (dict,),
    "load_average": (tuple, list),
}  # fmt: skip
_KIND_NAMES: dict[tuple[type, ...], str] = {_INT: "an integer", _REAL: "a number", (str,): "a string",
                                            (dict,): "an object", (tuple, list): "a list"}  # fmt: skip

