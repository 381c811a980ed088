"""The journal file's two helpers for :mod:`deepslim.search.storage`: Optuna's lock made safe against a Ctrl-C
(:class:`SignalSafeLock`), and an early probe that the file can be written (:func:`probe_journal`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any


class SignalSafeLock:
    """Optuna's journal lock (a lock file made with O_EXCL) with stop signals held from before it is taken until it
    is released, then raised: Optuna releases it in a ``finally``, but a Ctrl-C landing between the lock file's
    creation and that ``try`` left it behind (1 of 6 live interrupts, right after a trial's line, while its result
    was written), and the next search waited Optuna's 30-s grace before breaking it. Signals are held while it waits
    for another process's lock too; a second signal while the first is held is raised at once."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._holding = False

    def acquire(self) -> bool:
        self._holding = _HELD.hold()
        try:
            return bool(self._lock.acquire())
        except BaseException:
            self._let_go()
            raise

    def release(self) -> None:
        try:
            self._lock.release()
        finally:
            self._let_go()

    def _let_go(self) -> None:
        holding, self._holding = self._holding, False
        if holding:
            _HELD.let_go()


class _HeldSignals:
    """SIGINT, SIGTERM and SIGHUP recorded instead of handled (where Python handles them, in the main thread) while
    any lock holds them, then handed to their handlers. One holder for the process, counting its holds: the handlers
    are swapped on the first hold and put back on the last release, in whatever order the locks are released
    (a holder per lock, each putting back "the handler before it", left its own installed for good when two were
    released out of order, and every later Ctrl-C was swallowed)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self._depth = 0
        self._handlers: dict[int, Any] = {}
        self._pending: list[tuple[int, Any]] = []

    def hold(self) -> bool:
        """Hold the signals until the matching :meth:`let_go`; False (nothing held) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False  # signals are handled in the main thread only
        self._depth += 1
        if self._depth == 1:
            for sig in self.SIGNALS:
                if callable(signal.getsignal(sig)):
                    self._handlers[sig] = signal.signal(sig, self._hold)
        return True

    def let_go(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._deliver()

    def _hold(self, signum: int, frame: Any) -> None:
        self._pending.append((signum, frame))
        if len(self._pending) > 1:
            self._deliver()

    def _deliver(self) -> None:
        """Put the handlers back (where ours is still the one installed) and call them for what came meanwhile."""
        handlers, self._handlers = self._handlers, {}
        for sig, handler in handlers.items():
            if signal.getsignal(sig) == self._hold:
                signal.signal(sig, handler)
        pending, self._pending = self._pending, []
        for signum, frame in pending:
            handlers[signum](signum, frame)


_HELD = _HeldSignals()


def probe_journal(file: Path) -> None:
    """Create the journal file ``file`` (and its directories), or open an existing one for appending, then remove
    what was made, so that a search refused later writes nothing; the OSError where that fails."""
    missing = [d for d in (file.parent, *file.parent.parents) if not d.exists()]  # deepest first
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            file.unlink()
        except FileExistsError:  # a study to resume: it must take appends
            os.close(os.open(file, os.O_WRONLY | os.O_APPEND))
    finally:
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
