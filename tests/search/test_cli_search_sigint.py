"""Ctrl-C to a running ``deepslim search`` process (issue 14: "Ctrl-C leaves the study resumable, no half-written
recipe"; session 21's audit, M3): SIGINT sent to a real child process right after its second trial line (a trial's
line is printed before its result is recorded: after the second, the first trial is finished). The process exits
130 with the CLI's one line, writes no ``recipe.yaml``, ``search.json`` or ``search.html``, leaves the journal and
no lock file; the same command then resumes and completes with exactly ``--trials`` completed trials, none of the
finished ones run again.

The child is the CLI's ``main`` in a fresh interpreter (what ``python -m deepslim`` runs) with the deterministic fake
latency table of the other CLI tests in place of ONNX Runtime's (tests/search/test_cli_search_run.py): the signal,
its handling and the journal are real, and the run takes seconds instead of the real table's calibration (~30 s on
the tiny net)."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")

ROOT = Path(__file__).resolve().parents[2]
MODEL = f"{Path(__file__).with_name('_tiny.py')}:trained_net"
TRIALS = 8
DEADLINE_S = 120  # for the child to reach its second trial line, then again to exit after the Ctrl-C
CHILD = """
import importlib, sys
from deepslim.cli import main
from deepslim.search.latency import LatencyTable
from tests.search._tiny import fake_ms, params_ms

def table(**kwargs):
    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)

importlib.import_module("deepslim.search").LatencyTable = table
sys.exit(main(sys.argv[1:]))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip


def _default_sigint():
    """Ctrl-C as a terminal delivers it, even where the suite runs with SIGINT ignored (see tests/test_cli_signals)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(out: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, "search", MODEL, "--data", "digits", "--budget", "size=0.6x",
            "--objective", "accuracy,size", "--space", "prune,int8", "--round-to", "2", "--trials", str(TRIALS),
            "--strategy", "random", "--finetune-epochs", "0", "--top-k", "1", "--remeasure-repeats", "1",
            "--seed", "0", "--out", str(out)]  # fmt: skip


def _trials(out: Path) -> dict[int, tuple[str, dict, bool]]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name="deepslim-search", storage=storage)
    return {t.number: (t.state.name, t.params, bool(t.user_attrs.get("interrupted"))) for t in study.get_trials()}


def _numbers(stderr: str) -> list[int]:
    return [int(line.split(":")[0].split()[1]) for line in stderr.splitlines() if line.startswith("trial ")]


def _stderr_lines(proc: subprocess.Popen) -> queue.Queue:
    """The child's stderr, line by line, then None at its end: read by a thread, so the test can wait with a deadline
    (a child that stalls without exiting fails the test instead of hanging the suite)."""
    lines: queue.Queue = queue.Queue()
    stream = proc.stderr
    assert stream is not None

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_line(proc: subprocess.Popen, lines: queue.Queue, deadline: float, seen: list[str]) -> str | None:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        proc.kill()
        pytest.fail(f"the search child neither went on nor exited for {DEADLINE_S} s; its stderr:\n{''.join(seen)}")


def test_ctrl_c_leaves_a_study_the_same_command_resumes_without_repeating_a_finished_trial(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen(_command(out), cwd=tmp_path, env=ENV, preexec_fn=_default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        lines, deadline = _stderr_lines(proc), time.monotonic() + DEADLINE_S
        signalled = False
        while (line := _next_line(proc, lines, deadline, seen)) is not None:
            seen.append(line)
            # right after the second trial's line: the first is recorded, the second's result is being written
            if not signalled and sum(seen_line.startswith("trial ") for seen_line in seen) == 2:
                proc.send_signal(signal.SIGINT)
                signalled, deadline = True, time.monotonic() + DEADLINE_S
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "deepslim: interrupted; temporary files removed, earlier outputs left as " \
                                           "they were"
    assert sorted(p.name for p in out.iterdir()) == ["study.journal"]  # no recipe, search.json, report or lock
    first = _trials(out)
    done = {n: params for n, (state, params, _) in first.items() if state == "COMPLETE"}
    assert 1 <= len(done) < TRIALS, first
    left_running = [n for n, (state, _, _) in first.items() if state == "RUNNING"]

    start = time.monotonic()
    again = subprocess.run(_command(out), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "taking longer than" not in again.stderr and "Forcibly releasing" not in again.stderr  # no stale lock
    assert {"recipe.yaml", "search.json", "search.html", "study.journal"} <= {p.name for p in out.iterdir()}
    after = _trials(out)
    assert sum(state == "COMPLETE" for state, _, _ in after.values()) == TRIALS
    assert {n: after[n][1] for n in done} == done and all(after[n][0] == "COMPLETE" for n in done)
    assert not set(_numbers(again.stderr)) & set(done)  # the resume ran none of the finished trials again
    assert all(after[n][0] == "FAIL" and after[n][2] for n in left_running)  # the interrupted one: failed, marked
    assert time.monotonic() - start < 120
