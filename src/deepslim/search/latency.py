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

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._hooks import hooked
from deepslim._io import atomic_path
from deepslim.errors import ConfigError, ExportError
from deepslim.search.table_check import TableCheck as TableCheck  # the check's names stay importable from here
from deepslim.search.table_check import check_table as check_table
from deepslim.search.table_check import kendall_tau as kendall_tau

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime",)
# The statistic of a timing's rounds × block runs: the minimum is the one a loaded machine moves least (two runs of
# the same 45 ResNet-20 policies here agreed within 3.2% (p50) / 6.7% (p90) on minimums, 4.8% / 17% on medians).
STAT = "min_ms"
MIN_BAND = 0.10  # the least error band a calibrated table is trusted to (the issue's ±10 %)
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


def machine_key(runtime: str = "onnxruntime", threads: int = 1) -> str:
    """What a latency table is valid for: this CPU model and core count, the runtime's version, the threads."""
    from deepslim.analysis.calibrate import cpu_name

    cpu = cpu_name()
    version = "?"
    if runtime == "onnxruntime":
        import onnxruntime

        version = onnxruntime.__version__
    text = f"{cpu}|{os.cpu_count()}|{runtime}-{version}|threads={threads}|{STAT}"
    return f"{runtime}-{version}-t{threads}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepslim" / "latency"


class LatencyTable:
    """Per-layer latencies on ``runtime`` (see the module docstring), cached in ``cache_dir/<machine key>.json``.

    ``timer`` (layer keys -> milliseconds) and ``model_timer`` ((model, example input) pairs -> milliseconds) replace
    the ONNX Runtime measurements; ``model_timer=None`` with a custom ``timer`` means no end-to-end measurement.
    """

    def __init__(self, *, runtime: str = "onnxruntime", threads: int = 1,
                 cache_dir: str | os.PathLike[str] | None = None,
                 timer: LayerTimer | None = None, model_timer: ModelTimer | None = None) -> None:  # fmt: skip
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r} for latency tables; choose one of {', '.join(RUNTIMES)}")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.runtime, self.threads = runtime, threads
        self.timer = timer or (lambda keys: time_layers(keys, threads=threads))
        self.model_timer = model_timer if timer is None and model_timer is None else model_timer
        self._runs: Callable[[Sequence[tuple[nn.Module, Any]], int], list[list[float]]] | None = None
        self.kept = KeptFiles()  # the files of the last end-to-end measurement, for the node table
        if timer is None and model_timer is None:
            self.model_timer = lambda pairs: time_models(pairs, threads=threads, keep=self.kept)
            self._runs = lambda pairs, runs: time_models_runs(pairs, runs, threads=threads)
        self.key = machine_key(runtime, threads) if timer is None else "custom"
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


# -- the real timers: ONNX Runtime in a process of its own -------------------------------------------------------------

def _run_timer(files: list[tuple[str, list[int]]], threads: int, rounds: int, block: int) -> list[float]:
    cmd = json.dumps({"files": files, "threads": threads, "rounds": rounds, "block": block})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = str(Path(__file__).with_name("_timer.py"))  # run as a script: the child imports no deepslim
    proc = subprocess.run([sys.executable, script], input=cmd, capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExportError(f"the latency timer failed: {tail}")
    return [float(t) for t in json.loads(proc.stdout)[STAT]]


def time_layers(keys: Sequence[LayerKey], *, threads: int = 1, rounds: int = 5, block: int = 5) -> list[float]:
    """Each layer as its own ONNX graph, timed in ONNX Runtime (one process for the batch, interleaved)."""
    import onnx

    from deepslim.search._layer_onnx import layer_graph

    with tempfile.TemporaryDirectory() as work:
        files = []
        for i, key in enumerate(keys):
            path = Path(work) / f"layer{i}.onnx"
            onnx.save(layer_graph(key), str(path))
            files.append((str(path), list(key.in_shape)))
        return _run_timer(files, threads, rounds, block)


def export_model(model: nn.Module, path: Path, example_input: Any) -> None:
    """The toolkit's export (:func:`deepslim.export.export_onnx`: quantized layers as their integer graph), which
    the end-to-end timer and the node table both time."""
    from deepslim.export import export_onnx

    export_onnx(model, path, example_input=example_input)


class KeptFiles:
    """The files of a table's last end-to-end measurement (:func:`time_models`), kept for the node table: the
    calibration and :func:`~deepslim.search.table_check.check_table` time each model end to end and sum its nodes
    (:meth:`~deepslim.search.node_table.NodeTable.raw_model`), and one export of it is enough — the export is most
    of what a model costs there (16–33 s for a MobileNetV2 at load 1–3, session 8). A file is taken at most once,
    by the same model object, unchanged in structure (:func:`_structure`: the exported graph's nodes depend on the
    modules, tensor shapes and settings, not on weight values), for the same input shape; the next measurement
    removes what was not taken, and so does the table going away."""

    def __init__(self) -> None:
        self._dir: str | None = None
        self._batches = 0
        self._files: dict[int, tuple[weakref.ref[nn.Module], tuple[Any, ...], Path]] = {}

    def fresh(self) -> Path:
        """A new directory for the next measurement's files (the previous ones removed)."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="deepslim-e2e-")
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._files.clear()
        for old in Path(self._dir).iterdir():
            shutil.rmtree(old, ignore_errors=True)
        self._batches += 1
        return Path(self._dir) / str(self._batches)

    def keep(self, model: nn.Module, shape: Sequence[int], path: Path) -> None:
        self._files[id(model)] = (weakref.ref(model), _structure(model, shape), path)

    def take(self, model: nn.Module, shape: Sequence[int]) -> Path | None:
        """The kept file of ``model`` at input ``shape`` (the caller removes its folder when done), else None."""
        ref, structure, path = self._files.pop(id(model), (None, None, None))
        if path is None or ref is None or ref() is not model or structure != _structure(model, shape):
            if path is not None:
                shutil.rmtree(path.parent, ignore_errors=True)
            return None
        return path


def _structure(model: nn.Module, shape: Sequence[int]) -> tuple[Any, ...]:
    """What an exported graph's nodes depend on: the input shape, each module's type and plain settings (bits, a
    dynamic flag, …) and each tensor's name, shape and dtype."""
    plain = (bool, int, float, str, type(None))
    modules = tuple((name, type(m).__qualname__, tuple(sorted((k, v) for k, v in vars(m).items()
                                                              if isinstance(v, plain) and k != "training"
                                                              and not k.startswith("_"))))
                    for name, m in model.named_modules())  # fmt: skip
    tensors = tuple((k, tuple(t.shape), str(t.dtype)) for k, t in model.state_dict(keep_vars=True).items()
                    if isinstance(t, torch.Tensor))  # fmt: skip
    return tuple(shape), modules, tensors


def time_models(pairs: Sequence[tuple[nn.Module, Any]], *, threads: int = 1, rounds: int = 10, block: int = 5,
                keep: KeptFiles | None = None) -> list[float]:  # fmt: skip
    """Whole models timed in ONNX Runtime, interleaved (one run of :func:`time_models_runs`)."""
    return time_models_runs(pairs, 1, threads=threads, rounds=rounds, block=block, keep=keep)[0]


def time_models_runs(pairs: Sequence[tuple[nn.Module, Any]], runs: int, *, threads: int = 1, rounds: int = 10,
                     block: int = 5, keep: KeptFiles | None = None) -> list[list[float]]:  # fmt: skip
    """Whole models (quantized ones as their integer graphs) exported once and timed in ONNX Runtime, interleaved,
    in ``runs`` processes one after another (one list of times per run); NaN for a model the export refuses (logged:
    a check is skipped, the search goes on). ``keep``: the files stay there for the node table (:class:`KeptFiles`)."""
    with contextlib.ExitStack() as stack:
        work = keep.fresh() if keep is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        files, index = [], []
        for i, (model, x) in enumerate(pairs):
            path = _export_for_timer(model, x, work / f"model{i}" / "model.onnx")
            if path is None:
                continue
            files.append((str(path), list(x.shape)))
            index.append(i)
            if keep is not None:
                keep.keep(model, x.shape, path)
        results = [_run_timer(files, threads, rounds, block) if files else [] for _ in range(max(1, runs))]
    out = []
    for times in results:
        found = dict(zip(index, times, strict=True))
        out.append([found.get(i, float("nan")) for i in range(len(pairs))])
    return out


def _export_for_timer(model: nn.Module, x: Any, path: Path) -> Path | None:
    """``model`` exported at ``path`` (its folder made); None, logged, when the export refuses it."""
    from deepslim.errors import DeepSlimError

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_model(model, path, x)
    except DeepSlimError as exc:
        log.warning("end-to-end latency not measured: %s", exc)
        return None
    return path


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
