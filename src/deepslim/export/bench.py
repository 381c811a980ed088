"""Measuring latency in a real runtime: warm-up, enough runs for a stable median, percentiles."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._modes import inference_mode
from deepslim._threads import check_threads, resolve_threads, torch_threads
from deepslim.errors import ConfigError, ExportError, InputShapeError, ModelLoadError

FILE_RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")  # run a file in a worker process (see _worker.py)
RUNTIMES = (*FILE_RUNTIMES, "torch")
_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "openvino-bf16": "OpenVINO (bf16)"}


def check_runtime(runtime: str, *, files_only: bool = False) -> None:
    """A ``ConfigError`` listing the valid runtimes for an unknown one; an ``ExportError`` for a missing extra."""
    valid = FILE_RUNTIMES if files_only else RUNTIMES
    if runtime not in valid:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(valid)}")
    if runtime.startswith("openvino"):
        from deepslim.export.openvino import _require

        _require()


@dataclass(frozen=True)
class BenchResult:
    runtime: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int | None
    peak_memory_bytes: int | None = None  # the runtime process's resident memory growth while loading and running
    warnings: tuple[str, ...] = ()  # why a change may not show up as speed here (see deepslim.export.advice)

    @property
    def throughput_per_s(self) -> float:
        return 1000.0 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "throughput_per_s": self.throughput_per_s}


@dataclass(frozen=True)
class CompareResult:
    """A and B measured interleaved (each in its own process): ``speedup`` = A's median / B's median."""

    a: BenchResult
    b: BenchResult
    rounds: int

    @property
    def speedup(self) -> float:
        return self.a.median_ms / self.b.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "rounds": self.rounds, "speedup": self.speedup}


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


def summarize(runtime: str, times: list[float], threads: int | None, peak: int | None = None) -> BenchResult:
    q = np.percentile(times, [10, 90])
    return BenchResult(runtime, statistics.median(times), float(q[0]), float(q[1]), len(times), threads, peak)


class _Worker:
    """A runtime session (ONNX Runtime or OpenVINO) in a child process (see :mod:`deepslim.export._worker`)."""

    exit_timeout_s = 30.0  # how long close() waits for the child to exit before killing it

    def __init__(self, path: Path, feed: np.ndarray, threads: int | None, spinning: bool, tmp: Path,
                 runtime: str = "onnxruntime"):  # fmt: skip
        import sys

        npy = tmp / f"input-{id(self)}.npy"
        np.save(npy, feed)
        self.proc = subprocess.Popen([sys.executable, "-m", "deepslim.export._worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.name = _NAMES[runtime]
        reply = self._ask({"load": str(path), "input": str(npy), "threads": threads, "spinning": spinning,
                           "runtime": runtime})  # fmt: skip
        self.rss_before = reply["rss_before"]
        self.peak = self.rss_before

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise ExportError(f"the {self.name} benchmark process died")
        reply = json.loads(line)
        if "error" in reply:
            self.close()
            raise InputShapeError(f"{self.name} cannot run the model: {reply['error']}")
        return reply

    def run(self, n: int) -> list[float]:
        reply = self._ask({"run": n})
        self.peak = max(self.peak, reply["peak_rss"])
        return reply["times_ms"]

    def close(self) -> None:
        """End the worker; one that does not exit within ``exit_timeout_s`` (a saturated machine) is killed, so
        the times already measured are never lost to a slow exit."""
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=self.exit_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _input_spec(path: Path) -> tuple[tuple[int, ...], bool]:
    """The first input's dimensions (-1: symbolic) and whether it takes int64 (token ids)."""
    if path.suffix == ".xml":
        from deepslim.export.openvino import _require

        inp = _require().Core().read_model(str(path)).inputs[0]
        dims = tuple(d.get_length() if d.is_static else -1 for d in inp.get_partial_shape())
        return dims, inp.get_element_type().get_type_name() == "i64"
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); export it again "
                             "(deepslim export MODEL -o FILE.onnx)") from exc  # fmt: skip
    if not graph.input or not graph.node:
        raise ModelLoadError(f"{path} holds no ONNX graph (empty or not an ONNX file); export it again "
                             "(deepslim export MODEL -o FILE.onnx)")  # fmt: skip
    inp = graph.input[0]
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
    return dims, inp.type.tensor_type.elem_type == onnx.TensorProto.INT64


def _onnx_feed(path: Path, x: torch.Tensor | None, shape: tuple[int, ...] | None) -> np.ndarray:
    dims, int64 = _input_spec(path)
    if x is not None:
        feed = x.numpy()
    else:
        # a dynamic batch (deepslim's files have one) is measured at batch 1 unless input_shape says otherwise
        want = shape or ((1, *dims[1:]) if dims and dims[0] < 1 else dims)
        if any(d < 1 for d in want):
            raise InputShapeError(f"{path} has a symbolic input shape {dims}; give input_shape")
        dtype = np.int64 if int64 else np.float32
        feed = np.random.default_rng(0).standard_normal(want).astype(dtype)
    if len(dims) != feed.ndim or any(d > 0 and d != f for d, f in zip(dims, feed.shape, strict=False)):
        raise InputShapeError(f"{path} takes input of shape {dims} (-1: any), not {tuple(feed.shape)}")
    return feed


def _as_onnx(model: nn.Module | str | os.PathLike[str], x: torch.Tensor | None, tmp: Path, tag: str,
             calib_data: Any = None, runtime: str = "onnxruntime") -> Path:  # fmt: skip
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if runtime.startswith("openvino") and path.suffix not in (".onnx", ".xml"):
            raise ConfigError(f"{path}: OpenVINO benchmarks an .onnx file or OpenVINO IR (.xml)")
        if not runtime.startswith("openvino") and path.suffix != ".onnx":
            raise ConfigError(f"{path}: a file is benchmarked in ONNX Runtime and must be .onnx")
        if not path.is_file():
            raise ModelLoadError(f"{path} is a directory, not a model file" if path.is_dir() else
                                 f"{path} does not exist")  # fmt: skip
        return path
    if x is None:
        raise ConfigError("benchmarking a module needs example_input or input_shape")
    from deepslim.export.onnx import export_onnx

    path = tmp / f"{tag}.onnx"
    export_onnx(model, path, example_input=x, calib_data=calib_data)
    return path


def benchmark(model: nn.Module | str | os.PathLike[str], *, runtime: str = "onnxruntime",
              example_input: torch.Tensor | None = None, input_shape: tuple[int, ...] | None = None,
              threads: int | None = None, min_seconds: float = 1.0, calib_data: Any = None) -> BenchResult:  # fmt: skip
    """Median batch latency of ``model`` (a module or an .onnx file) in ``runtime``: "onnxruntime", "openvino"
    (OpenVINO's CPU plugin, fp32 kept fp32; also takes an .xml IR file), "openvino-bf16" or "torch".

    A file runtime runs in a process of its own (its peak memory is measured there); at least 20 runs and
    ``min_seconds`` after 5 warm-up runs. A quantized module is exported as an integer graph (``calib_data``, if
    given, widens the export's parity check; the quantization points were calibrated by ``quantize_``).
    """
    check_runtime(runtime)
    threads = resolve_threads(threads)
    if not 0 < min_seconds < float("inf"):
        raise ConfigError(f"min_seconds must be a positive number of seconds, got {min_seconds!r}")
    if example_input is None and input_shape is not None and not isinstance(model, (str, os.PathLike)):
        example_input = torch.randn(*input_shape)
    if runtime == "torch":
        if isinstance(model, (str, os.PathLike)):
            raise ConfigError("runtime 'torch' benchmarks a module, not a file")
        if example_input is None:
            raise ConfigError("benchmark needs example_input or input_shape")
        result = _bench_torch(model, example_input, threads, min_seconds)
        return replace(result, warnings=tuple(_advice(model, example_input, None)))
    with tempfile.TemporaryDirectory() as work:
        path = _as_onnx(model, example_input, Path(work), "model", calib_data, runtime)
        feed = _onnx_feed(path, example_input, input_shape)
        worker = _Worker(path, feed, threads, True, Path(work), runtime)
        try:
            worker.run(5)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 20 or (time.perf_counter() - start < min_seconds and len(times) < 500):
                times += worker.run(5)
        finally:
            worker.close()
        result = summarize(runtime, times, threads, worker.peak - worker.rss_before)
    return replace(result, warnings=tuple(_advice(model, example_input, input_shape)))


def _advice(model: Any, x: torch.Tensor | None, shape: tuple[int, ...] | None) -> list[str]:
    """Speed warnings for what was measured (none when it cannot be profiled)."""
    from deepslim.analysis import profile
    from deepslim.errors import DeepSlimError
    from deepslim.export.advice import speed_warnings

    try:
        if isinstance(model, (str, os.PathLike)):
            prof = profile(model, input_shape=shape or (tuple(x.shape) if x is not None else None))
        else:
            prof = profile(model, x if x is not None else torch.randn(*shape))  # type: ignore[misc]
        return speed_warnings(prof, "host")
    except (DeepSlimError, TypeError):
        return []


def compare(a: nn.Module | str | os.PathLike[str], b: nn.Module | str | os.PathLike[str], *,
            example_input: torch.Tensor | None = None, input_shape: tuple[int, ...] | None = None,
            threads: int | None = None, rounds: int = 20, block: int = 5, calib_data: Any = None,
            runtime: str = "onnxruntime", runtime_b: str | None = None) -> CompareResult:  # fmt: skip
    """Latency of A in ``runtime`` and B in ``runtime_b`` (default: the same), interleaved so that machine drift
    hits both alike; ``compare("m.onnx", "m.onnx", runtime_b="openvino")`` sets one file's runtimes side by side.

    Each runs in its own process with intra-op spinning off, so the idle one cannot slow the other down; blocks of
    ``block`` runs alternate A B B A … for ``rounds`` rounds.
    """
    runtime_b = runtime_b or runtime
    check_threads(threads)
    for rt in (runtime, runtime_b):
        check_runtime(rt, files_only=True)
    files_only = all(isinstance(m, (str, os.PathLike)) for m in (a, b))
    if example_input is None and input_shape is not None and not files_only:  # a module is exported with a float
        example_input = torch.randn(*input_shape)  # example; two files are fed input_shape in their dtype (token ids)
    with tempfile.TemporaryDirectory() as work:
        pa = _as_onnx(a, example_input, Path(work), "a", calib_data, runtime)
        pb = _as_onnx(b, example_input, Path(work), "b", calib_data, runtime_b)
        res = interleave({"a": (pa, runtime), "b": (pb, runtime_b)}, example_input=example_input,
                         input_shape=input_shape, threads=threads, rounds=rounds, block=block)  # fmt: skip
    return CompareResult(replace(res["a"], warnings=tuple(_advice(a, example_input, input_shape))),
                         replace(res["b"], warnings=tuple(_advice(b, example_input, input_shape))), rounds)  # fmt: skip


def interleave(files: dict[str, str | os.PathLike[str] | tuple[str | os.PathLike[str], str]], *,
               example_input: torch.Tensor | None = None, input_shape: tuple[int, ...] | None = None,
               threads: int | None = None, rounds: int = 20, block: int = 5,
               runtime: str = "onnxruntime") -> dict[str, BenchResult]:  # fmt: skip
    """Several files measured round-robin, each in its own process with spinning off (see :func:`compare`);
    the order reverses every round so that no file always follows the same neighbour.

    A value is a path (run in ``runtime``) or a ``(path, runtime)`` pair, so one file can be measured in several
    runtimes side by side: ``{"ort": "m.onnx", "ov": ("m.onnx", "openvino")}``.
    """
    if rounds < 1 or block < 1:
        raise ConfigError("interleaved measurement needs rounds >= 1 and block >= 1")
    threads = resolve_threads(threads)
    plan = {label: v if isinstance(v, tuple) else (v, runtime) for label, v in files.items()}
    for _, rt in plan.values():
        check_runtime(rt, files_only=True)
    with tempfile.TemporaryDirectory() as work:
        workers: dict[str, _Worker] = {}
        try:
            for label, (src, rt) in plan.items():
                path = _as_onnx(src, None, Path(work), label, runtime=rt)
                workers[label] = _Worker(path, _onnx_feed(path, example_input, input_shape), threads, False,
                                         Path(work), rt)  # fmt: skip
                workers[label].run(block)
            times: dict[str, list[float]] = {label: [] for label in files}
            order = list(workers)
            for r in range(rounds):
                for label in order if r % 2 == 0 else reversed(order):
                    times[label] += workers[label].run(block)
        finally:
            for w in workers.values():
                w.close()
    return {label: summarize(plan[label][1], times[label], threads, w.peak - w.rss_before)
            for label, w in workers.items()}  # fmt: skip


def _bench_torch(model: nn.Module, x: torch.Tensor, threads: int | None, min_seconds: float) -> BenchResult:
    with torch_threads(threads) as used, inference_mode(model), torch.inference_mode():
        times = time_calls(lambda: model(x), min_seconds=min_seconds)
    return summarize("torch", times, used)
