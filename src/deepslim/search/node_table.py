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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepslim.errors import ConfigError, ExportError
from deepslim.search._batch_timing import _agree, _low_trivial, _net, _slow_batch
from deepslim.search._ort_timing import export_model
from deepslim.search.latency import MIN_BAND, LatencyTable, fit_line, timing

PREFIX = "node:"
GRAPH_NODE = PREFIX + "(one more node in a graph)"  # the entry of what each node of a whole graph adds to the sum
TWIN_TOLERANCE = 0.10  # relative difference two timings of a node (or a batch's canaries and their entries) may show
CANARIES = 4  # cached nodes of the same model timed with each new batch, to tell a batch timed in a slow stretch
# The protocol NodeTable's defaults time entries with (rounds, block, twins, retries, tolerance, canaries): entries
# timed otherwise are keyed apart in the cache (:func:`node_prefix`), so neither protocol reads the other's entries.
DEFAULTS: dict[str, float] = {"rounds": 5, "block": 5, "twins": 2, "retries": 2, "tolerance": TWIN_TOLERANCE,
                              "canaries": CANARIES}  # fmt: skip
GAP_S = 1.0  # seconds between two timings of a batch by the real timer (each spreads its rounds over window_s)
SLOW_PAUSE_S = 10.0  # a slow batch (_batch_timing._slow_batch) is timed once more after this pause (NodeTable._timed)
MIN_WEIGHT_POINTS = 10  # fewest measured models a line in the node sum and the weights' bytes is fitted to
# How calibrate_weights(knee=True) chooses the knee: by the worst error of each point left out of the fit (session 16),
# or by the in-sample RMS relative error (sessions 14-15; see NodeTable.calibrate_weights). "loo-max" was chosen on
# sessions 14-15's six runs; on session 16's four fresh runs it scored no better than "rms" (169 against 171 of 200
# within +-10 %): the default rests on the principle (a knee is not judged on the points that chose it), not on data
KNEE_CHOICES = ("loo-max", "rms")
KNEE_BY = "loo-max"
Node = dict[str, str]  # {"key", "op", "file", "feeds"}
Splitter = Callable[[str, Sequence[int], str], list[Node]]
NodeTimer = Callable[[Sequence[Node], str], list[float]]
GraphNodeTimer = Callable[[str], float]  # work dir -> ms one more node costs inside a graph
Exporter = Callable[[nn.Module, Path, Any], None]


def weight_mb(model: nn.Module) -> float:
    """The MiB of ``model``'s convolution and linear weights as ONNX Runtime holds them: ``bits / 8`` bytes per weight
    of a quantized layer (1 for int8), 4 per float one, plus 4 per output channel (bias, folded batch norm)."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
            per = getattr(m, "bits", 32) / 8
            total += m.weight.numel() * per + m.weight.shape[0] * 4
    return total / 2**20


def node_prefix(**settings: float) -> str:
    """The prefix of the cache keys of node entries timed with ``settings`` (:data:`DEFAULTS` for those not given):
    :data:`PREFIX` for the defaults, else the settings that differ in brackets (``node[twins=1,retries=0]:``). Why:
    the cache file's key records the window only, and a table timed once (``twins=1, retries=0``: session 14's
    protocol) wrote its entries where default tables read them as twin-timed (review R15 L6)."""
    other = {k: settings[k] for k in DEFAULTS if k in settings and float(settings[k]) != float(DEFAULTS[k])}
    return PREFIX if not other else "node[" + ",".join(f"{k}={v:g}" for k, v in other.items()) + "]:"


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
    """Node-level latencies (see the module docstring), stored in ``table``'s entries and cache file. The real timer
    spreads each batch's rounds over ``window_s`` seconds (None: the table's ``window_s``, 3 s by default, which its
    cache key records; another window is refused on a table with a cache file, whose entries would mix two). A batch
    of new entries is timed ``twins`` times ``gap_s`` apart, each timing over ``window_s / twins``, and again
    (``retries``) where the timings disagree or the batch's ``canaries`` read slow (:meth:`_timed`); ``twins=1,
    retries=0``: once over the whole window, session 14's protocol. Entries timed with settings other than
    :data:`DEFAULTS` are cached under their own keys (:func:`node_prefix`)."""

    def __init__(self, table: LatencyTable, *, splitter: Splitter | None = None, timer: NodeTimer | None = None,
                 exporter: Exporter | None = None, graph_node: GraphNodeTimer | None = None, rounds: int = 5,
                 block: int = 5, window_s: float | None = None, twins: int = 2, retries: int = 2,
                 tolerance: float = TWIN_TOLERANCE, canaries: int = CANARIES,
                 gap_s: float | None = None) -> None:  # fmt: skip
        if twins < 1 or retries < 0 or canaries < 0 or not 0 < tolerance < 1:
            raise ConfigError(f"a node table needs twins >= 1, retries >= 0, canaries >= 0 and 0 < tolerance < 1: got "
                              f"{twins}, {retries}, {canaries}, {tolerance}")  # fmt: skip
        threads = table.threads
        if window_s is None:
            window_s = table.window_s
        elif table.path is not None and window_s != table.window_s:
            raise ConfigError(f"the node table's window_s={window_s:g} differs from its latency table's "
                              f"({table.window_s:g}), which keys the cache file: give the LatencyTable that "
                              "window_s")  # fmt: skip
        self.table = table
        self.custom = any(f is not None for f in (splitter, timer, exporter, graph_node))  # fakes stay in this process
        # How a batch of new entries is timed (:meth:`_timed`): ``twins`` timings, ``retries`` more where they
        # disagree or the batch's canaries read slow, ``gap_s`` seconds apart (None: 1 s, none for custom timers).
        self.twins, self.retries, self.tolerance, self.canaries = twins, retries, float(tolerance), canaries
        # where this protocol's entries live in the cache (another protocol's are neither read nor overwritten)
        self.prefix = node_prefix(rounds=rounds, block=block, twins=twins, retries=retries, tolerance=tolerance,
                                  canaries=canaries)  # fmt: skip
        self.graph_key = self.prefix + GRAPH_NODE[len(PREFIX):]
        # how this table's entries are timed: what a study it judged records (``_judging.judged_timing``)
        self.timing = timing(window_s) + ("" if self.prefix == PREFIX else "|" + self.prefix[:-1])
        self.gap_s = (0.0 if self.custom else GAP_S) if gap_s is None else float(gap_s)
        self.slow_pause_s = 0.0 if self.custom else SLOW_PAUSE_S  # before a slow batch's extra timing
        self.slow_batches = 0  # batches timed once more for a slow trivial graph (:meth:`_timed`)
        self.low_batches = 0  # batches whose chosen trivial graph read low, the others' taken off (_low_trivial)
        self.timings = 0  # timer calls made for new entries (twins and re-timings; see :meth:`_timed`)
        # The real timer's trivial-graph times, one per process: its times are gross, and :meth:`_timed` takes each
        # process's own off its times (a custom timer's times are net: nothing recorded, nothing taken off).
        self.overheads: list[float] = []
        # Canaries read faster than their entries by more than the tolerance (key -> the least such net time):
        # noted, never applied after a search's calibration (its frame summed the entries as they were); the
        # calibration applies them before its fit (:meth:`lower_entries`), into :attr:`study_entries`.
        self.faster: dict[str, float] = {}
        # This study's own entries (key -> ms): those its calibration lowered (:meth:`lower_entries`), summed instead
        # of the shared cache's, never saved to it, and recorded in the study's frame (``frame.table_state``), which
        # puts them back on resume: another study on the same cache keeps the entries its frame was summed from.
        self.study_entries: dict[str, float] = {}
        self.lowered = 0  # entries :meth:`lower_entries` lowered
        self.exporter = exporter or export_model
        self.splitter = splitter or (lambda path, shape, work: _child(
            {"cmd": "split", "model": path, "shape": list(shape), "threads": threads, "work": work})["nodes"])
        # each of a batch's timings spreads its rounds over its share of the window (the twins together span it)
        self.timer = timer or (lambda nodes, work: self._time(nodes, work, rounds, block, window_s / twins))
        # What one more node costs inside a graph (:meth:`raw_file`); custom node fakes without it count nothing.
        self.graph_node: GraphNodeTimer | None = graph_node
        if graph_node is None and not self.custom:
            self.graph_node = lambda work: float(_child(
                {"cmd": "time", "files": [], "threads": threads, "rounds": 2 * rounds, "block": block,
                 "window_s": window_s, "work": work})["graph_node_ms"])  # fmt: skip
        self.scale, self.offset = 1.0, 0.0
        self.weight_coef = 0.0  # ms per MiB of weights (:meth:`calibrate_weights`); 0: the node sum alone
        self.weight_knee = 0.0  # MiB of weights that cost nothing beyond their nodes' entries (``knee``); 0: all do
        self.points: list[tuple[float, float]] = []
        self.triples: list[tuple[float, float, float]] = []  # (sum, weight MiB, ms) the weight fit was made on
        self.error_band = MIN_BAND  # the largest relative error on the calibration's points, at least MIN_BAND
        self.floor: dict[str, Any] | None = None  # the space's floor measured by the feasibility check (frame.py)
        self.last_nodes = 0  # the node count of the last file summed (:meth:`raw_file`)
        self.last_keys: list[str] = []  # its node keys, without the prefix (:meth:`sum_keys` re-sums them)

    def _time(self, nodes: Sequence[Node], work: str, rounds: int, block: int, window_s: float) -> list[float]:
        doc = _child({"cmd": "time", "files": [[n["file"], n["feeds"]] for n in nodes], "threads": self.table.threads,
                      "rounds": rounds, "block": block, "window_s": window_s, "work": work})  # fmt: skip
        self.overheads.append(float(doc["overhead_ms"]))
        return [float(t) for t in doc["min_ms"]]

    def raw_file(self, path: str | Path, shape: Sequence[int]) -> float:
        """The summed node entries of an ONNX file (timing the nodes the table lacks, in one batch), plus
        :data:`GRAPH_NODE`'s entry per node: an entry is its one-node graph's time less a trivial one-node graph's,
        so every node's own dispatch inside a graph is taken off with the trivial graph's — measured once as a chain
        of Identity nodes in a graph of their own (:attr:`graph_node`), cached like the nodes. Why: a mixed int8 /
        float policy has 2–3× the dense model's nodes (every precision change adds quantize, dequantize, transpose
        and reorder nodes: 147 nodes against 57 on MobileNetV2 0.5, session 14), each costing ~0.3–0.6 µs there
        beyond its entry."""
        with tempfile.TemporaryDirectory() as work:
            nodes = self.splitter(str(path), list(shape), work)
            missing = {self.prefix + n["key"]: n for n in nodes if self.prefix + n["key"] not in self.table.entries}
            before = self.table.measured
            if missing:
                known = {self.prefix + n["key"]: n for n in nodes if self.prefix + n["key"] not in missing}
                canaries = sorted(known, key=lambda k: -self._entry(k))[: self.canaries]
                times = self._timed(list(missing.values()), [known[k] for k in canaries], work)
                self.table.entries.update({k: float(t) for k, t in zip(missing, times, strict=True)})
                self.table.measured += len(missing)
            if self.graph_key not in self.table.entries and self.graph_node is not None:
                self.table.entries[self.graph_key] = min(float(self._spaced(self.graph_node, work))
                                                     for _ in range(self.twins))  # fmt: skip
                self.table.measured += 1
            if self.table.measured != before:
                self.table._save()
        self.last_keys = [n["key"] for n in nodes]
        self.last_nodes = len(nodes)
        return self.sum_keys(self.last_keys)

    def sum_keys(self, keys: Sequence[str]) -> float:
        """The summed entries of the nodes keyed ``keys`` (a file's, as :attr:`last_keys` recorded it), plus
        :data:`GRAPH_NODE`'s entry per node: :meth:`raw_file`'s sum without splitting the file again, e.g. after
        :meth:`lower_entries` (the calibration re-sums its models so)."""
        per_node = self.table.entries.get(self.graph_key, 0.0)
        return float(sum(self._entry(self.prefix + k) for k in keys) + per_node * len(keys))

    def _entry(self, key: str) -> float:
        """The entry this study sums for ``key`` (prefixed): its own (:attr:`study_entries`), else the cache's."""
        return self.study_entries.get(key, self.table.entries[key])

    def _spaced(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` after :attr:`gap_s` seconds' pause, unless it is the table's first timing."""
        if self.timings and self.gap_s > 0:
            time.sleep(self.gap_s)
        self.timings += 1
        return call(*args)

    def _timed(self, new: list[Node], canaries: list[Node], work: str) -> list[float]:
        """Entries for the ``new`` nodes, robust to a slow stretch of the machine: the batch (with ``canaries``, nodes
        of the same model already in the table, the largest) is timed :attr:`twins` times, :attr:`gap_s` apart; the
        whole batch is timed again when the twins' sums differ by more than :attr:`tolerance` or while its canaries
        read more than :attr:`tolerance` slower in sum than their entries, and a node far from its twin (its two
        fastest timings more than twice the tolerance and 2 µs apart) is timed again — :attr:`retries` times at most.
        The entries come from one timing (:func:`_net`). A canary read faster than its entry by more than the
        tolerance (its entry was timed in a slow stretch) is noted in :attr:`faster` and its entry kept: a search's
        dense sum, limits, calibration and earlier trials' sums were made with it, and a resumed study re-sums dense
        from the cache (lowering entries mid-search judged one budget in two frames, and let shared nodes, timed
        most often, drift low: review R15 M1); the calibration applies the notes before it fits, to this study's
        entries only (:meth:`lower_entries`). Why the twins: on the shared 2-core machine a batch timed once over 3 s
        fell wholly in a stretch of 1.3–1.7× (session 14, run 3: node sums 16 % off the three runs' median at p90,
        the float floor policies' sums 12–19 µs high), which moved every policy that shares the batch's nodes.
        A batch whose chosen timing ran in a slow process (:func:`_slow_batch`) is timed once more after
        :data:`SLOW_PAUSE_S`: the twins and their 1 s retries fall in the same stretch. One whose chosen timing's
        trivial graph read low against two or more other timings of the batch (:func:`_low_trivial`) has theirs,
        carried into its process, taken off its entries (:attr:`low_batches` counts them)."""
        batch = new + canaries
        spare = range(len(new), len(batch))
        entries = sum(self._entry(self.prefix + c["key"]) for c in canaries)
        runs: list[tuple[dict[int, float], float]] = []  # each timing: {batch index: gross ms}, its trivial graph's ms
        todo = list(range(len(batch)))
        start = len(self.overheads)  # the trivial graphs timed before this batch (:func:`_slow_batch`)
        for attempt in range(self.twins + self.retries):
            before = len(self.overheads)
            got = self._spaced(self.timer, [batch[i] for i in todo], work)
            own = self.overheads[-1] if len(self.overheads) > before else 0.0  # a custom timer's times are net
            runs.append(({i: float(t) for i, t in zip(todo, got, strict=True)}, own))
            if attempt + 1 < self.twins:
                continue
            # each timing's canaries net of its own process's trivial graph (every timing times all of them)
            slow = bool(canaries) and min(sum(r[i] for i in spare) - len(canaries) * o
                                          for r, o in runs) > (1 + self.tolerance) * entries  # fmt: skip
            if attempt + 1 == self.twins > 1:  # the twins' net sums over the batch: one of them in a slow stretch
                totals = [sum(r.values()) - len(r) * o for r, o in runs]
                slow = slow or max(totals) > (1 + self.tolerance) * min(totals)
            todo = [i for i in range(len(new))
                    if slow or not _agree([r[i] - o for r, o in runs if i in r], 2 * self.tolerance)]  # fmt: skip
            if not todo:
                break
            todo += list(spare)
        if _slow_batch(runs, len(batch), self.overheads, len(self.overheads) - start):
            time.sleep(self.slow_pause_s)
            before = len(self.overheads)
            got = self._spaced(self.timer, batch, work)
            runs.append(({i: float(t) for i, t in enumerate(got)},
                         self.overheads[-1] if len(self.overheads) > before else 0.0))  # fmt: skip
            self.slow_batches += 1
        net = _net(runs, len(batch), len(new))
        self.low_batches += _low_trivial(runs, len(batch)) is not None
        for c, t in zip(canaries, net[len(new):], strict=True):
            key = self.prefix + c["key"]
            if t * (1 + self.tolerance) < self._entry(key):
                self.faster[key] = min(t, self.faster.get(key, t))
        return net[: len(new)]

    def lower_entries(self, *, save: bool = False) -> int:
        """Lower each entry that a canary read faster than by more than the tolerance (:attr:`faster`) to that
        reading and return how many changed (:attr:`lowered` counts them). A search calls it once, in its calibration
        after every calibration model is summed and before the fit, and re-sums those models
        (:func:`deepslim.search.calibration._calibrate_nodes`): the frame is not fixed yet, and the first batch, the
        dense model's on a fresh cache, has no canaries of its own — a slow stretch over both twins (session 16's
        first run: dense summed 213 µs against 104–115 µs) was noted by later batches and applied by nothing. Never
        during the search that follows (review R15 M1).

        Who may save: by default (``save=False``) the lowered values go to :attr:`study_entries`, this study's own,
        in memory and in its recorded frame — the shared cache (``~/.cache/deepslim/latency`` by default, keyed per
        operator and shape, so read by other models' studies) is not written, since a study recorded earlier
        re-sums its dense model from it when resumed and would be judged against limits fitted on other sums (review
        R17 M1: 66 → 46 µs); and a concurrent process's next save would write its old value back. ``save=True``
        lowers the shared cache's entries and saves them: only for a maintenance step outside any search, on a
        cache no recorded study will resume on."""
        target = self.table.entries if save else self.study_entries
        changed = 0
        for key, t in self.faster.items():
            if key in self.table.entries and t < (self.table.entries[key] if save else self._entry(key)):
                target[key] = t
                changed += 1
        self.faster.clear()
        if changed and save:
            self.table._save()
        self.lowered += changed
        return changed

    def raw_model(self, model: nn.Module, example_input: Any) -> float:
        """The summed node entries of ``model`` (quantized layers as their integer graph): the file the table's last
        end-to-end measurement wrote of it (:class:`~deepslim.search._ort_timing.KeptFiles`), else exported here."""
        shape = tuple(example_input.shape)
        kept = self.table.kept.take(model, shape) if self.exporter is export_model else None
        if kept is not None:
            try:
                return self.raw_file(kept, shape)
            finally:
                shutil.rmtree(kept.parent, ignore_errors=True)
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "model.onnx"
            self.exporter(model, path, example_input)
            return self.raw_file(path, tuple(example_input.shape))

    def predict(self, raw: float, weights: float | None = None) -> float:
        """End-to-end milliseconds of a model whose summed node entries are ``raw`` and whose weights take
        ``weights`` MiB (:func:`weight_mb`; needed once :meth:`calibrate_weights` has fitted a weight term)."""
        if self.weight_coef == 0.0:
            return self.scale * raw + self.offset
        if weights is None:
            raise ConfigError("this node table's calibration has a weight term: pass the model's weight_mb()")
        return self.scale * raw + self.weight_coef * max(0.0, weights - self.weight_knee) + self.offset

    def predict_model(self, raw: float, model: nn.Module) -> float:
        """:meth:`predict` for ``model`` (its weight bytes counted only when the calibration has a weight term)."""
        return self.predict(raw, weight_mb(model) if self.weight_coef else None)

    def anchor(self, raw: float, measured: float) -> None:
        """Scale the prediction so that a model whose summed entries are ``raw`` is predicted at ``measured`` ms
        (offset 0): the dense model measured end to end in the same run, so predictions are in measured
        milliseconds while every ratio between two predictions stays the plain sums' ratio. Without a usable
        pair (a NaN or non-positive value) the calibration is left as it is."""
        if not (raw > 0 and measured > 0 and measured == measured):
            return
        self.scale, self.offset, self.weight_coef = measured / raw, 0.0, 0.0
        self.points, self.error_band = [(float(raw), float(measured))], MIN_BAND

    def calibrate(self, points: Sequence[tuple[float, float]]) -> None:
        """Fit ``scale`` and ``offset`` to (raw, measured) pairs (:func:`deepslim.search.latency.fit_line`)."""
        self.points, fitted = fit_line(points)
        if fitted is not None:
            self.scale, self.offset = fitted
            self.weight_coef = 0.0

    def calibrate_weights(self, points: Sequence[tuple[float, float, float]], *, min_points: int = MIN_WEIGHT_POINTS,
                          through: Sequence[float] | Sequence[Sequence[float]] | None = None,
                          knee: bool | float = False, knee_by: str = KNEE_BY) -> bool:  # fmt: skip
        """Fit ``scale × sum + weight_coef × weight MiB + offset`` to (raw sum, weight MiB, measured ms) triples by
        least squares; True when fitted. Why the weights: each node is timed alone, its weights warm in the cache,
        and a whole model streams all of its weights on every run; on MobileNetV2 0.5 at 28² the measured/sum ratio
        (0.76–1.60 over 50 policies) followed the weights' bytes (correlation 0.90). Needs ``min_points`` measured
        models (NaN measurements dropped) with distinct sums and bytes and a positive ``scale``, else it changes
        nothing and returns False (the caller keeps its plain calibration, e.g. :meth:`anchor`).

        ``through`` (the dense model's triple): the plane is fitted through that point exactly (least squares on the
        differences to it), so the dense model is predicted at its measured time and a relative budget (``0.5x``)
        means the same in the table's frame as on the runtime. Unconstrained, the fit put dense 9 % high on
        MobileNetV2 (session 11): 94 % of 50 fresh policies within ±10 % in milliseconds, 46 % as ratios to the
        predicted dense; through dense, on the same measurements, 92 % in both. A list of triples: the plane passes
        through each of them (two at most are useful: three fix it), e.g. dense and the space's floor measured end
        to end (:meth:`pin`). Sets :attr:`error_band` to the largest relative error on ``points``, at least
        :data:`MIN_BAND`.

        ``knee``: the weight term counts only the MiB beyond :attr:`weight_knee` (``max(0, MiB − knee)``) — False: 0
        (every MiB, the plane above); a number: that knee; True: the knee among 41 evenly spaced from 0 to the
        points' largest size chosen by ``knee_by`` (:data:`KNEE_CHOICES`): ``"loo-max"`` (the default) the knee whose
        fits leaving each point out in turn predict the point left out with the least worst relative error (ties: the
        least root-mean-square of those errors, then the least knee; a knee where a fit without one of the points is
        singular is not chosen), ``"rms"`` the least root-mean-square relative error in sample (sessions 14–15).
        Why not in sample: on 19 points its error is nearly flat over the knees (session 15's third
        run: 5.7 % RMS at 0, 6.6 % at 0.66 MiB), and the knee chosen moved 0.86 → 0.26 → 0 MiB over three runs of
        the same policies; at 0 the float policies of 0.4–0.5 MiB read 12–23 % high. Re-fitted offline on the six
        runs of sessions 14–15 (same calibration points and measurements): 47 / 42 / 39 / 45 / 44 / 49 of 50 within
        ±10 % with ``"loo-max"`` against 47 / 42 / 36 / 46 / 43 / 35 in sample (leave-one-out RMS: 47 / 42 / 36 / 46 /
        41 / 37). The worst error left out, because the target is a tail (every policy within ±10 %), and a knee
        that one point's own leverage makes look good in sample is exposed when that point is left out. Not a cure:
        in session 16's four fresh runs it scored 44 / 45 / 41 / 39 against the in-sample choice's 45 / 46 / 38 / 42
        on the same measurements, and its knee moved 0.46 → 1.65 MiB (over the eleven recorded runs 42.2 of 50 on
        average against 40.8, least 29 against 29; ``benchmarks/_search_floor16.py``). Why the
        knee at all: with the
        session-14 node sums (IO-bound, the per-node term added) a MobileNetV2 0.5 policy's measured time was its
        plain sum within −18…+12 µs up to ~0.75 MiB of weights, and beyond that grew by ~35–50 µs per MiB (the dense
        model: 93 µs over its sum at 2.6 MiB) — each node is timed with its weights warm in the cache, a whole
        model streams them once they no longer fit; a plane in all the MiB over-predicted the float policies near
        the floor of 0.35–0.5 MiB by 10–17 %."""
        if min_points < 3:
            raise ConfigError(f"min_points must be at least 3 (a line in two variables has 3 coefficients): "
                              f"got {min_points}")  # fmt: skip
        if knee_by not in KNEE_CHOICES:
            raise ConfigError(f"knee_by must be one of {', '.join(KNEE_CHOICES)}: got {knee_by!r}")
        good = []
        for p in points:
            if len(p) != 3:
                raise ConfigError(f"calibration points are (raw sum, weight MiB, measured ms) triples: got {p!r}")
            raw, mb, ms = (float(v) for v in p)
            if not (np.isfinite(raw) and np.isfinite(mb)) or raw < 0 or mb < 0:
                raise ConfigError(f"a calibration point needs a finite, non-negative sum and weight size: got {p!r}")
            if ms == ms:
                good.append((raw, mb, ms))
        if len(good) < min_points:
            return False
        at = None if through is None else _points(through)
        top = max(w for _, w, _ in good + (at or []))
        knees = [float(k) for k in np.linspace(0.0, top, 41)] if knee is True else [float(knee or 0.0)]
        best: tuple[tuple[float, float], float, tuple[float, float, float]] | None = None
        for k in knees:
            cut = [(r, max(0.0, w - k), m) for r, w, m in good]
            cut_at = None if at is None else [(r, max(0.0, w - k), m) for r, w, m in at]
            coef = _fit_cut(cut, cut_at)
            if coef is None or coef[0] <= 0:
                continue
            score = _knee_score(cut, cut_at, coef, knee_by if len(knees) > 1 else "rms")
            # a tie (below the least size every knee fits alike): the least knee
            if score is not None and (best is None or score[0] < best[0][0] - 1e-9
                                      or (score[0] <= best[0][0] + 1e-9 and score[1] < best[0][1] - 1e-9)):
                best = (score, k, coef)
        if best is None:
            return False
        _, self.weight_knee, (self.scale, self.weight_coef, self.offset) = best
        self.points, self.triples = [(r, m) for r, _, m in good], good
        self.error_band = max([MIN_BAND] + [abs(self.predict(r, w) / m - 1) for r, w, m in good if m > 0])
        return True

    def calibrate_sum(self, points: Sequence[tuple[float, float]], through: tuple[float, float]) -> bool:
        """Fit ``scale × sum + offset`` to (raw sum, measured ms) pairs through the dense model's pair exactly (least
        squares on the differences to it); True when fitted with a positive scale, else nothing changes. The weight
        plane's fallback: where every policy is float (a prune-only space) the weight bytes follow the sums
        (correlation 0.85 over 10 MobileNetV2 policies, session 12) and the plane's sum coefficient came out
        negative, while this line predicted the near-floor policies within 10 % and the anchor 45–60 % high."""
        r0, m0 = (float(v) for v in through)
        good = [(float(r), float(m)) for r, m in points if m == m]
        dr = np.array([r - r0 for r, _ in good])
        if len(good) < 2 or float(dr @ dr) <= 0:
            return False
        scale = float(dr @ np.array([m - m0 for _, m in good]) / (dr @ dr))
        if scale <= 0:
            return False
        self.scale, self.offset, self.weight_coef = scale, m0 - scale * r0, 0.0
        self.points = good
        self.error_band = self.sum_band()
        return True

    def sum_band(self) -> float:
        """The largest relative error of the line in the sum (no weight term) on :attr:`points`, at least
        :data:`MIN_BAND`."""
        return max([MIN_BAND] + [abs(self.predict(r) / m - 1) for r, m in self.points if m == m and m > 0])

    def pin(self, dense: Sequence[float], floor: Sequence[float]) -> bool:
        """Make the prediction pass through the dense model's and the space's floor's (sum, weight MiB, ms) points,
        both measured end to end in the search's frame (:func:`deepslim.search.frame.check_feasible`): a weight fit
        is refitted through both on its own points; an anchor or a line becomes the line in the sum through them.
        Why: a floor the calibration over-predicts makes every policy near it look over a budget it meets. False
        (nothing changed) when no such fit has a positive scale. The calibration's :attr:`points` stay (the pin
        is in ``floor``) and :attr:`error_band` becomes the pinned fit's error on them."""
        d, f = _point(dense), _point(floor)
        if self.weight_coef and self.triples:
            return self.calibrate_weights(self.triples, through=[d, f], min_points=3, knee=self.weight_knee)
        if abs(f[0] - d[0]) < 1e-12 or (f[2] - d[2]) / (f[0] - d[0]) <= 0:
            return False
        self.scale = (f[2] - d[2]) / (f[0] - d[0])
        self.offset, self.weight_coef = d[2] - self.scale * d[0], 0.0
        self.error_band = self.sum_band()
        return True


def _point(p: Sequence[float]) -> tuple[float, float, float]:
    if len(p) != 3 or not all(np.isfinite(float(v)) for v in p):
        raise ConfigError(f"the point the fit goes through is a finite (raw sum, weight MiB, measured ms) triple: "
                          f"got {p!r}")  # fmt: skip
    raw, mb, ms = (float(v) for v in p)
    return raw, mb, ms


def _fit_cut(cut: Sequence[tuple[float, float, float]],
             at: Sequence[tuple[float, float, float]] | None) -> tuple[float, float, float] | None:  # fmt: skip
    """The plane on (sum, MiB beyond the knee, ms) points, through ``at`` when given."""
    return _plane(cut) if at is None else _plane_through(cut, at)


def _knee_score(cut: Sequence[tuple[float, float, float]], at: Sequence[tuple[float, float, float]] | None,
                coef: tuple[float, float, float], knee_by: str) -> tuple[float, float] | None:  # fmt: skip
    """How well a knee fits (lower is better; compared in order): ``"rms"`` (the in-sample root-mean-square relative
    error, 0); ``"loo-max"`` (the worst and the root-mean-square relative error of each point predicted by the fit
    on the others; None when such a fit is singular)."""
    if knee_by == "rms":
        errs = [(coef[0] * r + coef[1] * w + coef[2]) / m - 1 for r, w, m in cut if m > 0]
        return float(np.sqrt(np.mean(np.square(errs)))) if errs else 0.0, 0.0
    left: list[float] = []
    for i, (r, w, m) in enumerate(cut):
        other = _fit_cut([p for j, p in enumerate(cut) if j != i], at)
        if other is None:
            return None
        if m > 0:
            left.append(abs((other[0] * r + other[1] * w + other[2]) / m - 1))
    return (max(left), float(np.sqrt(np.mean(np.square(left))))) if left else (0.0, 0.0)


def _plane(good: Sequence[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Least-squares ``(scale, weight_coef, offset)`` of ms = scale·raw + weight_coef·MiB + offset (None: singular)."""
    a = np.array([[r, w, 1.0] for r, w, _ in good])
    if np.linalg.matrix_rank(a) < 3:
        return None
    coef, *_ = np.linalg.lstsq(a, np.array([m for *_, m in good]), rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def _points(through: Sequence[float] | Sequence[Sequence[float]]) -> list[tuple[float, float, float]]:
    """One (sum, MiB, ms) triple or a list of them, checked."""
    if len(through) and all(isinstance(p, Sequence) for p in through):
        return [_point(p) for p in through]  # type: ignore[arg-type]
    return [_point(through)]  # type: ignore[arg-type]


def _plane_through(good: Sequence[tuple[float, float, float]],
                   at: Sequence[tuple[float, float, float]]) -> tuple[float, float, float] | None:  # fmt: skip
    """The same plane constrained to pass through every point of ``at`` exactly: least squares under equality
    constraints (the KKT system). One point: least squares on the differences to it, no intercept."""
    a = np.array([[r, w, 1.0] for r, w, _ in good])
    c = np.array([[r, w, 1.0] for r, w, _ in at])
    if np.linalg.matrix_rank(np.vstack([a, c])) < 3 or np.linalg.matrix_rank(c) < len(at):
        return None
    k = len(at)
    kkt = np.block([[2 * a.T @ a, c.T], [c, np.zeros((k, k))]])
    rhs = np.concatenate([2 * a.T @ np.array([m for *_, m in good]), np.array([m for *_, m in at])])
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None
    return float(sol[0]), float(sol[1]), float(sol[2])
