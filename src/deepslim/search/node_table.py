"""Latency from the nodes ONNX Runtime really runs: the optimized graph of an exported model, node by node.

Why: the per-layer table (:mod:`deepslim.search.latency`) times each convolution as a one-layer graph, where ONNX
Runtime picks other kernels than in a whole model. Measured on ResNet-20 at 28² (45 policies, this machine), in a
mixed int8/float graph a float convolution between integer ones runs in plain NCHW (``FusedConv``, ~3× its NCHWc
time), each precision change adds a ``Transpose`` and a ``QuantizeLinear``/``DequantizeLinear``, residual additions
become ``QLinearAdd`` or float ``Add`` depending on their neighbours, and every node costs a few microseconds of its
own; the layer sums, however fitted, ranked those policies with Kendall τ ≈ 0.3. Here a model is exported, ONNX
Runtime optimizes it with the session options of an end-to-end measurement, and each node of the optimized graph is
timed alone (optimizations off: it already is what the runtime runs), once per distinct node — operator, attributes,
input types and shapes — cached in the latency table's file beside the layer entries. A node's entry is its time
minus one run of a trivial graph (the per-run overhead every one-node timing includes and a whole graph pays once);
the prediction is the sum of the entries, mapped through ``scale × sum + offset``. A search anchors the scale to the
dense model measured end to end in its own run (:meth:`NodeTable.anchor`), which leaves every ratio as it was, so
budgets relative to the dense model (``0.5x``) are judged exactly as by the plain sums. Absolute budgets (ms) are
only as good as the anchor: on ResNet-20 (28², batch 1) the sums ran 8–20 % low, uniformly, and the anchor put them
in measured milliseconds; on a 1.75 M-MAC MobileNetV2 the error depends on the policy (measured / sum 0.76–1.63, the
dense model highest) and the anchored predictions ran 63 % high at the median (BENCHMARKS.md, session 7).

The search judges every trial with this table by default (``search(latency_model="nodes")``): a trial's prediction
is the sum over its own exported graph, after pruning and quantization. The exporter (model -> file), the splitter
(model file -> node keys) and the node timer are plain callables, so tests give deterministic fakes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from deepslim.errors import ExportError
from deepslim.search.latency import LatencyTable, fit_line

PREFIX = "node:"
Node = dict[str, str]  # {"key", "op", "file", "feeds"}
Splitter = Callable[[str, Sequence[int], str], list[Node]]
NodeTimer = Callable[[Sequence[Node], str], list[float]]
Exporter = Callable[[nn.Module, Path, Any], None]


def _export(model: nn.Module, path: Path, example_input: Any) -> None:
    from deepslim.export import export_onnx

    export_onnx(model, path, example_input=example_input)


def _child(cmd: dict[str, Any]) -> dict[str, Any]:
    script = str(Path(__file__).with_name("_node_timer.py"))  # run as a script: the child imports no deepslim
    env = {**os.environ, "OMP_NUM_THREADS": str(cmd.get("threads", 1))}
    proc = subprocess.run([sys.executable, script], input=json.dumps(cmd), capture_output=True, text=True, env=env,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExportError(f"the node timer failed: {tail}")
    return dict(json.loads(proc.stdout))


class NodeTable:
    """Node-level latencies (see the module docstring), stored in ``table``'s entries and cache file."""

    def __init__(self, table: LatencyTable, *, splitter: Splitter | None = None, timer: NodeTimer | None = None,
                 exporter: Exporter | None = None, rounds: int = 5, block: int = 5) -> None:  # fmt: skip
        threads = table.threads
        self.table = table
        self.custom = any(f is not None for f in (splitter, timer, exporter))  # fakes stay in this process
        self.exporter = exporter or _export
        self.splitter = splitter or (lambda path, shape, work: _child(
            {"cmd": "split", "model": path, "shape": list(shape), "threads": threads, "work": work})["nodes"])
        self.timer = timer or (lambda nodes, work: self._time(nodes, work, rounds, block))
        self.scale, self.offset = 1.0, 0.0
        self.points: list[tuple[float, float]] = []

    def _time(self, nodes: Sequence[Node], work: str, rounds: int, block: int) -> list[float]:
        doc = _child({"cmd": "time", "files": [[n["file"], n["feeds"]] for n in nodes], "threads": self.table.threads,
                      "rounds": rounds, "block": block, "work": work})  # fmt: skip
        return [max(0.0, t - doc["overhead_ms"]) for t in doc["min_ms"]]

    def raw_file(self, path: str | Path, shape: Sequence[int]) -> float:
        """The summed node entries of an ONNX file (timing the nodes the table lacks, in one batch)."""
        with tempfile.TemporaryDirectory() as work:
            nodes = self.splitter(str(path), list(shape), work)
            missing = {PREFIX + n["key"]: n for n in nodes if PREFIX + n["key"] not in self.table.entries}
            if missing:
                times = self.timer(list(missing.values()), work)
                self.table.entries.update({k: float(t) for k, t in zip(missing, times, strict=True)})
                self.table.measured += len(missing)
                self.table._save()
        return float(sum(self.table.entries[PREFIX + n["key"]] for n in nodes))

    def raw_model(self, model: nn.Module, example_input: Any) -> float:
        """The summed node entries of ``model`` (quantized layers as their integer graph), exported here."""
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "model.onnx"
            self.exporter(model, path, example_input)
            return self.raw_file(path, tuple(example_input.shape))

    def predict(self, raw: float) -> float:
        """End-to-end milliseconds of a model whose summed node entries are ``raw``."""
        return self.scale * raw + self.offset

    def anchor(self, raw: float, measured: float) -> None:
        """Scale the prediction so that a model whose summed entries are ``raw`` is predicted at ``measured`` ms
        (offset 0): the dense model measured end to end in the same run, so predictions are in measured
        milliseconds while every ratio between two predictions stays the plain sums' ratio. Without a usable
        pair (a NaN or non-positive value) the calibration is left as it is."""
        if not (raw > 0 and measured > 0 and measured == measured):
            return
        self.scale, self.offset = measured / raw, 0.0
        self.points = [(float(raw), float(measured))]

    def calibrate(self, points: Sequence[tuple[float, float]]) -> None:
        """Fit ``scale`` and ``offset`` to (raw, measured) pairs (:func:`deepslim.search.latency.fit_line`)."""
        self.points, fitted = fit_line(points)
        if fitted is not None:
            self.scale, self.offset = fitted
