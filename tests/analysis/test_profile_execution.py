"""The profiler runs on fake tensors: a real run's numbers without its memory; real runs only within what is free."""

import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import deepslim as ds

profiler = importlib.import_module("deepslim.analysis.profile")  # the module (deepslim.analysis.profile is the verb)


@pytest.mark.parametrize("name,size", [("resnet18", 224), ("mobilenet_v2", 64),
                                       ("vit_tiny", None), ("bert_mini", None)])  # fmt: skip
def test_fake_and_real_runs_give_identical_profiles(name, size):
    torch.manual_seed(0)
    model = ds.create_model(name)
    x = ds.example_input(name) if size is None else torch.randn(1, 3, size, size)
    fake = profiler._trace(model, x, strict=True, name=name)
    real = profiler._trace(model, x, strict=True, name=name, fake=False)
    assert fake.macs > 0 and fake.peak_activation_bytes > 0
    assert fake == real  # every total and every layer: MACs, params, bytes, shapes, peak activations


_BIG_INPUT = textwrap.dedent("""
    import json, sys, torch, deepslim as ds

    def status(key):  # bytes
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

    def peak_of(work):  # the process's peak resident memory while work() runs, above where it started
        open("/proc/self/clear_refs", "w").write("5")  # resets the high-water mark (VmHWM) to the current RSS
        start = status("VmRSS:")
        result = work()
        return result, status("VmHWM:") - start

    torch.set_num_threads(1)
    model = ds.create_model("resnet18").eval()
    ds.profile(model, input_shape=(1, 3, 32, 32))  # imports and one-time set-up out of the measurement
    big, big_rss = peak_of(lambda: ds.profile(model, input_shape=(1, 3, 2048, 2048)))
    x = torch.randn(1, 3, 512, 512)
    real = ds.profile(model, x)
    with torch.no_grad():
        _, forward_rss = peak_of(lambda: model(x))
    json.dump({"big_peak": big.peak_activation_bytes, "big_macs": big.macs, "profile_rss": big_rss,
               "real_peak": real.peak_activation_bytes - x.numel() * 4, "forward_rss": forward_rss}, sys.stdout)
""")


def test_profiling_a_huge_input_costs_the_process_almost_no_memory():
    run = subprocess.run([sys.executable, "-c", _BIG_INPUT], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["big_peak"] == 2 * 64 * 1024 * 1024 * 4  # conv1's and bn1's outputs (the input is dead by then)
    assert got["big_macs"] == pytest.approx(1_814_073_344 * (2048 / 224) ** 2, rel=0.01)
    assert got["profile_rss"] < got["big_peak"] / 20  # a real run held ~7 GB here; fake tensors hold nothing
    # the reported peak is what an eager forward really needs beyond its input; resident memory adds the
    # allocator's retained pages and oneDNN's convolution scratch (1.1x to 2.1x of it seen across runs here)
    assert 0.8 * got["real_peak"] < got["forward_rss"] < 3 * got["real_peak"]


class _ValueBranch(nn.Module):
    """A forward that reads a value (``if tensor``): fake tensors cannot run it."""

    def __init__(self, late: bool = False):
        super().__init__()
        self.late = late
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if not self.late and x.mean() > -100:
            x = x * 1.0
        y = self.conv1(x)
        if self.late and y.mean() > -100:
            y = y * 1.0
        return self.conv2(y)


def test_a_model_that_reads_values_is_profiled_by_a_real_run():
    prof = ds.profile(_ValueBranch(), torch.randn(2, 3, 16, 16))
    assert prof.macs == 2 * 16 * 16 * 8 * (3 * 9 + 8 * 9)
    masked = ds.profile(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.randn(2, 12))
    assert masked.macs == 0 and masked.other_ops == 24


def test_a_real_run_that_would_not_fit_is_refused_before_it_starts(monkeypatch):
    monkeypatch.setattr(profiler, "available_memory_bytes", lambda: 2 * 2**20)
    # the fake run got past conv1 before the value was needed: the real run needs at least the input (0.75 MiB) and
    # conv1's output (2 MiB); the weights are resident already
    with pytest.raises(ds.InputShapeError, match=r"needs at least 2\.75 MiB while 2\.00 MiB is free.*--input-shape"):
        ds.profile(_ValueBranch(late=True), input_shape=(1, 3, 256, 256))


def test_a_real_run_is_stopped_once_it_holds_more_than_is_free(monkeypatch):
    monkeypatch.setattr(profiler, "available_memory_bytes", lambda: 2 * 2**20)
    # the value is read first, so the estimate is small; the run itself is stopped when it passes the budget
    with pytest.raises(ds.InputShapeError, match=r"was stopped after it held .* MiB of tensors.*--input-shape"):
        ds.profile(_ValueBranch(), input_shape=(1, 3, 256, 256))
    assert ds.profile(_ValueBranch(), input_shape=(1, 3, 16, 16)).macs == 16 * 16 * 8 * 99  # small inputs still run


def test_free_memory_is_read_from_the_system():
    free = profiler.available_memory_bytes()
    lines = open("/proc/meminfo").read().splitlines()  # noqa: SIM115
    total = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemTotal:"))
    assert free is not None and 0 < free <= total


def test_wrong_shapes_fail_with_the_real_error_message():
    with pytest.raises(ds.InputShapeError, match=r"input of shape \(1, 5, 64, 64\) failed: .*channels"):
        ds.profile(ds.create_model("resnet18"), input_shape=(1, 5, 64, 64))
