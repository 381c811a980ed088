"""End-to-end timing of a trial's model against the dense model, cheap enough to run on every trial (the ``measured``
latency model, :meth:`deepslim.search.evaluate.Evaluator.measured_ms`).

Why: on MobileNetV2 0.5 at 28² the toolkit's export (:func:`deepslim.export.export_onnx`: the dynamo exporter, its
decompositions and the parity check) took 16–33 s per model at load 1–3, and a trial exported two (the dense model
again, then the policy's) — most of a trial's ~52 s (session 8), not the proxy's fine-tune. Here the dense model is
exported once per search and every float trial model with the TorchScript exporter (~0.6 s; the same optimized
graph in ONNX Runtime but for ``GlobalAveragePool`` + ``Flatten`` where the dynamo file has ``ReduceMean`` +
``Reshape``: both models of a ratio are exported the same way). Every file is checked against PyTorch in ONNX
Runtime before it is timed (a wrong graph would be a silently wrong latency); a model with quantized layers, or one
the TorchScript exporter refuses or gets wrong, takes the toolkit's export. The finalists' re-measurement
(:mod:`deepslim.search.finals`) keeps the toolkit's export: it times the file ``deepslim compress`` writes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim.errors import DeepSlimError, ExportError
from deepslim.search._ort_timing import _run_timer
from deepslim.search.latency import LatencyTable

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999  # a timing file's outputs against PyTorch's (float graphs agree to ~1e-6)


def real_timer(table: LatencyTable) -> bool:
    """Whether ``table`` times whole models in ONNX Runtime itself (else: custom timers, which time models)."""
    return table.key != "custom" and table.runtime == "onnxruntime" and table.end_to_end


def export_for_timing(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """Write ``model`` as ONNX at ``path`` for timing; "torchscript" (a float model, checked against PyTorch) or
    "toolkit" (quantized layers, or the TorchScript file refused or wrong: :func:`deepslim.export.export_onnx`)."""
    from deepslim.export import export_onnx
    from deepslim.export.qdq import quantized_layers

    if not quantized_layers(model) and not _parametrized(model):
        try:
            _torchscript(model, x, path)
            if _agrees(model, x, path):
                return "torchscript"
            log.info("the TorchScript timing file disagrees with PyTorch: exported with the toolkit instead")
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to the toolkit's export
            log.info("TorchScript export for timing failed (%s): exported with the toolkit instead", exc)
    export_onnx(model, path, example_input=x)
    return "toolkit"


def _parametrized(model: nn.Module) -> bool:
    return any(hasattr(m, "parametrizations") for m in model.modules())


def _torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18, input_names=["input"],
                              output_names=["output"])  # fmt: skip
    finally:
        model.train(was)


def _agrees(model: nn.Module, x: torch.Tensor, path: Path) -> bool:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(x)
    finally:
        model.train(was)
    if not isinstance(want, torch.Tensor):
        return False
    got = np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], dtype=np.float64).ravel()
    ref = want.detach().double().numpy().ravel()
    if got.shape != ref.shape:
        return False
    norm = float(np.linalg.norm(got) * np.linalg.norm(ref))
    return norm > 0 and float(got @ ref) / norm >= MIN_COSINE


class PairTimer:
    """Times models against one reference model (the dense one), interleaved in the same run: ``runs(net, n)`` gives
    ``n`` (reference ms, net ms) pairs, each run a process of its own. On the real ONNX Runtime table the reference is
    exported once (kept in a private directory removed with the timer) and each model once per call; with custom
    timers the table's own ``measure`` times the pair. ``window_s``: the seconds each run's rounds spread over (None:
    the table's ``model_window_s``, 0 by default — a trial makes up to ``measure_repeats`` runs, and 3 s each would
    add 15 s to it; see :data:`deepslim.search._ort_timing.WINDOW_S`)."""

    def __init__(self, table: LatencyTable, reference: nn.Module, x: torch.Tensor, *, rounds: int = 10,
                 block: int = 5, window_s: float | None = None) -> None:  # fmt: skip
        self.table, self.reference, self.x = table, reference, x
        self.rounds, self.block = rounds, block
        self.window_s = table.model_window_s if window_s is None else float(window_s)
        self.exports: dict[str, int] = {}  # exporter -> files written (what the timing cost)
        self._dir: str | None = None
        self._ref_file: str | None = None

    def _reference_file(self) -> str:
        if self._ref_file is None:
            self._dir = tempfile.mkdtemp(prefix="deepslim-timing-")
            weakref.finalize(self, shutil.rmtree, self._dir, True)
            path = Path(self._dir) / "reference.onnx"
            self._count(export_for_timing(self.reference, self.x, path))
            self._ref_file = str(path)
        return self._ref_file

    def _count(self, how: str) -> None:
        self.exports[how] = self.exports.get(how, 0) + 1

    def reference_ms(self) -> float:
        """The reference model timed alone (one run)."""
        if not real_timer(self.table):
            return float((self.table.measure([(self.reference, self.x)]) or [float("nan")])[0])
        return self._time([self._reference_file()])[0]

    def runs(self, net: nn.Module, n: int,
             more: Callable[[list[tuple[float, float]]], int] | None = None) -> list[tuple[float, float]]:  # fmt: skip
        """``n`` interleaved runs of the reference and ``net``, then ``more(found)`` runs more (``net`` exported once):
        [(reference ms, net ms), ...]; an ExportError when ``net`` cannot be exported or measured."""
        if not real_timer(self.table):
            return self._extend([], n, more, lambda: self.table.measure([(self.reference, self.x), (net, self.x)]))
        ref = self._reference_file()
        with tempfile.TemporaryDirectory(prefix="deepslim-timing-") as work:
            path = Path(work) / "policy.onnx"
            try:
                self._count(export_for_timing(net, self.x, path))
            except DeepSlimError as exc:
                raise ExportError(f"the policy's model could not be measured end to end: {exc}") from exc
            return self._extend([], n, more, lambda: self._time([ref, str(path)]))

    def _extend(self, found: list[tuple[float, float]], n: int, more: Any, run: Callable[[], Any]) -> list[tuple[
            float, float]]:  # fmt: skip
        for _ in range(n):
            both = run() or [float("nan")] * 2
            if any(t != t for t in both):
                raise ExportError("the policy's model could not be measured end to end (its export failed)")
            found.append((float(both[0]), float(both[1])))
        extra = more(found) if more is not None else 0
        return self._extend(found, extra, None, run) if extra > 0 else found

    def _time(self, files: Sequence[str]) -> list[float]:
        shape = list(self.x.shape)
        return _run_timer([(f, shape) for f in files], self.table.threads, self.rounds, self.block, self.window_s)


def describe(found: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """The ratios (net / reference, run by run) of :meth:`PairTimer.runs`, their median and band."""
    ratios = sorted(b / a for a, b in found)
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    return {"ratios": [b / a for a, b in found], "median": median, "band": [ratios[0], ratios[-1]]}
