"""Calibrating the ``host`` device: measure this machine's GEMM rates and memory bandwidth.

A few hundred milliseconds of micro-benchmarks: an fp32 matrix product through PyTorch's kernels and an int8 one
through ONNX Runtime's (``MatMulInteger``, u8 × s8 → s32: the kernels deepslim's integer export runs on; PyTorch's
own ``_int_mm`` is several times slower on CPUs and predicted int8 latency 5× too high), the best of several runs at
PyTorch's thread count; a large tensor copy for memory bandwidth; the last-level cache size from the operating
system. Results are cached for the life of the process.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepslim._memory import total_memory_bytes
from deepslim._threads import torch_threads
from deepslim.analysis.devices import DeviceProfile

log = logging.getLogger(__name__)


def _best_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_gemm_rate(dtype: torch.dtype, n: int = 512, repeats: int = 10) -> float:
    """MAC/s of an n×n×n matrix product in ``dtype`` (int8: ONNX Runtime's MatMulInteger, accumulating in int32)."""
    if dtype == torch.int8:
        fn: Callable[[], object] = _ort_int8_matmul(n)
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        fn = lambda: torch.mm(a, b)  # noqa: E731
    return n**3 / _best_seconds(fn, repeats=repeats)


def _ort_int8_matmul(n: int) -> Callable[[], object]:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-128, 127, (n, n), dtype=np.int8), "b")
    node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "int8_gemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])], [b])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8)}
    return lambda: sess.run(None, feed)


def measure_depthwise_rate(dtype: torch.dtype, channels: int = 96, size: int = 56, repeats: int = 20) -> float:
    """MAC/s of a 3×3 depthwise convolution in ONNX Runtime (fp32 Conv, or int8 QLinearConv u8 × s8)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = [1, channels, size, size]
    attrs: dict[str, Any] = {"group": channels, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if dtype == torch.int8:
        inits = [numpy_helper.from_array(rng.integers(-127, 127, (channels, 1, 3, 3), dtype=np.int8), "w"),
                 *(numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in (
                     ("xs", 0.05, np.float32), ("xz", 128, np.uint8), ("ws", 0.01, np.float32), ("wz", 0, np.int8),
                     ("ys", 0.1, np.float32), ("yz", 128, np.uint8)))]  # fmt: skip
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], **attrs)
        elem, feed = TensorProto.UINT8, rng.integers(0, 255, shape, dtype=np.uint8)
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "w")]
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        elem, feed = TensorProto.FLOAT, rng.standard_normal(shape).astype(np.float32)
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, shape)], inits)  # fmt: skip
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    macs = channels * size * size * 9
    return macs / _best_seconds(lambda: sess.run(None, {"x": feed}), repeats=repeats, warmup=3)


def measure_bandwidth(nbytes: int = 128 * 1024 * 1024, repeats: int = 3) -> float:
    """Bytes/s of a large copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats=repeats, warmup=1)


def measure_cache_bandwidth(cache_bytes: int, repeats: int = 20) -> float:
    """Bytes/s of a copy whose source and destination together fill half the last-level cache."""
    n = max(64 * 1024, min(cache_bytes // 4, 8 * 1024 * 1024)) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * 4 * n / _best_seconds(lambda: dst.copy_(src), repeats=repeats, warmup=3)


def measure_op_overhead(repeats: int = 50, batches: int = 5) -> float:
    """Seconds of fixed cost per operator call, from a tiny elementwise op (the best of several batches, so that a
    busy machine inflates it less)."""
    x = torch.ones(8)
    best = float("inf")
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.relu(x)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache the OS reports (Linux sysfs), or 8 MB if it reports none."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return max(sizes) if sizes else 8 * 1024 * 1024


def cpu_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s model name, else what :mod:`platform` reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def host_device(threads: int | None = None) -> DeviceProfile:
    """This machine as a device profile, from measurements taken now with ``threads`` intra-op threads (default:
    :mod:`deepslim._threads`' policy -- 1 on an oversubscribed machine, else torch's count); torch's thread count
    is restored afterwards."""
    with torch_threads(threads) as threads_used:
        return _measure_host(threads_used)


def _measure_host(threads: int) -> DeviceProfile:
    fp32 = measure_gemm_rate(torch.float32)
    int8 = measure_gemm_rate(torch.int8)
    bandwidth = measure_bandwidth()
    overhead = measure_op_overhead()
    cache = last_level_cache_bytes()
    cache_bw = measure_cache_bandwidth(cache)
    depthwise = {"fp32": min(1.0, measure_depthwise_rate(torch.float32) / fp32),
                 "int8": min(1.0, measure_depthwise_rate(torch.int8) / int8)}  # fmt: skip
    how = f"measured by deepslim.analysis.calibrate with {threads} torch threads"
    log.info("host calibrated: fp32 %.1f GMAC/s, int8 %.1f GMAC/s, %.1f GB/s", fp32 / 1e9, int8 / 1e9, bandwidth / 1e9)
    return DeviceProfile(
        name="host",
        description=f"this machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {threads} torch threads",
        peak_macs_per_s={"fp32": fp32, "int8": int8},
        mem_bandwidth_bytes_per_s=bandwidth,
        onchip_bytes=cache,
        dram_bytes=total_memory_bytes(),
        op_overhead_s=overhead,
        onchip_bandwidth_bytes_per_s=cache_bw,
        depthwise_efficiency=depthwise,
        sources={
            "fp32": f"512x512x512 torch.mm, best of 10, {how}",
            "int8": f"512x512x512 ONNX Runtime MatMulInteger (u8 x s8 -> s32), best of 10, {how}",
            "bandwidth": f"128 MB tensor copy (read + write), best of 3, {how}",
            "onchip": "largest cache in /sys/devices/system/cpu/cpu0/cache",
            "dram": "physical memory (sysconf), capped by the cgroup's memory.max",
            "onchip_bandwidth": f"copy of a buffer filling half the last-level cache, best of 20, {how}",
            "depthwise": f"3x3 depthwise convolution, 96x56x56, in ONNX Runtime (Conv / QLinearConv) over the GEMM "
                         f"peak, best of 20, {how}",
            "op_overhead": f"time of a tiny torch.relu call, best of 5 batches of 50, {how}",
        },
        calibrated=True,
    )

