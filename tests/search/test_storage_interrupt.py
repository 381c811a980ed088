"""A stop signal (Ctrl-C, SIGTERM) that lands while a journal write holds the journal's lock file is raised once the
write is done and the lock released (issue 14's audit, session 21, L1): a real Ctrl-C right after a trial's progress
line once left ``study.journal.lock`` behind, and the resumed search waited Optuna's 30-s grace before breaking it.

The interrupt is sent deterministically, the instant Optuna's lock has created its lock file (its ``acquire``
returning), which is the window the live interrupt hit."""

import signal
import time

import pytest

from deepslim.cli._common import Terminated, _on_stop_signal
from deepslim.search import storage as st
from deepslim.search._journal_file import SignalSafeLock

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


@pytest.fixture
def handlers():
    """SIGINT, SIGTERM and SIGHUP restored after the test (whatever it installs)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in sigs}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def interrupted_acquire(monkeypatch):
    """Optuna's lock sends this process ``sig`` (set by the test) as soon as it holds the lock file."""
    from optuna.storages.journal import JournalFileOpenLock

    real, sent = JournalFileOpenLock.acquire, {"sig": signal.SIGINT, "count": 0}

    def acquire(self):
        taken = real(self)
        sent["count"] += 1
        signal.raise_signal(sent["sig"])  # the Python handler runs before this call returns
        return taken

    monkeypatch.setattr(JournalFileOpenLock, "acquire", acquire)
    return sent


@pytest.mark.parametrize(("sig", "handler", "raised", "after"), [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt, signal.default_int_handler),  # Ctrl-C
    # what the CLI installs for SIGTERM; it ignores further stop signals while the cleanup runs
    (signal.SIGTERM, _on_stop_signal, Terminated, signal.SIG_IGN),
])  # fmt: skip
def test_a_signal_while_the_journal_lock_is_held_is_raised_after_the_write_and_leaves_no_lock(
        tmp_path, handlers, interrupted_acquire, monkeypatch, sig, handler, raised, after):  # fmt: skip
    signal.signal(sig, handler)
    interrupted_acquire["sig"] = sig
    storage = st.open_storage(None, out_dir=tmp_path)
    with pytest.raises(raised):
        optuna.create_study(storage=storage, study_name="s")
    assert interrupted_acquire["count"] == 1
    assert not (tmp_path / "study.journal.lock").exists()
    assert signal.getsignal(sig) == after  # the handler was put back, then ran
    monkeypatch.undo()  # Optuna's own lock again: the resume finds the write done and does not wait for a lock
    start = time.monotonic()
    study = optuna.load_study(study_name="s", storage=st.open_storage(None, out_dir=tmp_path))
    study.enqueue_trial({})
    assert time.monotonic() - start < 5 and len(study.trials) == 1


def test_a_second_signal_while_the_lock_is_held_interrupts_at_once(tmp_path, handlers, monkeypatch):
    """A deferred Ctrl-C waits for the write; a second one (a write stuck behind another process's lock) does not."""
    from optuna.storages.journal import JournalFileOpenLock

    signal.signal(signal.SIGINT, signal.default_int_handler)
    real, after_second = JournalFileOpenLock.acquire, []

    def acquire(self):
        taken = real(self)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        after_second.append(True)  # not reached: the second raises here
        return taken

    monkeypatch.setattr(JournalFileOpenLock, "acquire", acquire)
    with pytest.raises(KeyboardInterrupt):
        optuna.create_study(storage=st.open_storage(None, out_dir=tmp_path), study_name="s")
    assert after_second == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _FakeLock:
    def acquire(self):
        return True

    def release(self):
        pass


@pytest.mark.parametrize("order", ["out of order", "in order"])
def test_two_locks_released_in_any_order_hold_a_signal_until_the_last_and_then_give_the_handler_back(
        handlers, order):  # fmt: skip
    """Review R1 (session 21): a holder per lock, each putting back "the handler before it", left the second lock's
    holder installed for good when the first lock was released first, and every later Ctrl-C was swallowed."""
    got = []

    def handler(signum, frame):
        got.append(signum)

    signal.signal(signal.SIGINT, handler)
    a, b = SignalSafeLock(_FakeLock()), SignalSafeLock(_FakeLock())
    a.acquire()
    b.acquire()
    first, last = (a, b) if order == "out of order" else (b, a)
    first.release()
    signal.raise_signal(signal.SIGINT)
    assert got == []  # still held: the other lock is taken
    last.release()
    assert got == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is handler
    signal.raise_signal(signal.SIGINT)  # and a later Ctrl-C is handled at once
    assert got == [signal.SIGINT, signal.SIGINT]
