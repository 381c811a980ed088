"""Judging one policy: build it, recover it cheaply, measure it — a policy in (JSON), a :class:`Measurement` out.

The order is the one a recipe runs (so the written recipe rebuilds the chosen model): channel pruning, then recovery
(batch-norm re-estimation for trials; the recipe's short fine-tune, seeded as the recipe seeds it, for finalists),
then int8 quantization calibrated on the data's calibration split. Latency comes from the per-layer table (predicted,
calibrated) and, for checks and finalists, from an end-to-end measurement of the exported model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from deepslim.analysis import profile
from deepslim.analysis.measurement import Measurement
from deepslim.analysis.profile import module_weight_bytes
from deepslim.search.latency import LatencyTable, layer_keys
from deepslim.search.recovery import reestimate_bn_
from deepslim.search.space import Policy, SearchSpace, prune_policy, quantize_policy

RECOVERIES = ("none", "bn", "finetune")


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

    @property
    def accuracy(self) -> float | None:
        return self.measurement.accuracy

    def value(self, objective: str) -> float:
        if objective == "accuracy":
            acc = self.measurement.accuracy
            return float("nan") if acc is None else float(acc)
        if objective == "latency":
            return self.latency_ms
        size = self.measurement.archive_bytes
        return float(size if size is not None else self.measurement.weight_bytes)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"trial": self.trial, "policy": self.policy.to_dict(), "accuracy": m.accuracy,
                "latency_ms": self.latency_ms, "measured_latency_ms": m.measured_latency_ms,
                "predicted_latency_ms": m.extra.get("predicted_latency_ms"), "archive_bytes": m.archive_bytes,
                "macs": m.macs, "feasible": self.feasible, "recovery": self.recovery,
                "measurement": m.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Candidate:
        return cls(Policy.from_dict(doc["policy"]), Measurement.from_dict(doc["measurement"]), float(doc["latency_ms"]),
                   bool(doc.get("feasible", True)), doc.get("trial"), doc.get("recovery", "bn"))  # fmt: skip


@dataclass
class Evaluator:
    """Builds and measures policies of ``space`` on ``model`` and ``data`` (see the module docstring)."""

    model: nn.Module
    data: Any  # a DataBundle
    space: SearchSpace
    table: LatencyTable
    split: str = "val"
    archive: bool = False  # measure archive bytes (the size objective or budget needs them)
    finetune_epochs: int = 1
    lr: float = 1e-3
    seed: int = 0

    def build(self, policy: Policy, recovery: str = "bn") -> tuple[nn.Module, float]:
        """The policy's model (recovered and quantized) and its predicted latency."""
        net, predicted, _ = self._build(policy, recovery)
        return net, predicted

    def _build(self, policy: Policy, recovery: str) -> tuple[nn.Module, float, int]:
        x = self.data.example_input
        net = prune_policy(self.model, self.space, policy, example_input=x, calib_data=self.data.calib)
        keys = layer_keys(net, x, policy.int8)
        predicted = self.table.predict_keys(list(keys.values()))
        if recovery == "bn":
            reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif recovery == "finetune" and self.finetune_epochs > 0:
            from deepslim.train import fit

            # as the recipe's prune stage (stage 1) runs it: seed + 1
            fit(net, self.data, epochs=self.finetune_epochs, lr=self.lr, seed=self.seed + 1)
        quantize_policy(net, self.space, policy, calib_data=self.data.calib)
        return net.eval(), predicted, sum(k.macs for k in keys.values())

    def evaluate(self, policy: Policy, *, recovery: str = "bn", measure: bool = False, split: str | None = None,
                 trial: int | None = None) -> Candidate:  # fmt: skip
        """Build ``policy`` and measure it (end to end too when ``measure`` and the table can). Trials count the
        MACs of convolutions and linear layers only (the profiler's full count is for measured candidates)."""
        start = time.perf_counter()
        net, predicted, macs = self._build(policy, recovery)
        m = measure_model(net, self.data, split=split or self.split, archive=self.archive,
                          macs=None if measure else macs)  # fmt: skip
        times = self.table.measure([(net, self.data.example_input)]) if measure else None
        measured = times if times and times[0] == times[0] else None  # NaN: the export refused it
        extra = {**m.extra, "predicted_latency_ms": predicted}
        m = replace(m, extra=extra, seconds=time.perf_counter() - start, threads=self.table.threads,
                    runtime=self.table.runtime if measured else None,
                    measured_latency_ms=measured[0] if measured else None)  # fmt: skip
        return Candidate(policy, m, measured[0] if measured else predicted, trial=trial, recovery=recovery)


def measure_model(net: nn.Module, data: Any, *, split: str = "val", archive: bool = False,
                  macs: int | None = None) -> Measurement:  # fmt: skip
    """Size, work, task metric on ``split`` and (optionally) archive bytes of ``net`` — no latency. With ``macs``
    given, the profiler (a traced run) is skipped: parameters and weight bytes are counted from the modules."""
    from deepslim.train import evaluate

    result = evaluate(net, data, split=split)
    if macs is not None:
        params = [p for p in net.parameters()]
        weight_bytes = sum(module_weight_bytes(m, list(m.parameters(recurse=False))) for m in net.modules())
        return Measurement(params=sum(p.numel() for p in params), macs=macs, weight_bytes=weight_bytes,
                           nonzero_params=sum(int(p.count_nonzero()) for p in params), accuracy=result.accuracy,
                           metric=result.metric, metric_value=float(result.value),
                           archive_bytes=len(_encode(net)) if archive else None, load_average=os.getloadavg(),
                           extra={"split": split, "macs_counted": "conv/linear"})  # fmt: skip
    prof = profile(net, data.example_input)
    archive_bytes = len(_encode(net)) if archive else None
    return Measurement(params=prof.params, nonzero_params=prof.nonzero_params, macs=prof.macs,
                       weight_bytes=prof.weight_bytes, accuracy=result.accuracy, metric=result.metric,
                       metric_value=float(result.value), archive_bytes=archive_bytes,
                       peak_activation_bytes=prof.peak_activation_bytes, load_average=os.getloadavg(),
                       extra={"split": split})  # fmt: skip


def _encode(net: nn.Module) -> bytes:
    from deepslim.compress.coding import encode

    return encode(net)
