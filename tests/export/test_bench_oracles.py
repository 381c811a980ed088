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


class _FakeWorker:
    """Stands in for the runtime process: records every call, and returns call-numbered 'times' per file so that
    which runs were kept (and in which order they ran) can be read back from the results."""

    log: list = []
    scale = {"a.onnx": 1.0, "b.onnx": 10.0, "c.onnx": 100.0, "big.onnx": 4.0, "small.onnx": 1.0, "model.onnx": 2.0}

    def __init__(self, path, feed, threads, spinning, tmp, runtime="onnxruntime"):
        self.path, self.runtime, self.calls = path, runtime, 0
        self.rss_before, self.peak = 1000, 1000
        _FakeWorker.log.append(("open", path.name, tuple(feed.shape), str(feed.dtype), threads, spinning, runtime))

    def run(self, n):
        _FakeWorker.log.append(("run", self.path.name, n))
        self.calls += 1
        self.peak = 1000 + 100 * self.calls
        return [self.scale[self.path.name] * self.calls] * n

    def close(self):
        _FakeWorker.log.append(("close", self.path.name))


@pytest.fixture
def fake_worker(monkeypatch):
    import deepslim.export.bench as bench

    _FakeWorker.log = []
    monkeypatch.setattr(bench, "_Worker", _FakeWorker)
    monkeypatch.setattr(bench, "_advice", lambda *a: ["advice"])
    return _FakeWorker.log


def _tiny_onnx(path, width):
    """A one-node ONNX file (Relu over a (1, width) float input) written directly: no export needed."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])  # fmt: skip
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


@pytest.fixture(scope="module")
def three_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    return [_tiny_onnx(tmp / f"{n}.onnx", 3) for n in "abc"]


@pytest.fixture(scope="module")
def big_and_small_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bs")
    return _tiny_onnx(tmp / "big.onnx", 256), _tiny_onnx(tmp / "small.onnx", 256)


def test_interleave_alternates_the_order_each_round_and_drops_the_warm_up_block(fake_worker, three_files):
    a, b, c = three_files
    res = interleave({"a": a, "b": (b, "onnxruntime"), "c": c}, threads=2, rounds=3, block=2,
                     input_shape=(1, 3))  # fmt: skip
    opened = [e for e in fake_worker if e[0] == "open"]
    assert opened == [("open", f"{n}.onnx", (1, 3), "float32", 2, False, "onnxruntime") for n in "abc"]
    runs = [e[1][0] for e in fake_worker if e[0] == "run"]
    assert runs == list("abc" + "abc" + "cba" + "abc")  # one warm-up block each, then a b c / c b a / a b c
    assert all(e[2] == 2 for e in fake_worker if e[0] == "run")
    assert [e for e in fake_worker if e[0] == "close"] == [("close", f"{n}.onnx") for n in "abc"]
    # calls 2..4 kept (call 1 was the warm-up): median 3 x the file's scale, p10/p90 of [2,2,3,3,4,4]
    for label, scale in (("a", 1.0), ("b", 10.0), ("c", 100.0)):
        r = res[label]
        assert (r.runtime, r.runs, r.threads, r.peak_memory_bytes) == ("onnxruntime", 6, 2, 400)
        assert r.median_ms == 3 * scale and r.p10_ms == pytest.approx(2 * scale)
        assert r.p90_ms == pytest.approx(4 * scale)


def test_compare_puts_a_and_b_on_their_own_sides_in_their_own_runtimes(fake_worker, big_and_small_files):
    big, small = big_and_small_files
    res = ds.compare(big, small, threads=1, rounds=2, block=4, runtime_b="onnxruntime")
    runs = [e[1] for e in fake_worker if e[0] == "run"]
    assert runs == ["big.onnx", "small.onnx", "big.onnx", "small.onnx", "small.onnx", "big.onnx"]  # warm-ups; AB, BA
    opened = [e for e in fake_worker if e[0] == "open"]
    assert [o[4:] for o in opened] == [(1, False, "onnxruntime")] * 2 and opened[0][2] == (1, 256)
    # calls 2 and 3 kept: [2]*4 + [3]*4 times 4 ms (big) and 1 ms (small)
    assert res.rounds == 2 and res.a.runs == res.b.runs == 8
    assert (res.a.median_ms, res.b.median_ms, res.speedup) == (10.0, 2.5, 4.0)
    assert res.a.warnings == res.b.warnings == ("advice",)


def test_benchmark_of_a_file_warms_up_then_runs_blocks_of_five_until_twenty(fake_worker, big_and_small_files):
    big, _ = big_and_small_files
    res = ds.benchmark(big, threads=1, min_seconds=1e-9)
    runs = [e for e in fake_worker if e[0] == "run"]
    assert [e[2] for e in runs] == [5] * 5  # warm-up, then 4 blocks make the 20 runs
    assert [e[5:] for e in fake_worker if e[0] == "open"] == [(True, "onnxruntime")]  # spinning on: alone
    # calls 2..5 kept: [2]*5 + [3]*5 + [4]*5 + [5]*5 times 4 ms (big.onnx)
    assert (res.runs, res.median_ms, res.threads, res.peak_memory_bytes) == (20, 14.0, 1, 500)
    assert res.p10_ms == pytest.approx(8.0) and res.p90_ms == pytest.approx(20.0)
    assert res.warnings == ("advice",)


@pytest.mark.parametrize(("dt", "runs"), [(1 / 64, 64), (1 / 1024, 500), (1.0, 20)])
def test_time_calls_defaults_under_a_scripted_clock(monkeypatch, dt, runs):
    # each call takes dt seconds of a fake clock: 5 warm-up calls, then at least 20 runs and 1 s, at most 500 runs
    import deepslim.export.bench as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    calls = []

    def fn():
        calls.append(1)
        now[0] += dt

    times = time_calls(fn)
    assert len(times) == runs and len(calls) == runs + 5
    assert all(t == pytest.approx(dt * 1e3) for t in times)


def test_benchmark_argument_errors_name_the_fix(tmp_path, big_and_small_files):
    big, _ = big_and_small_files
    layer = nn.Linear(3, 2)
    for seconds in (0.0, float("inf")):
        with pytest.raises(ds.ConfigError, match=rf"^min_seconds must be a positive number of seconds, got {seconds}$"):
            ds.benchmark(layer, runtime="torch", input_shape=(1, 3), min_seconds=seconds)
    with pytest.raises(ds.ConfigError, match=r"^runtime 'torch' benchmarks a module, not a file$"):
        ds.benchmark(big, runtime="torch")
    with pytest.raises(ds.ConfigError, match=r"^benchmark needs example_input or input_shape$"):
        ds.benchmark(layer, runtime="torch")


def test_benchmark_in_torch_times_the_module_on_its_input(monkeypatch):
    import deepslim.export.bench as bench

    seen = []
    monkeypatch.setattr(bench, "_advice", lambda model, x, shape: [f"{type(model).__name__} {tuple(x.shape)} {shape}"])
    real = bench.time_calls
    monkeypatch.setattr(bench, "time_calls", lambda fn, min_seconds: seen.append(min_seconds) or real(
        fn, warmup=1, min_runs=3, max_runs=3, min_seconds=0.0))  # fmt: skip
    layer = nn.Linear(3, 2)
    calls = []
    layer.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    res = ds.benchmark(layer, runtime="torch", input_shape=(4, 3), threads=1, min_seconds=0.25)
    assert seen == [0.25] and calls == [(4, 3)] * 4  # one warm-up, three timed runs, on a (4, 3) input
    assert (res.runtime, res.runs, res.threads) == ("torch", 3, 1) and res.median_ms > 0
    assert res.warnings == ("Linear (4, 3) None",)
    x = torch.randn(2, 3)
    res = ds.benchmark(layer, runtime="torch", example_input=x, input_shape=(9, 3), threads=1)
    assert calls[-1] == (2, 3) and res.warnings == ("Linear (2, 3) None",)  # the example wins over input_shape
    assert seen == [0.25, 1.0]  # min_seconds defaults to 1 s


def test_benchmark_of_a_module_exports_it_and_feeds_its_input_to_the_runtime(fake_worker, monkeypatch):
    import deepslim.export.bench as bench

    exported = []
    real = bench._as_onnx
    monkeypatch.setattr(bench, "_as_onnx", lambda model, x, tmp, tag, calib, rt: exported.append(
        (type(model).__name__, None if x is None else tuple(x.shape), tag, calib, rt)) or real(model, x, tmp, tag,
                                                                                           calib, rt))  # fmt: skip
    calib = [torch.randn(2, 3)]
    res = ds.benchmark(nn.Linear(3, 2), input_shape=(2, 3), threads=1, calib_data=calib, min_seconds=1e-9)
    assert exported == [("Linear", (2, 3), "model", calib, "onnxruntime")] and exported[0][3] is calib
    assert [e[1:4] for e in fake_worker if e[0] == "open"] == [("model.onnx", (2, 3), "float32")]
    assert res.runs == 20 and res.warnings == ("advice",)


def test_compare_defaults_and_what_the_advice_is_given(fake_worker, big_and_small_files, monkeypatch):
    import deepslim.export.bench as bench

    big, small = big_and_small_files
    advised = []
    monkeypatch.setattr(bench, "_advice", lambda model, x, shape: advised.append((model, x, shape)) or [])
    res = ds.compare(big, small, input_shape=(1, 256))  # 20 rounds of blocks of 5, B in A's runtime
    assert res.rounds == 20 and res.a.runs == res.b.runs == 100 and res.b.runtime == "onnxruntime"
    assert [a[0] for a in advised] == [big, small] and all(a[2] == (1, 256) for a in advised)
    assert all(a[1] is None for a in advised)  # two files: each fed input_shape in its own dtype, as benchmark does
    advised.clear()
    ds.benchmark(big, threads=1, input_shape=(1, 256), min_seconds=1e-9)
    assert advised == [(big, None, (1, 256))]
    for bad, message in (({"runtime": "torch"}, r"^unknown runtime 'torch'; choose one of onnxruntime, openvino"),
                         ({"runtime_b": "torch"}, r"^unknown runtime 'torch'"),
                         ({"threads": 0}, r"^threads must be a whole number")):  # fmt: skip
        with pytest.raises(ds.ConfigError, match=message):
            ds.compare(big, small, **bad)


@pytest.mark.parametrize(("seconds", "runs"), [(1.0, 40), (1e9, 500)])
def test_benchmark_runs_until_min_seconds_or_500_runs_under_a_scripted_clock(fake_worker, big_and_small_files,
                                                                             monkeypatch, seconds, runs):  # fmt: skip
    import deepslim.export.bench as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    real_run = _FakeWorker.run

    def run(self, n):
        now[0] += 0.125  # a block of 5 takes 1/8 s
        return real_run(self, n)

    monkeypatch.setattr(_FakeWorker, "run", run)
    res = ds.benchmark(big_and_small_files[0], threads=1, min_seconds=seconds)
    assert res.runs == runs and res.runtime == "onnxruntime"  # 8 blocks fill 1 s; 100 blocks reach the cap


def test_compare_of_two_modules_exports_each_on_its_side_with_the_shaped_input(fake_worker, monkeypatch):
    import deepslim.export.bench as bench

    exported, advised = [], []
    real = bench._as_onnx
    def as_onnx(model, x, tmp, tag, calib=None, runtime="onnxruntime"):
        exported.append((model, None if x is None else tuple(x.shape), tag, calib, runtime))
        return real(model, x, tmp, tag, calib, runtime)

    monkeypatch.setattr(bench, "_as_onnx", as_onnx)
    monkeypatch.setattr(bench, "_advice", lambda model, x, shape: advised.append((model, tuple(x.shape), shape)) or [])
    a, b, calib = nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), [torch.randn(2, 3)]
    _FakeWorker.scale.update({"a.onnx": 3.0, "b.onnx": 1.0})
    res = ds.compare(a, b, input_shape=(2, 3), threads=1, rounds=1, block=2, calib_data=calib)
    assert exported[:2] == [(a, (2, 3), "a", calib, "onnxruntime"), (b, (2, 3), "b", calib, "onnxruntime")]
    assert [e[1:3] for e in fake_worker if e[0] == "open"] == [("a.onnx", (2, 3)), ("b.onnx", (2, 3))]
    assert advised == [(a, (2, 3), (2, 3)), (b, (2, 3), (2, 3))] and res.speedup == 3.0


def test_a_worker_that_does_not_exit_is_killed_and_close_returns(monkeypatch):
    import subprocess
    import sys

    from deepslim.export.bench import _Worker

    worker = _Worker.__new__(_Worker)  # a child that ignores its closed stdin, as a stuck runtime would
    worker.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE)
    monkeypatch.setattr(_Worker, "exit_timeout_s", 0.2)
    worker.close()  # no TimeoutExpired: the measured times of the caller survive
    assert worker.proc.returncode is not None and worker.proc.returncode < 0  # killed by a signal
