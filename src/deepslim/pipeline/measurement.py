"""``measure``: the one function that fills a :class:`~deepslim.analysis.measurement.Measurement` from a model.

The CLI's before/after tables, every recipe stage (metrics.json) and the benchmarks call it, so a number means the
same thing wherever it is shown. It sits in ``pipeline`` because it calls the layers below: the profiler and cost
model, the archive coder, the latency harness and evaluation.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from deepslim.analysis import estimate_cost, profile
from deepslim.analysis.measurement import Measurement
from deepslim.compress.coding import archive_info, encode
from deepslim.errors import ConfigError, DeepSlimError
from deepslim.export import benchmark
from deepslim.train import evaluate

log = logging.getLogger(__name__)

__all__ = ["Measurement", "measure"]


def measure(model: nn.Module, data: Any = None, *, device: str | None = None,
            example_input: torch.Tensor | None = None, runtime: str | None = None, latency: bool = False,
            threads: int | None = None, min_seconds: float = 1.0, archive: bool = True,
            layers: bool = False) -> Measurement:  # fmt: skip
    """Measure ``model`` on ``data`` (a DataBundle, or None: no task metric).

    ``device``: the cost model's latency and energy estimates there. ``latency``: median latency measured in
    ``runtime`` (default ONNX Runtime; a quantized model runs there as its integer graph) with ``threads``; a model
    the runtime cannot take is still measured, without latency (logged). ``archive``: bytes of its .dsz archive
    (None, with ``extra["archive_note"]``, for a layer tree the zoo cannot rebuild). ``layers``: per-layer rows in
    ``extra["layers"]`` (what the report draws) and ``extra["fp32_bytes"]``.
    """
    start = time.perf_counter()
    x = example_input if example_input is not None else getattr(data, "example_input", None)
    if x is None:
        raise ConfigError("measure needs an example input: give example_input or data")
    prof = profile(model, x, device=device) if device else profile(model, x)
    cost = estimate_cost(prof, device) if device else None
    extra: dict[str, Any] = {}
    measured = _latency(model, x, data, runtime or "onnxruntime", threads, min_seconds) if latency else None
    values: dict[str, Any] = {}
    if data is not None:
        result = evaluate(model, data.test)
        values = {"accuracy": result.accuracy, "metric": result.metric, "metric_value": float(result.value)}
    per_layer_archive: dict[str, int] = {}
    archive_bytes = None
    if archive:
        try:
            blob = encode(model)
        except ConfigError as exc:  # a layer tree the zoo cannot rebuild (factorized): no archive
            extra["archive_note"] = str(exc)
        else:
            info = archive_info(blob)
            archive_bytes = len(blob)
            extra["archive_parts"] = info.by_part
            for t in info.tensors:
                owner = t.name.rpartition(".")[0]
                per_layer_archive[owner] = per_layer_archive.get(owner, 0) + t.total
    if layers:
        extra["fp32_bytes"] = 4 * prof.params
        extra["layers"] = _layer_rows(prof, cost, per_layer_archive)
    return Measurement(
        params=prof.params, nonzero_params=prof.nonzero_params, macs=prof.macs, weight_bytes=prof.weight_bytes,
        archive_bytes=archive_bytes, device=device,
        estimated_latency_ms=cost.latency_ms if cost else None, estimated_energy_uj=cost.energy_uj if cost else None,
        measured_latency_ms=measured.median_ms if measured else None, runtime=measured.runtime if measured else None,
        threads=measured.threads if measured else None, peak_activation_bytes=prof.peak_activation_bytes,
        seconds=time.perf_counter() - start, load_average=os.getloadavg(), extra=extra, **values,
    )  # fmt: skip


def with_latency(m: Measurement, ms: float, *, runtime: str, threads: int | None) -> Measurement:
    """``m`` with a latency measured elsewhere (e.g. of the exported file a recipe's export stage wrote)."""
    return replace(m, measured_latency_ms=ms, runtime=runtime, threads=threads, load_average=os.getloadavg())


def _latency(model: nn.Module, x: torch.Tensor, data: Any, runtime: str, threads: int | None,
             min_seconds: float) -> Any:  # fmt: skip
    try:
        calib = getattr(data, "calib", None)  # a quantized model exports as an integer graph
        return benchmark(model, runtime=runtime, example_input=x, threads=threads, min_seconds=min_seconds,
                         calib_data=calib)  # fmt: skip
    except DeepSlimError as exc:  # a model the runtime cannot take is still measured; its latency is just not shown
        log.warning("latency not measured: %s", exc)
        return None


def _layer_rows(prof: Any, cost: Any, per_layer_archive: dict[str, int]) -> list[dict[str, Any]]:
    costs = {lc.name: lc for lc in cost.layers} if cost else {}
    return [
        {"name": lp.name, "type": lp.type, "params": lp.params, "nonzero_params": lp.nonzero_params,
         "macs": lp.macs, "weight_bytes": lp.weight_bytes, "archive_bytes": per_layer_archive.get(lp.name),
         "bits": 8 * lp.weight_bytes / lp.params if lp.params else None, "dtype": lp.dtype,
         "intensity": lp.arithmetic_intensity,
         "estimated_latency_ms": costs[lp.name].latency_ms if lp.name in costs else None,
         "bound": costs[lp.name].bound if lp.name in costs else None}
        for lp in prof.layers if lp.params or lp.macs
    ]  # fmt: skip
