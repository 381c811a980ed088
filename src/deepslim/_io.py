"""Atomic output: an interrupted write never leaves a half-written file, or a half-replaced directory, behind.

Temporary files and directories are hidden siblings of their destination (``.NAME.tmp-XXXX``), removed on every
exit path Python sees (exceptions, ``KeyboardInterrupt``, and ``SystemExit``, which the CLI raises on SIGTERM).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from deepslim.errors import ConfigError, DeepSlimError


def _usual_mode(path: Path, full: int) -> None:
    """mkstemp/mkdtemp make private files; results get the permissions a plain open/mkdir would give them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, full & ~umask)


def check_writable(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """``path`` as a Path, or a ``ConfigError`` that says why it cannot be written (a directory where a file
    belongs, a file where a directory belongs, a folder this process may not write), before any work is done."""
    dest = Path(path)
    if not directory and dest.is_dir():
        raise ConfigError(f"{dest} is a directory: name a file to write")
    if directory and dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} is a file; a directory is written there: choose another path")
    parent = next((p for p in dest.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot write {dest}: {parent} is a file, not a directory; choose another path")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {dest}: permission denied in {parent}; choose a writable location")
    return dest


def output_error(dest: Path, exc: OSError) -> ConfigError:
    """The one-line error for an output that the file system refused (read-only, full, a file in the way)."""
    why = exc.strerror or type(exc).__name__
    return ConfigError(f"cannot write {dest}: {why.lower()}; choose another location")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A destination the file system refuses (a directory, a read-only folder, a file where a folder belongs) is a
    ``ConfigError``, before the block runs where it can be told."""
    dest = check_writable(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name keeps the destination's suffix: some writers (torch.export) check it
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", suffix=dest.suffix, dir=dest.parent)
    except OSError as exc:
        raise output_error(dest, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _usual_mode(tmp_path, 0o666)
        try:
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise output_error(dest, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, keep_partial: bool = False) -> Iterator[Path]:
    """Yield a new directory, named like ``path``, inside a hidden temporary sibling of ``path``; it replaces ``path``
    only if the block succeeds.

    On success, whatever ``path`` held before is removed, so no file of an earlier run stays beside the new ones.
    On failure ``path`` is left as it was and the temporary directory is removed -- unless ``keep_partial`` is set
    and ``path`` holds nothing (absent or an empty directory): then the partial work is moved there, so the
    completed part of a long job is not lost. Callers decide beforehand whether ``path`` may be replaced at all.
    """
    dest = check_writable(path, directory=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(dest, exc) from exc
    with _sole_writer(dest):
        yield from _in_holder(dest, keep_partial)


def _in_holder(dest: Path, keep_partial: bool) -> Iterator[Path]:
    try:
        holder = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise output_error(dest, exc) from exc
    work = holder / dest.name  # the work directory already has its final name (reports show it)
    keep = False
    try:
        work.mkdir()
        try:
            yield work
        except BaseException:
            if keep_partial and _is_vacant(dest) and any(work.iterdir()):
                _replace_dir(work, dest)
            raise
        try:
            _replace_dir(work, dest)
        except BaseException as exc:
            if work.exists():  # the work is complete: never delete it because it could not be moved
                keep = True
                if isinstance(exc, Exception):
                    raise DeepSlimError(f"the finished output could not replace {dest} ({exc}); it is kept in "
                                        f"{work}") from exc
            raise
    finally:
        if not keep:
            shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def _sole_writer(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dest`` (a hidden ``.NAME.lock`` beside it) while a directory is built for it, so a
    second process writing the same output fails at once instead of silently replacing the first one's result.

    The lock is the kernel's (``flock``): it dies with its process, so a killed run never leaves a stale lock. The
    lock file is removed on release; a process that locked a file just removed retries on the new one.
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform: concurrent writers are not detected
        yield
        return
    lock = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise output_error(dest, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DeepSlimError(f"another process is writing {dest} right now; wait for it to finish or choose "
                                "another output") from None  # fmt: skip
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the previous holder between our open and lock: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _is_vacant(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not path.is_symlink() and not any(path.iterdir()))


def _replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``, removing what ``dest`` held; ``dest`` is never left half-replaced.

    The two renames run with SIGINT/SIGTERM/SIGHUP held back (delivered right after), so a signal cannot land between
    them; the earlier contents are deleted only once the new ones are in place, and kept if putting them back fails.
    """
    _usual_mode(src, 0o777)
    old, replaced = None, False
    try:
        with _signals_held():  # a signal that arrived meanwhile is raised when this block ends
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                try:
                    os.replace(dest, old)  # an empty directory is replaced by the old run: two renames, no copy
                except BaseException:
                    old.rmdir()
                    old = None
                    raise
            try:
                os.replace(src, dest)
            except BaseException:
                if old is not None:
                    os.replace(old, dest)  # put the old run back (if even this fails, it stays in ``old``)
                    old = None
                raise
            replaced = True
    finally:
        if replaced and old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back the signals that end a run while the block runs, and deliver them (in order) right after it.

    Python runs its signal handlers in the main thread whichever thread the kernel picked, so blocking the signals with
    ``pthread_sigmask`` is not enough once other threads exist (torch's pools): the handlers themselves are swapped
    for one that only records the signal, then the earlier handlers are put back and the signals raised again.
    Outside the main thread, where handlers cannot be set, the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {}
    for sig in _HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None:  # None: a handler installed outside Python, which Python cannot put back
            previous[sig] = signal.signal(sig, record)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


_HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def import_file(path: Path, module_name: str) -> ModuleType | None:
    """Run the Python file ``path`` as the module ``module_name`` (a user's factory or plugin) and return it.

    The module is in ``sys.modules`` while it runs (dataclasses and pickling look it up there) and is taken out again
    if running it raises, so a failed import leaves nothing half-registered. None when the file cannot be read as a
    Python module at all; what running it raises propagates, for the caller to name.
    """
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
