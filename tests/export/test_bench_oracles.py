"""Benchmark statistics against golden values, and ``compare`` on two different models (a comparison of a model with
itself cannot tell A from B): the large one must come out slower, on the side it was given."""

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.export.bench import BenchResult, CompareResult, interleave, summarize, time_calls


def test_summarize_golden_values():
    res = summarize("onnxruntime", [float(t) for t in range(10, 0, -1)], 2, peak=1234)
    assert (res.median_ms, res.p10_ms, res.p90_ms) == (5.5, pytest.approx(1.9), pytest.approx(9.1))
    assert (res.runtime, res.runs, res.threads, res.peak_memory_bytes) == ("onnxruntime", 10, 2, 1234)
    assert res.throughput_per_s == pytest.approx(1000 / 5.5)
    assert res.to_dict()["throughput_per_s"] == res.throughput_per_s
    assert res.to_dict()["median_ms"] == 5.5 and res.to_dict()["warnings"] == ()


def test_speedup_is_a_over_b():
    a, b = BenchResult("ort", 8.0, 7.0, 9.0, 10, 1), BenchResult("ort", 2.0, 1.5, 2.5, 10, 1)
    res = CompareResult(a, b, rounds=3)
    assert res.speedup == 4.0 and CompareResult(b, a, 3).speedup == 0.25
    assert res.to_dict() == {"a": a.to_dict(), "b": b.to_dict(), "rounds": 3, "speedup": 4.0}


def test_time_calls_honours_warmup_and_run_bounds():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, min_runs=7, max_runs=50, min_seconds=0.0)
    assert len(times) == 7 and len(calls) == 10 and all(t >= 0 for t in times)
    calls.clear()
    times = time_calls(lambda: calls.append(1), warmup=0, min_runs=1, max_runs=12, min_seconds=60.0)
    assert len(times) == 12 and len(calls) == 12  # max_runs stops it long before a minute


def test_interleave_refuses_empty_schedules():
    for rounds, block in ((0, 5), (3, 0)):
        with pytest.raises(ds.ConfigError, match="rounds >= 1 and block >= 1"):
            interleave({"a": "a.onnx"}, rounds=rounds, block=block)


@pytest.fixture(scope="module")
def big_and_small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    torch.manual_seed(0)
    x = torch.randn(1, 256)
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(12)]).eval()  # 786k MACs
    small = nn.Sequential(nn.Linear(256, 8)).eval()  # 2k MACs
    return (ds.export_onnx(big, tmp / "big.onnx", example_input=x).path,
            ds.export_onnx(small, tmp / "small.onnx", example_input=x).path, x)  # fmt: skip


def test_compare_tells_a_from_b_on_two_different_models(big_and_small):
    big, small, x = big_and_small
    res = ds.compare(big, small, threads=1, rounds=2, block=3)
    assert res.a.runs == res.b.runs == 6 and res.rounds == 2  # rounds x block each (the warm-up block not kept)
    assert res.a.median_ms > res.b.median_ms and res.speedup == res.a.median_ms / res.b.median_ms
    assert res.speedup > 2  # 400x the MACs; measured ~10x even on a loaded machine
    assert res.a.threads == res.b.threads == 1 and res.a.runtime == "onnxruntime"
