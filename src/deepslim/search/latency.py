"""Latency you can trust: a per-layer latency table measured on the target runtime, checked end to end.

Each distinct layer — kind × input shape × channels × kernel × precision — is exported as its own one-layer ONNX
model and timed once in ONNX Runtime (1 intra-op thread by default) in a process of its own, interleaved with the
other layers measured with it; the times are cached on disk per machine and runtime (CPU model, core count, runtime
version, threads), so a second search on the same machine measures nothing it has seen. A policy's predicted latency
is the sum of its layers' entries, mapped through ``scale × sum + offset`` fitted to end-to-end measurements of whole
models (what the table leaves out: activations, pooling, additions, the runtime's fusions and per-run overhead).
:func:`~deepslim.search.table_check.check_table` measures random policies end to end and reports the table's error
and rank correlation beside the MAC count's (the proxy other tools optimise): at 0.29× the MACs MobileNetV2 ran at
0.49× the latency here.
Layer sums miss what ONNX Runtime does to a mixed int8/float graph (float convolutions next to integer ones leave
NCHWc, transposes and conversions where the precision changes); :mod:`deepslim.search.node_table` times the nodes of
the optimized graph itself, and ``check_table(..., nodes=...)`` reports both.

The layer timer and the end-to-end timer are plain callables, so tests give deterministic fakes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim._io import atomic_path
from deepslim.errors import ConfigError
from deepslim.search._ort_timing import STAT as STAT  # the real timers' names stay importable from here
from deepslim.search._ort_timing import WINDOW_S as WINDOW_S
from deepslim.search._ort_timing import ExportedOnce as ExportedOnce
from deepslim.search._ort_timing import KeptFiles as KeptFiles
from deepslim.search._ort_timing import _run_timer as _run_timer
from deepslim.search._ort_timing import export_model as export_model
from deepslim.search._ort_timing import time_layers as time_layers
from deepslim.search._ort_timing import time_models as time_models
from deepslim.search._ort_timing import time_models_runs as time_models_runs
from deepslim.search.table_check import TableCheck as TableCheck  # the check's names stay importable from here
from deepslim.search.table_check import check_table as check_table
from deepslim.search.table_check import kendall_tau as kendall_tau

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime",)
MIN_BAND = 0.10  # the least error band a calibrated table is trusted to (the issue's ±10 %)
# How the real timers time a table's entries: part of the cache file's key (:func:`machine_key`) and of what a resumed
# study must share (``_judging.settings``), so that entries timed another way are neither read back nor judged as if
# timed this way. Session 14 changed it (node entries through IO binding, plus the cost of one more node in a graph
# per node, :data:`~deepslim.search.node_table.GRAPH_NODE`; rounds spread over a window): caches and studies of
# before carry no tag, match none, and are re-measured (caches) or refused (studies). Change it with the protocol.
# Session 15: a batch of new node entries timed twice and again where its timings disagree or its canaries read slow
# (:meth:`~deepslim.search.node_table.NodeTable._timed`), so entries timed once in a slow stretch are not read back.
# The cache file's key carries TIMING; a study records the protocol of the entries that judged it (review R15 L9):
# LAYER_TIMING where the layer table (or an end-to-end measurement) judged, whose entries are timed as in session 14,
# so such a study of session 14 still resumes, and the node table's (:attr:`NodeTable.timing
# <deepslim.search.node_table.NodeTable.timing>`: TIMING, plus its settings where not the defaults) where it judged.
# Session 17: a node entry is one timer process's gross time less that process's own trivial graph (node_table._net),
# no longer each node's least gross time less the least trivial graph of any process (which left the gap between the
# processes' overheads in every entry): older caches are re-measured and studies the node table judged are refused on
# resume (their frames were fitted on the other entries; review R17 M2).
TIMING = "iobind+graph-node+twins+own-overhead"
LAYER_TIMING = "iobind+graph-node"
LayerTimer = Callable[[Sequence["LayerKey"]], list[float]]
ModelTimer = Callable[[Sequence[tuple[nn.Module, Any]]], list[float]]


@dataclass(frozen=True)
class LayerKey:
    """One distinct layer as the runtime sees it (a convolution or linear layer and its input shape)."""

    kind: str  # "conv1d" | "conv2d" | "linear" | "qdq" (an int8 conversion pair alone)
    in_shape: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    int8: bool = False

    @property
    def text(self) -> str:
        """The key as canonical JSON (the table's key on disk)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "qdq":
            return self.in_shape
        if self.kind == "linear":
            return (*self.in_shape[:-1], self.out_channels)
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
               zip(self.in_shape[2:], self.kernel, self.stride, self.padding, self.dilation, strict=True)]  # fmt: skip
        return (self.in_shape[0], self.out_channels, *out)

    @property
    def macs(self) -> int:
        if self.kind == "qdq":
            return 0
        if self.kind == "linear":
            return int(np.prod(self.in_shape)) * self.out_channels
        cin = self.in_shape[1]
        return int(np.prod(self.out_shape) * (cin // self.groups) * np.prod(self.kernel))


def layer_keys(model: nn.Module, example_input: Any, int8: Mapping[str, bool]) -> dict[str, LayerKey]:
    """Each convolution and linear layer of a float ``model`` (by name) as the runtime will run it; ``int8`` says
    which will be quantized. Layers called more than once keep their first call's shape."""
    found: dict[str, LayerKey] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            if name not in found and args and isinstance(args[0], torch.Tensor):
                found[name] = _key(m, tuple(args[0].shape), bool(int8.get(name, False)))

        return hook

    layers = {name: m for name, m in model.named_modules()
              if type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) and not isinstance(getattr(m, "padding", 0), str)}
    with hooked(layers, forward=record), torch.no_grad():
        was = model.training
        model.eval()
        model(*(example_input if isinstance(example_input, tuple) else (example_input,)))
        model.train(was)
    return found


def _key(m: nn.Module, shape: tuple[int, ...], int8: bool) -> LayerKey:
    if isinstance(m, nn.Linear):
        return LayerKey("linear", shape, m.out_features, bias=m.bias is not None, int8=int8)
    assert isinstance(m, (nn.Conv1d, nn.Conv2d))
    return LayerKey("conv2d" if isinstance(m, nn.Conv2d) else "conv1d", shape, m.out_channels,
                    tuple(m.kernel_size), tuple(m.stride), tuple(m.padding), tuple(m.dilation),  # type: ignore[arg-type]
                    m.groups, m.bias is not None, int8)  # fmt: skip


def timing(window_s: float = WINDOW_S, protocol: str = TIMING) -> str:
    """The timing protocol of a table whose entries spread their rounds over ``window_s`` seconds (:data:`TIMING`)."""
    return f"{protocol}|window={window_s:g}"


def machine_key(runtime: str = "onnxruntime", threads: int = 1, window_s: float = WINDOW_S) -> str:
    """What a latency table is valid for: this CPU model and core count, the runtime's version, the threads, and how
    its entries are timed (:func:`timing`)."""
    from deepslim.analysis.calibrate import cpu_name

    cpu = cpu_name()
    version = "?"
    if runtime == "onnxruntime":
        import onnxruntime

        version = onnxruntime.__version__
    text = f"{cpu}|{os.cpu_count()}|{runtime}-{version}|threads={threads}|{STAT}|{timing(window_s)}"
    return f"{runtime}-{version}-t{threads}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepslim" / "latency"


class LatencyTable:
    """Per-layer latencies on ``runtime`` (see the module docstring), cached in ``cache_dir/<machine key>.json``.

    ``timer`` (layer keys -> milliseconds) and ``model_timer`` ((model, example input) pairs -> milliseconds) replace
    the ONNX Runtime measurements; ``model_timer=None`` with a custom ``timer`` means no end-to-end measurement.
    ``window_s``: the seconds the real timers spread the rounds of the cached entries over (layers here, nodes in
    :class:`~deepslim.search.node_table.NodeTable`; :data:`WINDOW_S` = 3 s, paid once per batch of new entries; part
    of the cache key). ``model_window_s``: the same for end-to-end timings (checks, calibration, finals, the
    ``measured`` latency model's pair runs), which are repeated per model or trial: 0 (back to back) unless asked.
    """

    def __init__(self, *, runtime: str = "onnxruntime", threads: int = 1,
                 cache_dir: str | os.PathLike[str] | None = None, timer: LayerTimer | None = None,
                 model_timer: ModelTimer | None = None, window_s: float = WINDOW_S,
                 model_window_s: float = 0.0) -> None:  # fmt: skip
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r} for latency tables; choose one of {', '.join(RUNTIMES)}")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        for name, value in (("window_s", window_s), ("model_window_s", model_window_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
        self.runtime, self.threads = runtime, threads
        self.window_s, self.model_window_s = float(window_s), float(model_window_s)
        # How the entries that judged a search's trials were timed (what a resumed study must share): the layer
        # entries' protocol (``_judging.judged_timing`` records the node table's instead where it judges).
        self.timing = timing(self.window_s, LAYER_TIMING)
        self.timer = timer or (lambda keys: time_layers(keys, threads=threads, window_s=self.window_s))
        self.model_timer = model_timer if timer is None and model_timer is None else model_timer
        self._runs: Callable[[Sequence[tuple[nn.Module, Any]], int], list[list[float]]] | None = None
        self.kept = KeptFiles()  # the files of the last end-to-end measurement, for the node table
        self.once: ExportedOnce | None = None  # a model the real timer copies from one export (check_table's dense)
        if timer is None and model_timer is None:
            self.model_timer = lambda pairs: time_models(pairs, threads=threads, keep=self.kept,
                                                         window_s=self.model_window_s, once=self.once)  # fmt: skip
            self._runs = lambda pairs, runs: time_models_runs(pairs, runs, threads=threads,
                                                              window_s=self.model_window_s)  # fmt: skip
        self.key = machine_key(runtime, threads, self.window_s) if timer is None else "custom"
        self.path = None if timer is not None else Path(cache_dir or default_cache_dir()) / f"{self.key}.json"
        self.entries: dict[str, float] = self._load()
        self.measured = 0  # entries this table measured (not read from the cache)
        self.scale, self.offset, self.change_weight = 1.0, 0.0, 1.0
        self.points: list[tuple[float, float]] = []  # (raw sum, measured) pairs the calibration was fitted to
        self.error_band = MIN_BAND  # the largest relative error on the calibration's points, at least MIN_BAND
        self.floor: dict[str, Any] | None = None  # the space's floor measured by the feasibility check (frame.py)

    def _load(self) -> dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            return {str(k): float(v) for k, v in doc.get("entries", {}).items()}
        except (OSError, ValueError, AttributeError):
            log.warning("ignoring an unreadable latency table %s", self.path)
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        merged = {**self._load(), **self.entries}  # another process may have added entries meanwhile
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"machine": self.key, "entries": merged}, indent=0, sort_keys=True))

    @property
    def end_to_end(self) -> bool:
        """Whether whole models can be measured (checks and calibration)."""
        return self.model_timer is not None

    def layer_ms(self, keys: Iterable[LayerKey]) -> list[float]:
        """Each key's latency, measuring (in one batch) the ones the table lacks.

        An int8 layer is timed with a float->uint8->float conversion on its input and output; inside a chain of int8
        layers the activations stay uint8, so half of each side's conversion pair (``qdq`` keys) is taken off, down
        to at least a fifth of the time measured (:meth:`sequence_ms` adds them back where the precision changes)."""
        keys = list(keys)
        needed = {k.text: k for k in keys}
        for k in keys:
            if k.int8:
                for shape in (k.in_shape, k.out_shape):
                    pair = LayerKey("qdq", shape, 0)
                    needed[pair.text] = pair
        missing = [k for t, k in needed.items() if t not in self.entries]
        if missing:
            times = self.timer(missing)
            self.entries.update({k.text: float(t) for k, t in zip(missing, times, strict=True)})
            self.measured += len(missing)
            self._save()
        return [self._effective(k) for k in keys]

    def _effective(self, key: LayerKey) -> float:
        ms = self.entries[key.text]
        if not key.int8:
            return ms
        pairs = [self.entries[LayerKey("qdq", s, 0).text] for s in (key.in_shape, key.out_shape)]
        return max(0.2 * ms, ms - 0.5 * sum(pairs))

    def sequence_ms(self, keys: Sequence[LayerKey]) -> float:
        """The layers' entries summed in execution order, with the float<->int8 conversions where the precision
        changes: an int8 layer after a float one (or first) pays for quantizing its input, one before a float layer
        (or last) for dequantizing its output. (Order approximates data flow: exact for chains, close for residual
        blocks.)"""
        return sum(self.parts(keys))

    def parts(self, keys: Sequence[LayerKey]) -> tuple[float, float]:
        """(the layers' entries, the conversions where the precision changes) of :meth:`sequence_ms`."""
        layers = float(sum(self.layer_ms(keys)))
        changes = 0.0
        for i, k in enumerate(keys):
            if not k.int8:
                continue
            if i == 0 or not keys[i - 1].int8:
                changes += 0.5 * self.entries[LayerKey("qdq", k.in_shape, 0).text]
            if i == len(keys) - 1 or not keys[i + 1].int8:
                changes += 0.5 * self.entries[LayerKey("qdq", k.out_shape, 0).text]
        return layers, changes

    def predict_keys(self, keys: Sequence[LayerKey]) -> float:
        """Predicted end-to-end latency (ms) of a model whose layers, in execution order, are ``keys``."""
        layers, changes = self.parts(keys)
        return self.scale * (layers + self.change_weight * changes) + self.offset

    def raw(self, model: nn.Module, example_input: Any, int8: Mapping[str, bool]) -> float:
        """The layers' entries in sequence (:meth:`sequence_ms`), before calibration."""
        return self.sequence_ms(list(layer_keys(model, example_input, int8).values()))

    def predict(self, model: nn.Module, example_input: Any, int8: Mapping[str, bool]) -> float:
        """Predicted end-to-end latency (ms) of float ``model`` with the ``int8`` layers quantized."""
        return self.predict_keys(list(layer_keys(model, example_input, int8).values()))

    def calibrate(self, points: Sequence[tuple[float, float]]) -> None:
        """Fit ``scale`` and ``offset`` to (raw sum, measured) pairs (:func:`fit_line`)."""
        self.points, fitted = fit_line(points)
        if fitted is not None:
            self.scale, self.offset = fitted
            self.error_band = _band([(self.scale * r + self.offset, m) for r, m in self.points])

    def pin(self, dense: tuple[float, float], floor: tuple[float, float]) -> bool:
        """Make the prediction the line through the dense model's and the space's floor's (raw, ms) points, both
        measured end to end in the search's frame (raw: :meth:`parts` weighted as :meth:`predict_keys` weighs
        them); False (nothing changed) unless its slope is positive. The calibration's :attr:`points` stay (the pin
        is in ``floor``) and :attr:`error_band` becomes the pinned line's error on them."""
        (rd, md), (rf, mf) = dense, floor
        if abs(rf - rd) < 1e-12 or (mf - md) / (rf - rd) <= 0:
            return False
        self.scale = (mf - md) / (rf - rd)
        self.offset = md - self.scale * rd
        self.error_band = _band([(self.scale * r + self.offset, m) for r, m in self.points])
        return True

    def calibrate_parts(self, points: Sequence[tuple[tuple[float, float], float]]) -> None:
        """Fit ``measured ≈ scale × (layers + change_weight × conversions) + offset`` to ((layers, conversions),
        measured) points — the conversions where the precision changes cost more in a whole graph than the table's
        pairs (the integer kernels' NHWC layout adds transposes there) — with four points or more whose
        conversions differ; else :meth:`calibrate` on the sums."""
        good = [(p, m) for p, m in points if m == m]
        a = np.array([[lay, ch, 1.0] for (lay, ch), _ in good]) if good else np.zeros((0, 3))
        meas = np.array([m for _, m in good])
        if len(good) >= 4 and np.ptp(a[:, 1]) > 1e-9 and np.linalg.matrix_rank(a) == 3:
            (scale, weight, offset), *_ = np.linalg.lstsq(a, meas, rcond=None)
            if scale > 0 and weight >= 0:
                self.scale, self.change_weight, self.offset = float(scale), float(weight / scale), float(offset)
                self.points = [(float(lay + self.change_weight * ch), float(m)) for (lay, ch), m in good]
                self.error_band = _band([(self.scale * (lay + self.change_weight * ch) + self.offset, m)
                                         for (lay, ch), m in good])  # fmt: skip
                return
        self.change_weight = 1.0
        self.calibrate([(lay + ch, m) for (lay, ch), m in good])

    def measure(self, pairs: Sequence[tuple[nn.Module, Any]]) -> list[float] | None:
        """End-to-end latency of whole models (each with its example input), interleaved; None without a timer,
        NaN for a model that could not be measured."""
        return self.model_timer(pairs) if self.model_timer is not None and pairs else None

    def measure_runs(self, pairs: Sequence[tuple[nn.Module, Any]], runs: int) -> list[list[float]] | None:
        """``runs`` interleaved end-to-end measurements of the same models (each run a process of its own; the real
        timer exports the models once): one list of times per run; None without a timer."""
        if self.model_timer is None or not pairs:
            return None
        if self._runs is not None:
            return self._runs(pairs, runs)
        return [self.model_timer(pairs) for _ in range(runs)]


# -- how good the table is ---------------------------------------------------------------------------------------------

def fit_line(points: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
    """The (raw, measured) pairs kept (NaN measurements — models that could not be measured — left out) and the
    ``(scale, offset)`` mapping raw predictions onto them: least squares with two distinct raws or more and a positive
    slope, else the offset alone; None without any pair."""
    good = [(float(r), float(m)) for r, m in points if m == m]
    if not good:
        return good, None
    raw, meas = np.array([p[0] for p in good]), np.array([p[1] for p in good])
    if len(good) >= 2 and np.ptp(raw) > 1e-9:
        scale, offset = np.polyfit(raw, meas, 1)
        if scale > 0:
            return good, (float(scale), float(offset))
    return good, (1.0, float(np.mean(meas - raw)))


def _band(pairs: Sequence[tuple[float, float]]) -> float:
    """The largest relative error of (predicted, measured) pairs, at least :data:`MIN_BAND`."""
    return max([MIN_BAND] + [abs(p / m - 1) for p, m in pairs if m > 0])
