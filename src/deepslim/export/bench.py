"""Measuring latency in a real runtime: warm-up, enough runs for a stable median, percentiles."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._modes import inference_mode
from deepslim.errors import ConfigError, ExportError, InputShapeError


@dataclass(frozen=True)
class BenchResult:
    runtime: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int | None

    @property
    def throughput_per_s(self) -> float:
        return 1000.0 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "throughput_per_s": self.throughput_per_s}


def time_calls(fn: Callable[[], object], *, warmup: int = 5, min_runs: int = 20, max_runs: int = 500,
               min_seconds: float = 1.0) -> list[float]:  # fmt: skip
    """Milliseconds of each call of ``fn`` after ``warmup`` calls: at least ``min_runs`` and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(runtime: str, times: list[float], threads: int | None) -> BenchResult:
    q = np.percentile(times, [10, 90])
    return BenchResult(runtime, statistics.median(times), float(q[0]), float(q[1]), len(times), threads)


def benchmark(model: nn.Module | str | os.PathLike[str], *, runtime: str = "onnxruntime",
              example_input: torch.Tensor | None = None, input_shape: tuple[int, ...] | None = None,
              threads: int | None = None, min_seconds: float = 1.0) -> BenchResult:  # fmt: skip
    """Median batch latency of ``model`` (a module or an .onnx file) in ``runtime`` ("onnxruntime" or "torch")."""
    if runtime not in ("onnxruntime", "torch"):
        raise ConfigError(f"runtime must be 'onnxruntime' or 'torch', got {runtime!r}")
    if isinstance(model, (str, os.PathLike)):
        if runtime != "onnxruntime" or not str(model).endswith(".onnx"):
            raise ConfigError("a file is benchmarked in onnxruntime and must be .onnx")
        if not Path(model).is_file():
            raise ExportError(f"{model} does not exist")
        return _bench_onnx(Path(model), example_input, input_shape, threads, min_seconds)
    if example_input is None:
        if input_shape is None:
            raise ConfigError("benchmark needs example_input or input_shape")
        example_input = torch.randn(*input_shape)
    if runtime == "torch":
        return _bench_torch(model, example_input, threads, min_seconds)
    from deepslim.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, example_input=example_input)
        return _bench_onnx(path, example_input, None, threads, min_seconds)


def _bench_torch(model: nn.Module, x: torch.Tensor, threads: int | None, min_seconds: float) -> BenchResult:
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with inference_mode(model), torch.inference_mode():
            times = time_calls(lambda: model(x), min_seconds=min_seconds)
    finally:
        torch.set_num_threads(old)
    return summarize("torch", times, threads)


def _bench_onnx(path: Path, x: torch.Tensor | None, shape: tuple[int, ...] | None, threads: int | None,
                min_seconds: float) -> BenchResult:  # fmt: skip
    from deepslim.export.onnx import ort_session

    sess = ort_session(path, threads=threads)
    inp = sess.get_inputs()[0]
    if x is None:
        dims = shape or tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        if any(d < 1 for d in dims):
            raise InputShapeError(f"{path} has a symbolic input shape {inp.shape}; give input_shape")
        dtype = np.int64 if "int64" in inp.type else np.float32
        feed = np.random.default_rng(0).standard_normal(dims).astype(dtype)
    else:
        feed = x.numpy()
    try:
        sess.run(None, {inp.name: feed})
    except Exception as exc:
        raise InputShapeError(f"{path} rejects an input of shape {feed.shape}: {str(exc).splitlines()[0]}") from exc
    times = time_calls(lambda: sess.run(None, {inp.name: feed}), min_seconds=min_seconds)
    return summarize("onnxruntime", times, threads)
