"""The thread policy (deepslim._threads): 1 intra-op thread on an oversubscribed machine, torch's default otherwise,
the caller's count when given; applied by training, evaluation, calibration and timing, and always restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepslim import _threads
from deepslim.data import DataBundle
from deepslim.errors import ConfigError
from deepslim.export.bench import benchmark
from deepslim.train import evaluate, fit


@pytest.fixture
def machine(monkeypatch):
    """A machine whose load average the test chooses (4 cores), with no OMP_NUM_THREADS set by the user."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    state = {"load": 0.5}
    monkeypatch.setattr(_threads, "load_average", lambda: state["load"])
    monkeypatch.setattr(_threads, "cores", lambda: 4)
    before = torch.get_num_threads()
    yield state
    torch.set_num_threads(before)


@pytest.mark.parametrize("load,ncores,expected", [
    (4.01, 4, 1),  # oversubscribed: one thread per process
    (9.0, 2, 1),
    (4.0, 4, None),  # exactly busy, not over: torch's default
    (0.1, 2, None),
    (None, 2, None),  # no load average on this system
])  # fmt: skip
def test_one_thread_only_when_the_load_exceeds_the_cores(machine, load, ncores, expected, monkeypatch):
    monkeypatch.setattr(_threads, "load_average", lambda: load)
    assert _threads.default_threads(ncores=ncores) == expected


def test_the_users_omp_num_threads_wins_over_the_policy(machine, monkeypatch):
    machine["load"] = 100.0
    assert _threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _threads.default_threads() is None


@pytest.mark.parametrize("bad", [0, -1, 1025, 2.0, True, "2"])
def test_a_thread_count_is_a_whole_number_from_1_to_the_limit(bad):
    with pytest.raises(ConfigError, match="threads must be a whole number from 1 to 1024"):
        _threads.check_threads(bad)


def test_the_setting_is_applied_in_the_block_and_restored_after_even_on_error(machine):
    torch.set_num_threads(3)
    with _threads.torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3
    machine["load"] = 50.0  # oversubscribed, no count given: 1
    with pytest.raises(RuntimeError), _threads.torch_threads(None) as n:
        assert n == 1 and torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == 3
    machine["load"] = 0.5  # idle machine: torch's count stays
    with _threads.torch_threads(None) as n:
        assert n == 3 and torch.get_num_threads() == 3


def test_an_inner_block_without_a_count_keeps_the_count_chosen_outside(machine):
    machine["load"] = 50.0
    torch.set_num_threads(3)
    with _threads.torch_threads(2), _threads.torch_threads(None) as inner:
        assert inner == 2 and torch.get_num_threads() == 2  # not the policy's 1
    assert torch.get_num_threads() == 3


def _bundle() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return DataBundle(name="tiny", train=loader, val=loader, test=loader, calib=loader, example_input=x[:1],
                      num_classes=2)  # fmt: skip


class _Seen:
    def __init__(self) -> None:
        self.threads: set[int] = set()

    def after_step(self, model: nn.Module) -> None:
        self.threads.add(torch.get_num_threads())


def test_fit_trains_with_the_threads_it_is_given_and_restores_torchs_count(machine):
    torch.set_num_threads(3)
    seen = _Seen()
    fit(nn.Linear(4, 2), _bundle(), epochs=1, hooks=[seen], threads=2)
    assert seen.threads == {2} and torch.get_num_threads() == 3
    machine["load"] = 50.0
    seen = _Seen()
    fit(nn.Linear(4, 2), _bundle(), epochs=1, hooks=[seen])
    assert seen.threads == {1} and torch.get_num_threads() == 3
    with pytest.raises(ConfigError, match="threads"):
        fit(nn.Linear(4, 2), _bundle(), epochs=1, threads=0)


def test_evaluate_runs_with_the_policys_count_on_a_busy_machine(machine, monkeypatch):
    machine["load"] = 50.0
    torch.set_num_threads(3)
    seen = []
    model = nn.Linear(4, 2)
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    evaluate(model, _bundle())
    assert set(seen) == {1} and torch.get_num_threads() == 3


def test_torch_timing_records_and_restores_the_thread_count(machine):
    torch.set_num_threads(3)
    r = benchmark(nn.Linear(4, 2), runtime="torch", example_input=torch.randn(1, 4), threads=2, min_seconds=0.01)
    assert r.threads == 2 and torch.get_num_threads() == 3
    with pytest.raises(ConfigError, match="threads"):
        benchmark(nn.Linear(4, 2), runtime="torch", example_input=torch.randn(1, 4), threads=-1)
