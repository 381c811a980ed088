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
from deepslim.search.latency import LatencyTable
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
        x = self.data.example_input
        net = prune_policy(self.model, self.space, policy, example_input=x, calib_data=self.data.calib)
        predicted = self.table.predict(net, x, policy.int8)
        if recovery == "bn":
            reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif recovery == "finetune" and self.finetune_epochs > 0:
            from deepslim.train import fit

            # as the recipe's prune stage (stage 1) runs it: seed + 1
            fit(net, self.data, epochs=self.finetune_epochs, lr=self.lr, seed=self.seed + 1)
        quantize_policy(net, self.space, policy, calib_data=self.data.calib)
        return net.eval(), predicted

    def evaluate(self, policy: Policy, *, recovery: str = "bn", measure: bool = False, split: str | None = None,
                 trial: int | None = None) -> Candidate:  # fmt: skip
        """Build ``policy`` and measure it (end to end too when ``measure`` and the table can)."""
        start = time.perf_counter()
        net, predicted = self.build(policy, recovery)
        m = measure_model(net, self.data, split=split or self.split, archive=self.archive)
        measured = self.table.measure([(net, self.data.example_input)]) if measure else None
        extra = {**m.extra, "predicted_latency_ms": predicted}
        m = replace(m, extra=extra, seconds=time.perf_counter() - start, threads=self.table.threads,
                    runtime=self.table.runtime if measured else None,
                    measured_latency_ms=measured[0] if measured else None)  # fmt: skip
        return Candidate(policy, m, measured[0] if measured else predicted, trial=trial, recovery=recovery)


def measure_model(net: nn.Module, data: Any, *, split: str = "val", archive: bool = False) -> Measurement:
    """Size, work, task metric on ``split`` and (optionally) archive bytes of ``net`` — no latency."""
    from deepslim.train import evaluate

    prof = profile(net, data.example_input)
    result = evaluate(net, data, split=split)
    archive_bytes = None
    if archive:
        from deepslim.compress.coding import encode

        archive_bytes = len(encode(net))
    return Measurement(params=prof.params, nonzero_params=prof.nonzero_params, macs=prof.macs,
                       weight_bytes=prof.weight_bytes, accuracy=result.accuracy, metric=result.metric,
                       metric_value=float(result.value), archive_bytes=archive_bytes,
                       peak_activation_bytes=prof.peak_activation_bytes, load_average=os.getloadavg(),
                       extra={"split": split})  # fmt: skip
