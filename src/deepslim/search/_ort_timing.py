"""The real timers of the latency tables: ONNX Runtime in a process of its own (``_timer.py``, run as a script that
imports no deepslim), timing one-layer graphs (:func:`time_layers`) and whole models exported with the toolkit's
exporter (:func:`time_models`, :func:`time_models_runs`), interleaved; the files of a table's last end-to-end
measurement are kept for its node table (:class:`KeptFiles`). :mod:`deepslim.search.latency` holds the tables that
call them (and re-exports these names).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepslim.errors import ExportError

if TYPE_CHECKING:
    from deepslim.search.latency import LayerKey

log = logging.getLogger(__name__)

# The statistic of a timing's rounds × block runs: the minimum is the one a loaded machine moves least (two runs of
# the same 45 ResNet-20 policies here agreed within 3.2% (p50) / 6.7% (p90) on minimums, 4.8% / 17% on medians).
STAT = "min_ms"
# Seconds a latency table's cached entries (layers: :func:`time_layers`; nodes: ``node_table``) spread their rounds over
# (``_timer.py``, ``_node_timer.py``): on the shared 2-core machine every model ran 1.3–1.7x slower for stretches of
# seconds, not by one factor for all (ratios to dense moved 10–25 %), and a timing of ~1 s caught either frame
# (session 14); spread over 3 s, the minimum comes from the undisturbed stretches. An entry is timed once per cache, so
# the 3 s are paid once per batch of new entries. End-to-end timings (checks, calibration, finals, the ``measured``
# latency model's pair runs: :func:`time_models_runs`, ``_timing.PairTimer``) are repeated per model or per trial and
# spread over nothing unless asked (``window_s``): 3 s each would add 15 s to a ``measured`` trial of 5 runs.
WINDOW_S = 3.0


def _run_timer(files: list[tuple[str, list[int]]], threads: int, rounds: int, block: int,
               window_s: float = 0.0) -> list[float]:  # fmt: skip
    """``files`` timed in one ``_timer.py`` process (``rounds`` × ``block`` runs each, interleaved, the rounds spread
    over ``window_s`` seconds; 0: back to back): each file's :data:`STAT`."""
    cmd = json.dumps({"files": files, "threads": threads, "rounds": rounds, "block": block, "window_s": window_s})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = str(Path(__file__).with_name("_timer.py"))  # run as a script: the child imports no deepslim
    proc = subprocess.run([sys.executable, script], input=cmd, capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExportError(f"the latency timer failed: {tail}")
    return [float(t) for t in json.loads(proc.stdout)[STAT]]


def time_layers(keys: Sequence[LayerKey], *, threads: int = 1, rounds: int = 5, block: int = 5,
                window_s: float = WINDOW_S) -> list[float]:  # fmt: skip
    """Each layer as its own ONNX graph, timed in ONNX Runtime (one process for the batch, interleaved, the rounds
    spread over ``window_s`` seconds: :data:`WINDOW_S`, as the table's cached entries are)."""
    import onnx

    from deepslim.search._layer_onnx import layer_graph

    with tempfile.TemporaryDirectory() as work:
        files = []
        for i, key in enumerate(keys):
            path = Path(work) / f"layer{i}.onnx"
            onnx.save(layer_graph(key), str(path))
            files.append((str(path), list(key.in_shape)))
        return _run_timer(files, threads, rounds, block, window_s)


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
    dynamic flag, a conv's stride and padding tuples, …) and each tensor's name, shape and dtype."""
    modules = tuple((name, type(m).__qualname__, _settings(m)) for name, m in model.named_modules())
    tensors = tuple((k, tuple(t.shape), str(t.dtype)) for k, t in model.state_dict(keep_vars=True).items()
                    if isinstance(t, torch.Tensor))  # fmt: skip
    return tuple(shape), modules, tensors


_PLAIN = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> tuple[tuple[str, Any], ...]:
    """``module``'s public plain settings, sorted by name: plain values, and tuples or lists of them (a conv's stride,
    padding, dilation) as tuples."""
    found: list[tuple[str, Any]] = []
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN):
            found.append((k, v))
        elif isinstance(v, (tuple, list)) and all(isinstance(i, _PLAIN) for i in v):
            found.append((k, tuple(v)))
    return tuple(sorted(found))


class ExportedOnce:
    """One model (at one input shape) exported once and copied wherever a timing wants it: a reference timed beside
    every chunk of a check (:func:`deepslim.search.table_check.check_table`: 10 more exports for 50 policies
    otherwise). A context manager: its file is removed on exit. :attr:`exports` counts the exports made."""

    def __init__(self, model: nn.Module, x: Any) -> None:
        self.model, self.shape = model, tuple(x.shape)
        self.exports = 0
        self._dir: str | None = None
        self._file: Path | None = None

    def __enter__(self) -> ExportedOnce:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = self._file = None

    def holds(self, model: nn.Module, x: Any) -> bool:
        return model is self.model and tuple(x.shape) == self.shape

    def export(self, model: nn.Module, x: Any, path: Path) -> Path | None:
        """The model's file copied to ``path``'s folder (exported on the first call); None when the export refuses
        it (logged once)."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="deepslim-once-")
            self._file = _export_for_timer(model, x, Path(self._dir) / "export" / path.name)
            self.exports += 1
        if self._file is None:
            return None
        shutil.copytree(self._file.parent, path.parent, dirs_exist_ok=True)
        return path.parent / self._file.name


def time_models(pairs: Sequence[tuple[nn.Module, Any]], *, threads: int = 1, rounds: int = 10, block: int = 5,
                keep: KeptFiles | None = None, window_s: float = 0.0,
                once: ExportedOnce | None = None) -> list[float]:  # fmt: skip
    """Whole models timed in ONNX Runtime, interleaved (one run of :func:`time_models_runs`)."""
    return time_models_runs(pairs, 1, threads=threads, rounds=rounds, block=block, keep=keep, window_s=window_s,
                            once=once)[0]  # fmt: skip


def time_models_runs(pairs: Sequence[tuple[nn.Module, Any]], runs: int, *, threads: int = 1, rounds: int = 10,
                     block: int = 5, keep: KeptFiles | None = None, window_s: float = 0.0,
                     once: ExportedOnce | None = None) -> list[list[float]]:  # fmt: skip
    """Whole models (quantized ones as their integer graphs) exported once and timed in ONNX Runtime, interleaved,
    in ``runs`` processes one after another (one list of times per run; each run's rounds spread over ``window_s``
    seconds, 0 by default: see :data:`WINDOW_S`); NaN for a model the export refuses (logged: a check is skipped, the
    search goes on). ``keep``: the files stay there for the node table (:class:`KeptFiles`). ``once``: its model is
    copied from its one export, not exported again (:class:`ExportedOnce`)."""
    with contextlib.ExitStack() as stack:
        work = keep.fresh() if keep is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        files, index = [], []
        for i, (model, x) in enumerate(pairs):
            dest = work / f"model{i}" / "model.onnx"
            path = once.export(model, x, dest) if once is not None and once.holds(model, x) else \
                _export_for_timer(model, x, dest)
            if path is None:
                continue
            files.append((str(path), list(x.shape)))
            index.append(i)
            if keep is not None:
                keep.keep(model, x.shape, path)
        results = [_run_timer(files, threads, rounds, block, window_s) if files else []
                   for _ in range(max(1, runs))]  # fmt: skip
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
