"""Judging one policy: build it, recover it cheaply, measure it — a policy in (JSON), a :class:`Measurement` out.

The order is the one a recipe runs (so the written recipe rebuilds the chosen model): blocks dropped (a depth
choice), channel pruning, then recovery (batch-norm re-estimation for trials; the recipe's short fine-tune or
distillation from the dense model, seeded as the recipe seeds it, for finalists — or, with zero epochs, the same
batch-norm re-estimation as a recipe stage), then int8 quantization calibrated on the data's calibration split.
Latency comes from the per-layer table (predicted, calibrated) or, with ``latency_model="nodes"`` (the search's
default on ONNX Runtime), from the node-level table's prediction of the policy's exported graph — pruned, recovered
and quantized: exactly the model the runtime would run (:mod:`deepslim.search.node_table`) — and, for checks and
finalists, from an end-to-end measurement of the exported model; energy, when a device is named, from the cost model
on that device profile.

When the space searches the recovery's hyper-parameters (HPO), every trial is fine-tuned with its own values: a
trial judged after batch-norm re-estimation alone would say nothing about them.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from deepslim.analysis import profile
from deepslim.analysis.measurement import Measurement
from deepslim.analysis.profile import module_weight_bytes
from deepslim.errors import ConfigError, DeepSlimError, ExportError
from deepslim.search import _depth
from deepslim.search._timing import PairTimer, describe
from deepslim.search.latency import LatencyTable, LayerKey, layer_keys
from deepslim.search.node_table import NodeTable
from deepslim.search.recovery import reestimate_bn_
from deepslim.search.space import Policy, SearchSpace, prune_policy, quantize_policy

log = logging.getLogger(__name__)

RECOVERIES = ("none", "bn", "steps", "finetune")  # "steps": the trials' proxy, a short (distilled) fine-tune
# what gives a policy's latency: the node-level table, the per-layer table, or the policy measured end to end
LATENCY_MODELS = ("nodes", "layers", "measured")
REFERENCE_RUNS = 3  # runs of the dense model against itself that set the measured model's frame (settle_reference)


@dataclass(frozen=True)
class Candidate:
    """A judged policy: its measurement, the latency the search used (predicted, or measured when it was) and
    whether it meets the budgets."""

    policy: Policy
    measurement: Measurement
    latency_ms: float
    feasible: bool = True
    trial: int | None = None
    recovery: str = "bn"
    remeasured: dict[str, Any] | None = None  # the final interleaved re-measurement (finalists only; see finals.py)

    @property
    def accuracy(self) -> float | None:
        return self.measurement.accuracy

    def value(self, objective: str) -> float:
        if objective == "accuracy":
            acc = self.measurement.accuracy
            return float("nan") if acc is None else float(acc)
        if objective == "latency":
            return self.latency_ms
        if objective == "energy":
            energy = self.measurement.estimated_energy_uj
            return float("nan") if energy is None else float(energy)
        if objective == "memory":
            peak = self.measurement.peak_activation_bytes
            return float("nan") if peak is None else float(peak)
        size = self.measurement.archive_bytes
        return float(size if size is not None else self.measurement.weight_bytes)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"trial": self.trial, "policy": self.policy.to_dict(), "accuracy": m.accuracy,
                "latency_ms": self.latency_ms, "measured_latency_ms": m.measured_latency_ms,
                "predicted_latency_ms": m.extra.get("predicted_latency_ms"), "archive_bytes": m.archive_bytes,
                "energy_uj": m.estimated_energy_uj, "peak_activation_bytes": m.peak_activation_bytes,
                "device": m.device, "macs": m.macs, "feasible": self.feasible,
                "recovery": self.recovery, "remeasured": self.remeasured,
                "measurement": m.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Candidate:
        return cls(Policy.from_dict(doc["policy"]), Measurement.from_dict(doc["measurement"]), float(doc["latency_ms"]),
                   bool(doc.get("feasible", True)), doc.get("trial"), doc.get("recovery", "bn"),
                   doc.get("remeasured"))  # fmt: skip


@dataclass
class Evaluator:
    """Builds and measures policies of ``space`` on ``model`` and ``data`` (see the module docstring).

    ``finetune_epochs`` and ``lr`` are the recovery's defaults; a policy's own ``recovery`` values (HPO) take their
    place. ``device`` names the device profile whose cost model estimates each candidate's energy (the energy
    objective and budget); an unknown name is a ConfigError listing the known ones. ``latency_model`` says which table
    predicts latency: "layers" (the per-layer table, calibrated) or "nodes" (``nodes``, a :class:`NodeTable` on
    ``table``'s entries; built with the real ONNX Runtime splitter and timer when not given). With "layers" and a
    node table given, candidates measured end to end get the node table's prediction too (the table check's other
    column)."""

    model: nn.Module
    data: Any  # a DataBundle
    space: SearchSpace
    table: LatencyTable
    split: str = "val"
    archive: bool = False  # measure archive bytes (the size objective or budget needs them)
    memory: bool = False  # profile every trial fully: the memory objective or budget needs its peak activation bytes
    finetune_epochs: int = 1
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None
    latency_model: str = "layers"
    accept_low_fidelity: bool = False  # quantization's fidelity check warns instead of refusing (random weights)
    proxy_steps: int = 0  # > 0: trials are fine-tuned this many steps (recovery "steps") instead of BN re-estimation
    proxy_distill: bool = True  # the proxy's steps distill from the dense model (else: the labels alone)
    temperature: float | None = None  # the default recovery's distillation temperature (None: labels alone)
    proxy_lr: float | None = None  # the proxy's peak learning rate (None: ``lr``)
    latency_limit: float | None = None  # the latency budget in this frame (ms): below or near it, ``measured`` repeats
    measure_repeats: int = 5  # runs of a policy whose first run is not beyond ``repeat_margin`` over the limit (median)
    repeat_margin: float = 0.15
    calibration_policies: int = 0  # random spread policies the calibration measures beside its fixed ones (engine)
    nodes: NodeTable | None = None  # stays in this process: workers build their own (workers.evaluator_settings)
    _node_raw: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    _node_keys: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _measured: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    _runs: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _timer: PairTimer | None = field(default=None, init=False, repr=False, compare=False)
    _batches: list[tuple[Any, Any, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.device is not None:
            from deepslim.analysis.devices import list_devices
            from deepslim.errors import UnknownNameError

            if self.device not in list_devices():
                raise UnknownNameError("device", self.device, list_devices())
        if self.latency_model not in LATENCY_MODELS:
            raise ConfigError(f"unknown latency model {self.latency_model!r}; choose one of "
                              f"{', '.join(LATENCY_MODELS)}")  # fmt: skip
        if self.latency_model == "nodes" and self.nodes is None:
            self.nodes = NodeTable(self.table)
        if isinstance(self.proxy_steps, bool) or not isinstance(self.proxy_steps, int) or self.proxy_steps < 0:
            raise ConfigError(f"proxy_steps must be an integer >= 0, got {self.proxy_steps!r}")
        if isinstance(self.calibration_policies, bool) or not isinstance(self.calibration_policies, int) or \
                self.calibration_policies < 0:
            raise ConfigError(f"calibration_policies must be an integer >= 0, got {self.calibration_policies!r}")
        if isinstance(self.measure_repeats, bool) or not isinstance(self.measure_repeats, int) or \
                self.measure_repeats < 1:
            raise ConfigError(f"measure_repeats must be an integer >= 1, got {self.measure_repeats!r}")
        if self.proxy_lr is not None and (isinstance(self.proxy_lr, bool) or not isinstance(self.proxy_lr, (int, float))
                                          or not 0 < self.proxy_lr < math.inf):  # fmt: skip
            raise ConfigError(f"proxy_lr must be a positive number or None, got {self.proxy_lr!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be a positive number or None, got {self.temperature!r}")
        if self.latency_model == "measured" and not self.table.end_to_end:
            raise ConfigError("the measured latency model times whole models: this latency table has no end-to-end "
                              "timer (use the ONNX Runtime table, or give the table a model_timer)")  # fmt: skip

    @property
    def trial_recovery(self) -> str:
        """How trials are recovered: a fine-tune when the space searches its hyper-parameters, else the proxy's
        ``proxy_steps`` steps when set ("steps"), else batch-norm re-estimation ("bn")."""
        return "finetune" if self.space.recovery else "steps" if self.proxy_steps > 0 else "bn"

    def build(self, policy: Policy, recovery: str | None = None) -> tuple[nn.Module, float]:
        """The policy's model (recovered and quantized) and its predicted latency (of :attr:`latency_model`)."""
        net, keys = self.model_and_keys(policy, recovery or self.trial_recovery)
        return net, self.predictions(policy, net, keys)[self.latency_model]

    def model_and_keys(self, policy: Policy, recovery: str) -> tuple[nn.Module, list[LayerKey]]:
        """The policy's model (pruned, recovered with ``recovery``, quantized) and its layers' keys in execution
        order (of the float model: the layer table's input), without any prediction."""
        if recovery not in RECOVERIES:
            raise ConfigError(f"unknown recovery {recovery!r}; choose one of {', '.join(RECOVERIES)}")
        x = self.data.example_input
        net = prune_policy(self.model, self.space, policy, example_input=x, calib_data=self.data.calib)
        keys = list(layer_keys(net, x, policy.int8).values())
        if recovery == "bn":
            reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif recovery == "steps":
            self._proxy(net)
        elif recovery == "finetune":
            self._finetune(net, policy)
        quantize_policy(net, self.space, policy, calib_data=self.data.calib,
                        accept_low_fidelity=self.accept_low_fidelity)  # fmt: skip
        return net.eval(), keys

    def predictions(self, policy: Policy, net: nn.Module, keys: list[LayerKey], *,
                    both: bool = False) -> dict[str, float]:  # fmt: skip
        """``{"layers": ms}`` and, with the node model (or ``both`` and a node table), ``{"nodes": ms}``: the
        node table's prediction of ``net`` exported as the runtime runs it. A policy's node entries are summed once
        (its graph's nodes depend on its channels and precisions, not on weight values), so finalists re-use
        their trial's."""
        found = {"layers": self.table.predict_keys(keys)}
        if self.latency_model == "measured":
            found["measured"] = self.measured_ms(policy, net)
        if self.nodes is not None and (self.latency_model == "nodes" or both):
            shape = _shape(policy)
            try:
                if shape not in self._node_raw:
                    self._node_raw[shape] = self.nodes.raw_model(net, self.data.example_input)
                    self._node_keys[shape] = list(self.nodes.last_keys)
            except DeepSlimError as exc:
                if self.latency_model == "nodes":
                    raise
                log.warning("no node-table prediction beside the layer table's: %s", exc)  # a check's column only
                return found
            found["nodes"] = self.nodes.predict_model(self._node_raw[shape], net)
        return found

    def measured_ms(self, policy: Policy, net: nn.Module) -> float:
        """``policy``'s latency measured end to end (the ``measured`` latency model), interleaved with the dense model
        in the same run and expressed in the frame of the dense model's reference (:meth:`settle_reference`, else its
        first reading alone): ``dense_ms × policy / dense``, so load that changes between trials moves both and
        cancels. Measured once per channel/precision shape (:class:`~deepslim.search._timing.PairTimer`: the dense
        file exported once, float models with the fast exporter); a policy whose first run says it meets
        ``latency_limit`` (or misses it by at most ``repeat_margin``) is run ``measure_repeats`` times in all and
        judged by the median ratio. Why every apparently feasible policy and not only those near the limit: one run
        could not separate policies ~10% apart at load 3–4 (session 8), and a rare run reads a policy far faster than
        it is (session 10: two of 200 trials at 0.24× dense whose runs otherwise give 0.30–0.34×); the search then
        prefers exactly those trials — the larger, more accurate ones that seemed to fit — and every finalist failed
        its re-measurement. A policy far over the limit is measured once: misjudging it only loses a candidate.
        Without a latency budget (latency an objective only) every policy is measured once: the Pareto front then
        rests on single runs, and the finals' re-measurement is what checks it. A model the runtime cannot run is
        refused as the trial's ExportError."""
        shape = _shape(policy)
        if shape in self._measured:
            return self._measured[shape]
        if self._timer is None:
            self._timer = PairTimer(self.table, self.model, self.data.example_input)
        dense = _shape(self.space.dense())
        if dense not in self._measured:
            first = self._timer.reference_ms()
            if math.isnan(first):
                raise ExportError("the dense model could not be measured end to end (its export failed)")
            self._measured[dense] = first
        if shape == dense:
            return self._measured[dense]
        base = self._measured[dense]

        def more(found: list[tuple[float, float]]) -> int:
            ratio = found[0][1] / found[0][0]
            credit = self.latency_limit is not None and base * ratio <= self.latency_limit * (1 + self.repeat_margin)
            return self.measure_repeats - 1 if credit else 0

        runs = describe(self._timer.runs(net, 1, more))
        if math.isnan(runs["median"]):
            raise ExportError("the policy's model could not be measured end to end (its export failed)")
        self._runs[shape] = runs
        self._measured[shape] = base * runs["median"]
        return self._measured[shape]

    def reference(self) -> float | None:
        """The measured model's frame (the dense model's milliseconds) once set, else None (and for the other
        latency models): what a study records (:func:`deepslim.search.frame.table_state`)."""
        return self._measured.get(_shape(self.space.dense())) if self.latency_model == "measured" else None

    def settle_reference(self, runs: int = REFERENCE_RUNS, recorded: float | None = None) -> float | None:
        """Set the measured model's frame (the dense model's milliseconds that every ratio to dense is scaled by,
        and so a relative budget's limit) to the median of every reading of the dense model in ``runs`` runs of it
        timed against itself, as trials' pairs are timed (interleaved, a process each), instead of the one reading
        alone that :meth:`measured_ms` takes when nothing set it; the search's first step
        (:func:`deepslim.search.engine._judging_frame`). Its value, or None for the other latency models or once
        the frame is set. Why: one start-up reading set the frame (session 15: 0.854 ms where the paired runs read
        dense at ~0.59), so a run's limit and every trial's milliseconds moved with it — not the feasible set (a
        trial is judged by its median ratio to dense readings interleaved with it, the limit by the same factor),
        but every reported millisecond, and the frame the floor check and the report compare in. ``recorded``: a
        resumed study's frame (:meth:`reference` as its first run recorded it), kept instead of timing dense again
        (None returned): its earlier trials' milliseconds and its limit are in that frame, and a frame settled under
        other load would re-judge them against a limit moved by the load's ratio (review R16 H1)."""
        dense = _shape(self.space.dense())
        if self.latency_model != "measured" or dense in self._measured:
            return None
        if recorded is not None:
            self._measured[dense] = float(recorded)
            return None
        if self._timer is None:
            self._timer = PairTimer(self.table, self.model, self.data.example_input)
        try:
            found = self._timer.runs(self.model, runs)
        except ExportError as exc:
            raise ExportError(f"the dense model could not be measured end to end: {exc}") from exc
        self._measured[dense] = statistics.median(t for pair in found for t in pair)
        return self._measured[dense]

    def node_raw(self, policy: Policy, net: nn.Module) -> float | None:
        """The node table's plain sum (no calibration) for ``policy`` built as ``net``; None without a node table
        or when the model cannot be exported (the node column is then missing, as in :meth:`predictions`)."""
        if self.nodes is None:
            return None
        if "nodes" not in self.predictions(policy, net, [], both=True):
            return None
        return self._node_raw[_shape(policy)]

    def resum_nodes(self) -> int:
        """Re-sum every policy's node entries summed so far from its recorded node keys (:meth:`NodeTable.sum_keys`),
        after the node table's entries changed (:meth:`NodeTable.lower_entries`, in the calibration before its fit);
        the number of sums that moved. A sum without recorded keys is dropped, to be summed again when asked."""
        if self.nodes is None:
            return 0
        moved = 0
        for shape in list(self._node_raw):
            if shape not in self._node_keys:
                del self._node_raw[shape]
                continue
            raw = self.nodes.sum_keys(self._node_keys[shape])
            moved += raw != self._node_raw[shape]
            self._node_raw[shape] = raw
        return moved

    def recovery_of(self, policy: Policy) -> dict[str, Any]:
        """The recovery ``policy`` gets when fine-tuned: ``finetune_epochs``, ``lr`` and ``temperature`` (None: no
        distillation), the policy's own values first, then this evaluator's defaults."""
        return {"finetune_epochs": self.finetune_epochs, "lr": self.lr, "temperature": self.temperature,
                **policy.recovery}  # fmt: skip

    def _proxy(self, net: nn.Module) -> None:
        """The trials' accuracy proxy (recovery "steps"): batch norms re-estimated, then ``proxy_steps`` Adam steps
        (:func:`~deepslim.search.recovery.short_finetune_`), distilled from the dense model at ``temperature`` (4 when
        None) with ``proxy_distill``. Batch-norm re-estimation alone ranked pruned MobileNetV2 policies unlike their
        fine-tuned accuracy (docs/search.md)."""
        from deepslim.search.recovery import proxy_batches, short_finetune_

        if self._batches is None:  # drawn once per search: every trial sees the same batches and teacher outputs
            teacher = self.model if self.proxy_distill else None
            self._batches = proxy_batches(self.data, self.proxy_steps, teacher=teacher, seed=self.seed)
        short_finetune_(net, self.data, steps=self.proxy_steps, lr=self.proxy_lr or self.lr, seed=self.seed,
                        temperature=self.temperature or 4.0, batches=self._batches)  # fmt: skip

    def _finetune(self, net: nn.Module, policy: Policy) -> None:
        """Recover ``net`` as the written recipe does (:func:`deepslim.search.recipe.policy_recipe`), with its seeds:
        the recipe's stage ``i`` trains with ``seed + i``. Its prune stages come first (blocks dropped, channels, then
        unstructured sparsity); the last of them fine-tunes, or a distill stage follows them."""
        rec = self.recovery_of(policy)
        pruned = (self.space.depth_config(policy) is not None) + (self.space.configs(policy)[0] is not None) + \
            (self.space.weight_configs(policy)[0] is not None)  # fmt: skip
        epochs, lr, temperature = int(rec["finetune_epochs"]), float(rec["lr"]), rec["temperature"]
        if epochs == 0:  # no training: the statistics pruning left stale are re-estimated (stage "recalibrate")
            if pruned:
                reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif temperature is None:  # the last prune stage's own fine-tune, or a finetune stage (stage 1)
            from deepslim.train import fit

            fit(net, self.data, epochs=epochs, lr=lr, seed=self.seed + max(1, pruned))
        else:  # a distill stage from the dense model, after the prune stages
            from deepslim.train import KDConfig, distill

            distill(net, copy.deepcopy(self.model), self.data, KDConfig(temperature=float(temperature)), epochs=epochs,
                    lr=lr, seed=self.seed + pruned + 1)  # fmt: skip

    def least(self, metric: str) -> tuple[float, Policy]:
        """The least archive bytes ("size"), energy ("energy") or peak activation bytes ("memory") a policy of the
        space reaches, and that policy:
        the fewest channels, every layer int8 or every layer float (whichever is less; measured unrecovered)."""
        options = [self.space.smallest(True), self.space.smallest(False)]
        judged = [(self.evaluate(p, recovery="none").value(metric), p) for p in options]
        return min(judged, key=lambda t: t[0])

    def evaluate(self, policy: Policy, *, recovery: str | None = None, measure: bool = False,
                 split: str | None = None, trial: int | None = None) -> Candidate:  # fmt: skip
        """Build ``policy`` and measure it (end to end too when ``measure`` and the table can). ``recovery``:
        "none", "bn" or "finetune" (default: :attr:`trial_recovery`). Trials count the MACs of convolutions and
        linear layers only (the profiler's full count is for measured candidates and for energy estimates)."""
        cand, net = self.judge(policy, recovery=recovery, split=split, trial=trial, both=measure, full=measure)
        if not measure:
            return cand
        times = self.table.measure([(net, self.data.example_input)])
        return with_measured(cand, times[0] if times else None, self.table.runtime)

    def judge(self, policy: Policy, *, recovery: str | None = None, split: str | None = None,
              trial: int | None = None, both: bool = False, full: bool = False) -> tuple[Candidate, nn.Module]:
        """The policy's candidate (predicted latency, not measured end to end) and its model, for a caller that
        measures several models interleaved (the final re-measurement). ``both``: the other table's prediction too,
        when there is one; ``full``: the profiler's full MAC count (else convolutions and linear layers only)."""
        start = time.perf_counter()
        recovery = recovery or self.trial_recovery
        net, keys = self.model_and_keys(policy, recovery)
        cand = self.candidate(policy, net, keys, recovery=recovery, split=split, trial=trial, both=both, full=full,
                              started=start)  # fmt: skip
        return cand, net

    def candidate(self, policy: Policy, net: nn.Module, keys: list[LayerKey], *, recovery: str,
                  split: str | None = None, trial: int | None = None, both: bool = False, full: bool = False,
                  score: bool = True, started: float | None = None) -> Candidate:  # fmt: skip
        """The candidate of ``net``, ``policy`` already built with ``recovery`` (:meth:`model_and_keys`; its
        ``keys``): measured as :meth:`judge` measures it. ``score=False`` leaves its accuracy unjudged (None, no
        evaluation on the split): for a trial over a latency budget whose accuracy no strategy reads
        (:func:`deepslim.search.trials._unrecovered_over_budget`). ``started``: when its build began (its
        ``seconds``)."""
        start = time.perf_counter() if started is None else started
        preds = self.predictions(policy, net, keys, both=both)
        full = full or self.device is not None or self.memory
        m = measure_model(net, self.data, split=split or self.split, archive=self.archive,
                          macs=None if full else sum(k.macs for k in keys), device=self.device,
                          score=score)  # fmt: skip
        predicted = preds[self.latency_model]
        extra = {**m.extra, "predicted_latency_ms": predicted, "latency_model": self.latency_model,
                 **{f"{name.removesuffix('s')}_predicted_ms": ms for name, ms in preds.items()}}  # fmt: skip
        if _shape(policy) in self._runs:  # the measured model's runs: ratios to dense, median, band
            extra["measured_runs"] = self._runs[_shape(policy)]
        m = replace(m, extra=extra, seconds=time.perf_counter() - start, threads=self.table.threads)
        return Candidate(policy, m, predicted, trial=trial, recovery=recovery)


def _shape(policy: Policy) -> str:
    """What a policy's exported graph depends on (its blocks, channels and precisions): the node sums' cache key.
    Groups and layers inside dropped blocks have no say, so policies that differ only there share one key."""
    keep, int8 = _depth.alive(policy.keep, policy.drop), _depth.alive(policy.int8, policy.drop)
    gone = _depth.dropped(policy.drop)
    return str(sorted(keep.items())) + str(sorted(int8.items())) + (str(sorted(gone)) if gone else "")


def resolve_latency_model(name: str | None, table: LatencyTable,
                          nodes: NodeTable | None = None) -> tuple[str, NodeTable | None]:  # fmt: skip
    """The latency model a search judges with and its node table: ``name``, or by default "nodes" on a real ONNX
    Runtime table (or when a node table is given) and "layers" on a table with custom timers. A real table gets a
    node table even with "layers": it predicts the end-to-end checks beside the layer table."""
    if name is not None and name not in LATENCY_MODELS:
        raise ConfigError(f"unknown latency model {name!r}; choose one of {', '.join(LATENCY_MODELS)}")
    real = table.key != "custom" and table.runtime == "onnxruntime"
    if nodes is None and (real or name == "nodes"):
        nodes = NodeTable(table)
    if nodes is not None and nodes.table is not table:
        raise ConfigError("the node table must be built on the search's latency table (NodeTable(latency_table))")
    chosen = name or ("nodes" if real or nodes is not None else "layers")
    return chosen, nodes


def with_measured(cand: Candidate, ms: float | None, runtime: str) -> Candidate:
    """``cand`` with its end-to-end measurement (None or NaN: not measured, the prediction stays its latency)."""
    if ms is None or ms != ms:
        return cand
    m = replace(cand.measurement, runtime=runtime, measured_latency_ms=float(ms))
    return replace(cand, measurement=m, latency_ms=float(ms))


def measure_model(net: nn.Module, data: Any, *, split: str = "val", archive: bool = False,
                  macs: int | None = None, device: str | None = None, score: bool = True) -> Measurement:  # fmt: skip
    """Size, work, task metric on ``split`` and (optionally) archive bytes of ``net`` — no measured latency. With
    ``macs`` given, the profiler (a traced run) is skipped: parameters and weight bytes are counted from the
    modules. ``device`` (with the profiler) adds the cost model's energy and roofline latency on that device.
    ``score=False``: no evaluation; accuracy, metric and its value are None (not measured) and ``split`` absent."""
    from deepslim.train import evaluate

    scores: dict[str, Any] = {}  # not scored: accuracy, metric and its value stay None
    if score:
        result = evaluate(net, data, split=split)
        scores = {"accuracy": result.accuracy, "metric": result.metric, "metric_value": float(result.value)}
    extra = {"split": split} if score else {}
    if macs is not None:
        params = [p for p in net.parameters()]
        weight_bytes = sum(module_weight_bytes(m, list(m.parameters(recurse=False))) for m in net.modules())
        return Measurement(params=sum(p.numel() for p in params), macs=macs, weight_bytes=weight_bytes,
                           nonzero_params=sum(int(p.count_nonzero()) for p in params), **scores,
                           archive_bytes=len(_encode(net, data)) if archive else None, load_average=os.getloadavg(),
                           extra={**extra, "macs_counted": "conv/linear"})  # fmt: skip
    prof = profile(net, data.example_input, device=device)
    archive_bytes = len(_encode(net, data)) if archive else None
    cost = prof.cost if device is not None else None
    return Measurement(params=prof.params, nonzero_params=prof.nonzero_params, macs=prof.macs,
                       weight_bytes=prof.weight_bytes, **scores, archive_bytes=archive_bytes,
                       peak_activation_bytes=prof.peak_activation_bytes, load_average=os.getloadavg(),
                       device=device if cost is not None else None,
                       estimated_latency_ms=cost.latency_ms if cost is not None else None,
                       estimated_energy_uj=cost.energy_uj if cost is not None else None,
                       extra=extra)  # fmt: skip


def _encode(net: nn.Module, data: Any) -> bytes:
    """The ``.dsz`` archive ``deepslim compress`` writes for ``net``: with the data's preprocessing recorded on the
    model, as a recipe run pairs them (without it, the search counted ~60 bytes fewer than the recipe's file)."""
    from deepslim.compress.coding import encode
    from deepslim.models import attach_preprocessing

    attach_preprocessing(net, data)
    return encode(net)
