"""Judging one policy: build it, recover it cheaply, measure it — a policy in (JSON), a :class:`Measurement` out.

The order is the one a recipe runs (so the written recipe rebuilds the chosen model): channel pruning, then recovery
(batch-norm re-estimation for trials; the recipe's short fine-tune or distillation from the dense model, seeded as
the recipe seeds it, for finalists — or, with zero epochs, the same batch-norm re-estimation as a recipe stage),
then int8 quantization calibrated on the data's calibration split. Latency comes from the per-layer table (predicted,
calibrated) and, for checks and finalists, from an end-to-end measurement of the exported model; energy, when a
device is named, from the cost model on that device profile.

When the space searches the recovery's hyper-parameters (HPO), every trial is fine-tuned with its own values: a
trial judged after batch-norm re-estimation alone would say nothing about them.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from deepslim.analysis import profile
from deepslim.analysis.measurement import Measurement
from deepslim.analysis.profile import module_weight_bytes
from deepslim.errors import ConfigError
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
        if objective == "energy":
            energy = self.measurement.estimated_energy_uj
            return float("nan") if energy is None else float(energy)
        size = self.measurement.archive_bytes
        return float(size if size is not None else self.measurement.weight_bytes)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"trial": self.trial, "policy": self.policy.to_dict(), "accuracy": m.accuracy,
                "latency_ms": self.latency_ms, "measured_latency_ms": m.measured_latency_ms,
                "predicted_latency_ms": m.extra.get("predicted_latency_ms"), "archive_bytes": m.archive_bytes,
                "energy_uj": m.estimated_energy_uj, "device": m.device, "macs": m.macs, "feasible": self.feasible,
                "recovery": self.recovery,
                "measurement": m.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Candidate:
        return cls(Policy.from_dict(doc["policy"]), Measurement.from_dict(doc["measurement"]), float(doc["latency_ms"]),
                   bool(doc.get("feasible", True)), doc.get("trial"), doc.get("recovery", "bn"))  # fmt: skip


@dataclass
class Evaluator:
    """Builds and measures policies of ``space`` on ``model`` and ``data`` (see the module docstring).

    ``finetune_epochs`` and ``lr`` are the recovery's defaults; a policy's own ``recovery`` values (HPO) take their
    place. ``device`` names the device profile whose cost model estimates each candidate's energy (the energy
    objective and budget); an unknown name is a ConfigError listing the known ones."""

    model: nn.Module
    data: Any  # a DataBundle
    space: SearchSpace
    table: LatencyTable
    split: str = "val"
    archive: bool = False  # measure archive bytes (the size objective or budget needs them)
    finetune_epochs: int = 1
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            from deepslim.analysis.devices import list_devices
            from deepslim.errors import UnknownNameError

            if self.device not in list_devices():
                raise UnknownNameError("device", self.device, list_devices())

    @property
    def trial_recovery(self) -> str:
        """How trials are recovered: a fine-tune when the space searches its hyper-parameters, else batch-norm
        re-estimation."""
        return "finetune" if self.space.recovery else "bn"

    def build(self, policy: Policy, recovery: str | None = None) -> tuple[nn.Module, float]:
        """The policy's model (recovered and quantized) and its predicted latency."""
        net, predicted, _ = self._build(policy, recovery or self.trial_recovery)
        return net, predicted

    def _build(self, policy: Policy, recovery: str) -> tuple[nn.Module, float, int]:
        if recovery not in RECOVERIES:
            raise ConfigError(f"unknown recovery {recovery!r}; choose one of {', '.join(RECOVERIES)}")
        x = self.data.example_input
        net = prune_policy(self.model, self.space, policy, example_input=x, calib_data=self.data.calib)
        keys = layer_keys(net, x, policy.int8)
        predicted = self.table.predict_keys(list(keys.values()))
        if recovery == "bn":
            reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif recovery == "finetune":
            self._finetune(net, policy)
        quantize_policy(net, self.space, policy, calib_data=self.data.calib)
        return net.eval(), predicted, sum(k.macs for k in keys.values())

    def recovery_of(self, policy: Policy) -> dict[str, Any]:
        """The recovery ``policy`` gets when fine-tuned: ``finetune_epochs``, ``lr`` and ``temperature`` (None: no
        distillation), the policy's own values first, then this evaluator's defaults."""
        return {"finetune_epochs": self.finetune_epochs, "lr": self.lr, "temperature": None, **policy.recovery}

    def _finetune(self, net: nn.Module, policy: Policy) -> None:
        """Recover ``net`` as the written recipe does (:func:`deepslim.search.recipe.policy_recipe`), with its seeds:
        the recipe's stage ``i`` trains with ``seed + i``."""
        rec = self.recovery_of(policy)
        pruned = self.space.configs(policy)[0] is not None
        epochs, lr, temperature = int(rec["finetune_epochs"]), float(rec["lr"]), rec["temperature"]
        if epochs == 0:  # no training: the statistics pruning left stale are re-estimated (stage "recalibrate")
            if pruned:
                reestimate_bn_(net, self.data.calib, task=self.data.task)
        elif temperature is None:  # the prune stage's own fine-tune (stage 1), or a finetune stage (stage 1)
            from deepslim.train import fit

            fit(net, self.data, epochs=epochs, lr=lr, seed=self.seed + 1)
        else:  # a distill stage from the dense model: stage 2 after the prune stage, else stage 1
            from deepslim.train import KDConfig, distill

            distill(net, copy.deepcopy(self.model), self.data, KDConfig(temperature=float(temperature)), epochs=epochs,
                    lr=lr, seed=self.seed + (2 if pruned else 1))  # fmt: skip

    def least(self, metric: str) -> tuple[float, Policy]:
        """The least archive bytes ("size") or energy ("energy") a policy of the space reaches, and that policy:
        the fewest channels, every layer int8 or every layer float (whichever is less; measured unrecovered)."""
        options = [self.space.smallest(True), self.space.smallest(False)]
        judged = [(self.evaluate(p, recovery="none").value(metric), p) for p in options]
        return min(judged, key=lambda t: t[0])

    def evaluate(self, policy: Policy, *, recovery: str | None = None, measure: bool = False,
                 split: str | None = None, trial: int | None = None) -> Candidate:  # fmt: skip
        """Build ``policy`` and measure it (end to end too when ``measure`` and the table can). ``recovery``:
        "none", "bn" or "finetune" (default: :attr:`trial_recovery`). Trials count the MACs of convolutions and
        linear layers only (the profiler's full count is for measured candidates and for energy estimates)."""
        start = time.perf_counter()
        recovery = recovery or self.trial_recovery
        net, predicted, macs = self._build(policy, recovery)
        full = measure or self.device is not None
        m = measure_model(net, self.data, split=split or self.split, archive=self.archive,
                          macs=None if full else macs, device=self.device)  # fmt: skip
        times = self.table.measure([(net, self.data.example_input)]) if measure else None
        measured = times if times and times[0] == times[0] else None  # NaN: the export refused it
        extra = {**m.extra, "predicted_latency_ms": predicted}
        m = replace(m, extra=extra, seconds=time.perf_counter() - start, threads=self.table.threads,
                    runtime=self.table.runtime if measured else None,
                    measured_latency_ms=measured[0] if measured else None)  # fmt: skip
        return Candidate(policy, m, measured[0] if measured else predicted, trial=trial, recovery=recovery)


def measure_model(net: nn.Module, data: Any, *, split: str = "val", archive: bool = False,
                  macs: int | None = None, device: str | None = None) -> Measurement:  # fmt: skip
    """Size, work, task metric on ``split`` and (optionally) archive bytes of ``net`` — no measured latency. With
    ``macs`` given, the profiler (a traced run) is skipped: parameters and weight bytes are counted from the
    modules. ``device`` (with the profiler) adds the cost model's energy and roofline latency on that device."""
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
    prof = profile(net, data.example_input, device=device)
    archive_bytes = len(_encode(net)) if archive else None
    cost = prof.cost if device is not None else None
    return Measurement(params=prof.params, nonzero_params=prof.nonzero_params, macs=prof.macs,
                       weight_bytes=prof.weight_bytes, accuracy=result.accuracy, metric=result.metric,
                       metric_value=float(result.value), archive_bytes=archive_bytes,
                       peak_activation_bytes=prof.peak_activation_bytes, load_average=os.getloadavg(),
                       device=device if cost is not None else None,
                       estimated_latency_ms=cost.latency_ms if cost is not None else None,
                       estimated_energy_uj=cost.energy_uj if cost is not None else None,
                       extra={"split": split})  # fmt: skip


def _encode(net: nn.Module) -> bytes:
    from deepslim.compress.coding import encode

    return encode(net)
