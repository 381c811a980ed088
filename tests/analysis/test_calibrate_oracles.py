"""Host calibration's arithmetic under a scripted clock and scripted system files: what each micro-benchmark divides
by what, which run counts, the cache size parsing, and how the measurements become a device profile."""

import logging
import os

import pytest
import torch

from deepslim.analysis import calibrate


class _Clock:
    """perf_counter that returns the scripted instants in order."""

    def __init__(self, instants):
        self.instants = list(instants)

    def __call__(self):
        return self.instants.pop(0)


def test_best_seconds_warms_up_then_keeps_the_fastest_run(monkeypatch):
    calls = []
    # three timed runs of 0.5, 0.2 and 0.3 s
    monkeypatch.setattr(calibrate.time, "perf_counter", _Clock([0.0, 0.5, 1.0, 1.2, 2.0, 2.3]))
    assert calibrate._best_seconds(lambda: calls.append(1), repeats=3, warmup=4) == pytest.approx(0.2)
    assert len(calls) == 7


def test_op_overhead_is_the_best_batch_per_call(monkeypatch):
    starts_ends = []
    for t0, per_call in zip((0.0, 10.0, 20.0), (4e-6, 2e-6, 3e-6), strict=True):
        starts_ends += [t0, t0 + 50 * per_call]
    monkeypatch.setattr(calibrate.time, "perf_counter", _Clock(starts_ends))
    assert calibrate.measure_op_overhead(repeats=50, batches=3) == pytest.approx(2e-6)


def test_rates_divide_the_work_by_the_best_time(monkeypatch):
    monkeypatch.setattr(calibrate, "_best_seconds", lambda fn, repeats, warmup=2: (fn(), 0.5)[1])
    assert calibrate.measure_gemm_rate(torch.float32, n=16) == pytest.approx(16**3 / 0.5)
    assert calibrate.measure_gemm_rate(torch.int8, n=16) == pytest.approx(16**3 / 0.5)
    assert calibrate.measure_bandwidth(nbytes=4096) == pytest.approx(2 * 4096 / 0.5)  # read + write
    assert calibrate.measure_depthwise_rate(torch.float32, channels=4, size=5) == pytest.approx(4 * 25 * 9 / 0.5)
    assert calibrate.measure_depthwise_rate(torch.int8, channels=4, size=5) == pytest.approx(4 * 25 * 9 / 0.5)
    # half the cache, at least 64 KB of floats and at most 8 MB: 1 MB -> 65,536 floats; 100 KB -> 16,384
    assert calibrate.measure_cache_bandwidth(1 << 20) == pytest.approx(2 * 4 * 65536 / 0.5)
    assert calibrate.measure_cache_bandwidth(100 * 1024) == pytest.approx(2 * 4 * 16384 / 0.5)
    assert calibrate.measure_cache_bandwidth(1 << 30) == pytest.approx(2 * 4 * (2 << 20) / 0.5)


def _fake_system(monkeypatch, tmp_path, sizes, cpuinfo):
    cache = tmp_path / "cache"
    cache.mkdir()
    for i, size in enumerate(sizes):
        (cache / f"index{i}").mkdir()
        (cache / f"index{i}" / "size").write_text(size + "\n")
    if cpuinfo is not None:
        (tmp_path / "cpuinfo").write_text(cpuinfo)
    paths = {"/sys/devices/system/cpu/cpu0/cache": cache, "/proc/cpuinfo": tmp_path / "cpuinfo"}
    monkeypatch.setattr(calibrate, "Path", lambda p: paths[p])  # any other path: KeyError


def test_last_level_cache_is_the_largest_size_reported(monkeypatch, tmp_path):
    _fake_system(monkeypatch, tmp_path, ["32K", "1M", "bogus", "512", "48K"], None)
    assert calibrate.last_level_cache_bytes() == 1 << 20


def test_no_cache_reported_means_8_mb_and_sizes_in_gigabytes(monkeypatch, tmp_path):
    _fake_system(monkeypatch, tmp_path, [], None)
    assert calibrate.last_level_cache_bytes() == 8 * 1024 * 1024
    monkeypatch.undo()
    (tmp_path / "g").mkdir()
    _fake_system(monkeypatch, tmp_path / "g", ["2G"], None)
    assert calibrate.last_level_cache_bytes() == 2 << 30


def test_cpu_name_comes_from_the_model_name_line(monkeypatch, tmp_path):
    _fake_system(monkeypatch, tmp_path, [], "processor\t: 0\nmodel name\t: Fancy CPU @ 3.0GHz: rev 2\nflags\t: x\n")
    assert calibrate.cpu_name() == "Fancy CPU @ 3.0GHz: rev 2"
    monkeypatch.undo()
    (tmp_path / "h").mkdir()
    _fake_system(monkeypatch, tmp_path / "h", [], None)  # no /proc/cpuinfo: the platform's name
    assert calibrate.cpu_name() and "model name" not in calibrate.cpu_name()


def test_measured_host_becomes_a_device_profile(monkeypatch, caplog):
    rates = {torch.float32: 2e10, torch.int8: 8e10}
    monkeypatch.setattr(calibrate, "measure_gemm_rate", lambda dtype: rates[dtype])
    # depthwise above the fp32 GEMM peak (capped at 1) and well below the int8 one
    dw_rates = {torch.float32: 3e10, torch.int8: 2e10}
    monkeypatch.setattr(calibrate, "measure_depthwise_rate", lambda dtype: dw_rates[dtype])
    monkeypatch.setattr(calibrate, "measure_bandwidth", lambda: 1.5e10)
    monkeypatch.setattr(calibrate, "measure_op_overhead", lambda: 3e-6)
    monkeypatch.setattr(calibrate, "last_level_cache_bytes", lambda: 4 << 20)
    monkeypatch.setattr(calibrate, "measure_cache_bandwidth", lambda cache: cache * 1000.0)
    monkeypatch.setattr(calibrate, "total_memory_bytes", lambda: 123 << 30)
    monkeypatch.setattr(calibrate, "cpu_name", lambda: "Fancy CPU")
    with caplog.at_level(logging.INFO, logger=calibrate.__name__):
        dev = calibrate._measure_host(3)
    assert caplog.messages == ["host calibrated: fp32 20.0 GMAC/s, int8 80.0 GMAC/s, 15.0 GB/s"]
    assert dev.name == "host" and dev.calibrated
    assert dict(dev.peak_macs_per_s) == {"fp32": 2e10, "int8": 8e10}
    assert dev.mem_bandwidth_bytes_per_s == 1.5e10 and dev.op_overhead_s == 3e-6 and dev.onchip_bytes == 4 << 20
    assert dev.onchip_bandwidth_bytes_per_s == (4 << 20) * 1000.0 and dev.dram_bytes == 123 << 30
    assert dict(dev.depthwise_efficiency) == {"fp32": 1.0, "int8": 0.25}  # capped at the GEMM peak
    assert dev.description == f"this machine: Fancy CPU, {os.cpu_count()} logical CPUs, 3 torch threads"
    how = "measured by deepslim.analysis.calibrate with 3 torch threads"
    assert dict(dev.sources) == {  # the provenance a reader of the profile sees, word for word
        "fp32": f"512x512x512 torch.mm, best of 10, {how}",
        "int8": f"512x512x512 ONNX Runtime MatMulInteger (u8 x s8 -> s32), best of 10, {how}",
        "bandwidth": f"128 MB tensor copy (read + write), best of 3, {how}",
        "onchip": "largest cache in /sys/devices/system/cpu/cpu0/cache",
        "dram": "physical memory (sysconf), capped by the cgroup's memory.max",
        "onchip_bandwidth": f"copy of a buffer filling half the last-level cache, best of 20, {how}",
        "depthwise": f"3x3 depthwise convolution, 96x56x56, in ONNX Runtime (Conv / QLinearConv) over the GEMM peak, "
                     f"best of 20, {how}",
        "op_overhead": f"time of a tiny torch.relu call, best of 5 batches of 50, {how}",
    }  # fmt: skip
