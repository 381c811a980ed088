"""The parent side of data-parallel training (``deepslim.train.distributed``): the torchrun command and environment
it launches, the progress it relays, the one error it raises for a failed run, and the checks on what ranks left.

The launcher is replaced by a scripted process here (no torchrun): the real runs are in tests/train/test_ddp.py.
"""

import json
import subprocess
import sys

import pytest
import torch

import deepslim.errors as errors
from deepslim.errors import ConfigError, DeepSlimError
from deepslim.train import distributed
from deepslim.train.distributed import HISTORY_FILE, JOB_FILE, RESULT_FILE, STATE_FILE, state_digest


class _FakeProc:
    """A torchrun that writes two epochs of history (one per poll) and exits with ``code``."""

    def __init__(self, workdir, code, *, result=True):
        self.workdir, self.code, self.polls, self.result = workdir, code, 0, result
        self.returncode = None

    def poll(self):
        self.polls += 1
        if self.polls <= 2:
            with open(self.workdir / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"epoch": self.polls}) + "\n")
            return None
        if self.result:
            (self.workdir / RESULT_FILE).write_text("{}")
        self.returncode = self.code
        return self.code


class _Launches(list):
    code = 0
    result = True


@pytest.fixture
def popen(monkeypatch, tmp_path):
    """subprocess.Popen replaced: each call recorded, the process a _FakeProc exiting with ``popen.code``."""
    calls = _Launches()

    def fake(cmd, *, stdout, stderr, env):
        calls.append({"cmd": cmd, "stdout": stdout, "stderr": stderr, "env": env})
        stdout.write(b"torchrun says hello\n")
        return _FakeProc(tmp_path, calls.code, result=calls.result)

    monkeypatch.setattr(distributed.subprocess, "Popen", fake)
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    monkeypatch.setenv("DEEPSLIM_PARENT_MARK", "kept")
    return calls


def test_launch_runs_torchrun_standalone_with_the_ranks_threads_and_relays_each_epoch_once(popen, tmp_path):
    seen = []
    distributed._launch(tmp_path, nproc=3, threads=2, on_epoch=seen.append)
    (call,) = popen
    assert call["cmd"] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m",
                           "deepslim.train._ddp_worker", str(tmp_path / JOB_FILE)]  # fmt: skip
    assert call["env"]["OMP_NUM_THREADS"] == "2" and call["env"]["PYTHONUNBUFFERED"] == "1"
    assert call["env"]["DEEPSLIM_PARENT_MARK"] == "kept"  # the parent's environment travels along
    assert call["stderr"] is subprocess.STDOUT
    assert (tmp_path / "launcher.log").read_bytes() == b"torchrun says hello\n"  # the launcher's output: a file
    assert seen == [{"epoch": 1}, {"epoch": 2}]


def test_a_launcher_that_exits_nonzero_or_leaves_no_result_raises_its_last_line(popen, tmp_path):
    popen.code = 1
    with pytest.raises(DeepSlimError, match=r"^data-parallel training failed \(torchrun exit status 1\): "
                                            r"torchrun says hello$"):  # fmt: skip
        distributed._launch(tmp_path, nproc=1, threads=1, on_epoch=None)
    (tmp_path / RESULT_FILE).unlink()
    popen.code, popen.result = 0, False
    with pytest.raises(DeepSlimError, match=r"torchrun exit status 0"):
        distributed._launch(tmp_path, nproc=1, threads=1, on_epoch=None)


def test_an_interrupted_launch_terminates_the_ranks(monkeypatch, tmp_path):
    events = []

    class Proc:
        returncode = None

        def poll(self):
            return None

        def terminate(self):
            events.append("terminate")

        def wait(self, timeout=None):
            events.append(("wait", timeout))
            if len(events) == 2:
                raise subprocess.TimeoutExpired("torchrun", timeout)

        def kill(self):
            events.append("kill")

    monkeypatch.setattr(distributed.subprocess, "Popen", lambda *a, **k: Proc())
    monkeypatch.setattr(distributed.time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        distributed._launch(tmp_path, nproc=1, threads=1, on_epoch=None)
    assert events == ["terminate", ("wait", 10), "kill", ("wait", None)]


def test_progress_relays_whole_lines_only_from_where_it_left_off(tmp_path):
    seen = []
    assert distributed._report_epochs(tmp_path, 0, seen.append) == 0  # no history yet
    (tmp_path / HISTORY_FILE).write_text('{"a": 1}\n{"a": 2}\n{"a": 3')  # the third is still being written
    assert distributed._report_epochs(tmp_path, 0, None) == 0
    assert distributed._report_epochs(tmp_path, 1, seen.append) == 2
    assert seen == [{"a": 2}]
    assert distributed._report_epochs(tmp_path, 5, seen.append) == 5 and seen == [{"a": 2}]


def _record(workdir, rank, type_, message, collective, at):
    (workdir / f"error-rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "type": type_, "message": message, "collective": collective, "time": at}))


def test_the_first_ranks_own_error_is_raised_before_collective_errors_with_its_deepslim_class(tmp_path):
    _record(tmp_path, 1, "RuntimeError", "gloo: connection reset", True, 100.0)
    _record(tmp_path, 0, "DataError", "no such dataset", False, 300.0)
    _record(tmp_path, 2, "ConfigError", "a later failure", False, 400.0)
    exc = distributed._failure(tmp_path, 1)
    assert type(exc) is errors.DataError
    assert str(exc) == "data-parallel training failed on rank 0: no such dataset"


def test_a_collective_error_alone_is_raised_and_foreign_classes_become_deepslim_errors(tmp_path):
    _record(tmp_path, 1, "RuntimeError", "gloo: connection reset", True, 200.0)
    _record(tmp_path, 0, "ValueError", "first of the collective ones", True, 100.0)
    exc = distributed._failure(tmp_path, 1)
    assert type(exc) is DeepSlimError and str(exc).endswith("rank 0: first of the collective ones")
    _record(tmp_path, 0, "log", "a name in errors that is not a class", True, 100.0)
    assert type(distributed._failure(tmp_path, 1)) is DeepSlimError


@pytest.mark.parametrize(("log", "last"), [
    ("Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'zz'\n"
     "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \nexitcode  : 1 (pid: 7)\n",
     "ModuleNotFoundError: No module named 'zz'"),
    ("W0101 starting\n  exitcode  : -9 (pid: 12)\nsome summary\n", "exitcode  : -9 (pid: 12)"),
    ("first\n\nlast words  \n\n", "last words"),
    ("", "no output"),
])  # fmt: skip
def test_without_a_rank_record_the_launchers_exception_line_else_exit_code_else_last_line_is_raised(tmp_path, log,
                                                                                                   last):
    (tmp_path / "launcher.log").write_text(log)
    exc = distributed._failure(tmp_path, -9)
    assert type(exc) is DeepSlimError
    assert str(exc) == f"data-parallel training failed (torchrun exit status -9): {last}"


def _rank_files(workdir, model, digests):
    for r, d in enumerate(digests):
        (workdir / f"digest-rank{r}.json").write_text(json.dumps({"rank": r, "params": d}))
    torch.save(model.state_dict(), workdir / STATE_FILE)
    (workdir / RESULT_FILE).write_text(json.dumps({"history": [{"val_accuracy": 0.5}], "best_epoch": 1,
                                                   "best_val_accuracy": 0.5, "seconds": 2.0,
                                                   "best_val_metric": 0.5}))  # fmt: skip


def test_collect_loads_rank_zeros_weights_when_all_ranks_agree_and_refuses_otherwise(tmp_path):
    torch.manual_seed(0)
    trained, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    _rank_files(tmp_path, trained, [state_digest(trained)] * 2)
    model.train()
    result = distributed._collect(model, tmp_path, 2)
    assert state_digest(model) == state_digest(trained) and not model.training
    assert (result.best_epoch, result.seconds, result.history) == (1, 2.0, [{"val_accuracy": 0.5}])
    _rank_files(tmp_path, trained, ["a", "b", "a"])
    with pytest.raises(DeepSlimError, match=r"ended with different parameters \(2 distinct\)"):
        distributed._collect(model, tmp_path, 3)
    _rank_files(tmp_path, torch.nn.Linear(3, 4), ["a"])
    with pytest.raises(DeepSlimError, match="do not fit the model they came from"):
        distributed._collect(model, tmp_path, 1)


def test_the_state_digest_changes_with_one_bit_of_one_parameter_or_a_name():
    a = torch.nn.Sequential(torch.nn.Linear(2, 2))
    d = state_digest(a)
    assert len(d) == 64 and d == state_digest(a)
    with torch.no_grad():
        a[0].bias[1] = torch.nextafter(a[0].bias[1], torch.tensor(9.0))
    assert state_digest(a) != d
    b = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 2))
    b[1].load_state_dict(a[0].state_dict())
    assert state_digest(b) != state_digest(a)  # same bytes, other names


@pytest.mark.parametrize(("data", "kwargs", "message"), [
    (3, {}, r"^data must be a dataset spec string, got int$"),
    ("digits", {"epochs": -1}, r"^epochs must be >= 0 and lr positive, got epochs=-1, lr=0.001$"),
    ("digits", {"lr": 0.0}, r"^epochs must be >= 0 and lr positive, got epochs=1, lr=0.0$"),
    ("digits", {"data_options": {"batch_size": 4, "note": object()}},
     r"^data options must be plain JSON values to reach the worker processes: "),
    ("nosuchloader", {"data_options": {}},
     r"^give the global batch size as the data option batch_size for dataset 'nosuchloader'$"),
    ("digits", {"data_options": {"batch_size": True}}, r"^batch_size must be a positive integer, got True$"),
    ("digits", {"nproc": True}, r"^nproc must be a positive number of processes, got True$"),
])  # fmt: skip
def test_a_job_is_refused_before_launch_naming_the_setting(data, kwargs, message):
    options = {"kind": "fit", "data": data, "data_options": {"batch_size": 4}, "nproc": 2, "epochs": 1, "lr": 1e-3,
               "optimizer": "adam", "checkpoint": None, "task": None, **kwargs}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        distributed._base_job(options.pop("kind"), options.pop("data"), options.pop("data_options"),
                              options.pop("nproc"), **options)  # fmt: skip


def test_a_job_is_plain_json_with_the_global_batch_the_task_by_name_and_an_absolute_checkpoint(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = distributed._base_job("fit", "digits", None, 2, epochs=3, lr=0.1, optimizer=distributed.Optimizer("sgd"),
                                checkpoint="out/best.pt", task="classification", seed=5)  # fmt: skip
    assert job == {"kind": "fit", "data": {"spec": "digits", "options": {}}, "global_batch": job["global_batch"],
                   "nproc": 2, "task": "classification", "checkpoint": str(tmp_path / "out" / "best.pt"),
                   "options": {"epochs": 3, "lr": 0.1, "optimizer": "sgd", "seed": 5}}  # fmt: skip
    assert job["global_batch"] == distributed._global_batch("digits", {}) > 0
    assert json.loads(json.dumps(job)) == job


def test_a_configured_task_that_its_name_does_not_rebuild_is_refused():
    import dataclasses

    from deepslim.tasks import get_task

    task = get_task("classification")
    assert distributed._task_name(task) == "classification" and distributed._task_name(None) is None
    task = dataclasses.replace(task, ignore_index=0)  # a setting the name does not carry
    with pytest.raises(ConfigError, match=r"^task 'classification' has settings that cannot reach worker processes"):
        distributed._task_name(task)
