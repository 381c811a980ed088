"""Host calibration's arithmetic under a scripted clock and scripted system files: what each micro-benchmark divides
by what, which run counts, the cache size parsing, and how the measurements become a device profile."""

import inspect
import logging
import os

import numpy as np
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


def test_default_repeats_are_the_ones_the_profile_cites(monkeypatch):
    # "best of 5 batches of 50" for the overhead: exactly 5 batches of clock readings, per call over 50
    starts_ends = [x for t0 in (0.0, 1.0, 2.0, 3.0, 4.0) for x in (t0, t0 + 50 * (1e-6 + t0 * 1e-6))]
    monkeypatch.setattr(calibrate.time, "perf_counter", _Clock(starts_ends))
    assert calibrate.measure_op_overhead() == pytest.approx(1e-6)
    calls = []
    monkeypatch.setattr(calibrate.time, "perf_counter", _Clock([0.0, 1.0]))
    assert calibrate._best_seconds(lambda: calls.append(1), repeats=1) == 1.0 and len(calls) == 3  # 2 warm-ups


def test_the_gemm_runs_in_the_asked_dtype_best_of_10(monkeypatch):
    seen = []

    def fake_best(fn, repeats, warmup=2):
        seen.append((fn(), repeats))
        return 0.25

    monkeypatch.setattr(calibrate, "_best_seconds", fake_best)
    assert calibrate.measure_gemm_rate(torch.float64, n=8) == 8**3 / 0.25
    out, repeats = seen[0]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (8, 8) and repeats == 10
    assert calibrate.measure_gemm_rate(torch.float32) == 512**3 / 0.25 and seen[1][0].shape == (512, 512)


def test_each_measurement_runs_the_size_and_repeats_its_provenance_cites(monkeypatch):
    # what the sources strings promise, checked on the calls themselves (the defaults a reader cannot see)
    seen = []

    def fake_best(fn, repeats, warmup=2):
        seen.append((repeats, warmup))
        return 0.25

    monkeypatch.setattr(calibrate, "_best_seconds", fake_best)
    assert calibrate.measure_bandwidth() == 2 * 128 * 1024 * 1024 / 0.25 and seen[-1] == (3, 1)
    assert calibrate.measure_depthwise_rate(torch.float32) == 96 * 56 * 56 * 9 / 0.25 and seen[-1] == (20, 3)
    assert calibrate.measure_cache_bandwidth(1 << 20) == 2 * 4 * 65536 / 0.25 and seen[-1] == (20, 3)


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
    paths = {"/sys/devices/system/cpu/cpu0/cache": _Sorted(cache), "/proc/cpuinfo": tmp_path / "cpuinfo"}
    monkeypatch.setattr(calibrate, "Path", lambda p: paths[p])  # any other path: KeyError


class _Sorted:
    """A directory whose glob lists its entries in name order (the real one's order is the file system's)."""

    def __init__(self, path):
        self.path = path

    def glob(self, pattern):
        return sorted(self.path.glob(pattern))


def test_last_level_cache_is_the_largest_size_reported(monkeypatch, tmp_path):
    _fake_system(monkeypatch, tmp_path, ["32K", "1M", "bogus", "512", "48K"], None)
    assert calibrate.last_level_cache_bytes() == 1 << 20


@pytest.mark.parametrize(("sizes", "largest"), [
    (["bogus", "32K", "1024K", "48K"], 1 << 20),  # an unreadable entry first is skipped, not the end of the list
    (["2048", "1K"], 2048),  # no suffix: bytes
    (["512K", "3M"], 3 << 20),
])  # fmt: skip
def test_cache_sizes_in_each_unit(monkeypatch, tmp_path, sizes, largest):
    _fake_system(monkeypatch, tmp_path, sizes, None)
    assert calibrate.last_level_cache_bytes() == largest


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


def test_the_defaults_are_the_sizes_the_profile_cites():
    # sources say "512x512x512 ... best of 10", "128 MB ... best of 3", "96x56x56 ... best of 20", "best of 20" for
    # the on-chip copy and "best of 5 batches of 50": a changed default would make the provenance lie
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    assert defaults(calibrate.measure_gemm_rate) == {"n": 512, "repeats": 10}
    assert defaults(calibrate.measure_bandwidth) == {"nbytes": 128 * 1024 * 1024, "repeats": 3}
    assert defaults(calibrate.measure_depthwise_rate) == {"channels": 96, "size": 56, "repeats": 20}
    assert defaults(calibrate.measure_cache_bandwidth) == {"repeats": 20}
    assert defaults(calibrate.measure_op_overhead) == {"repeats": 50, "batches": 5}
    assert defaults(calibrate._best_seconds) == {"warmup": 2}


def test_the_timed_calls_compute_what_they_claim(monkeypatch):
    # the micro-benchmarks are timed on real work: the u8 x s8 -> s32 GEMM and a same-size depthwise convolution
    outs = []
    monkeypatch.setattr(calibrate, "_best_seconds", lambda fn, repeats, warmup=2: (outs.append(fn()), 0.5)[1])
    calibrate.measure_gemm_rate(torch.int8, n=16)
    (c,) = outs[-1]
    assert c.dtype == np.int32 and c.shape == (16, 16) and np.abs(c).max() <= 16 * 255 * 128 and c.any()
    calibrate.measure_depthwise_rate(torch.float32, channels=4, size=5)
    (y,) = outs[-1]
    assert y.dtype == np.float32 and y.shape == (1, 4, 5, 5)  # 3x3 with padding 1 keeps the size
    calibrate.measure_depthwise_rate(torch.int8, channels=4, size=5)
    (y,) = outs[-1]
    assert y.dtype == np.uint8 and y.shape == (1, 4, 5, 5)
    calibrate.measure_bandwidth(nbytes=4096)  # the copy's destination: 1,024 floats of ones
    assert torch.equal(outs[-1], torch.ones(1024))
    calibrate.measure_cache_bandwidth(1 << 20)
    assert torch.equal(outs[-1], torch.ones(65536))
