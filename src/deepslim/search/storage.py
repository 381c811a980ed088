"""Where a search's study lives, so that many worker processes (and machines) share it: Optuna storages.

- ``journal:PATH`` — Optuna's journal file (one machine, several processes, no server); the default, a
  ``study.journal`` inside the search's output directory, so an interrupted search resumes with the same command.
- ``postgresql://user[:password]@host:port/db`` — several machines; ``sqlite:///PATH`` — one machine, tests.
  Both are Optuna's RDB storage with heartbeats: a worker that dies mid-trial stops beating, and the next worker to
  look fails its trial after the grace period and queues a retry of it (``RetryHeartbeatStaleTrialCallback``).

A storage that cannot be opened fails at once with the reason (one connection with a short timeout, no retry
loop). The study is created once, before any worker starts (:func:`create_study_once`): Optuna still races on
creating its tables when several workers create a study on a fresh PostgreSQL database at once (optuna#1092).
The study records deepslim's version and a fingerprint of the search space; :func:`join_study` refuses a worker
that does not match. A search runs an exact number of trials by queueing that many slots up front
(:func:`add_trial_slots`); workers claim them one at a time (:func:`claim_trial`), so none is run twice or lost.

A claimed trial records the process that runs it (machine, pid, start time). A trial whose process on this machine
is gone (killed, crashed) is failed and retried by the next worker of this machine that looks for work — at once,
on any storage; a journal file has no heartbeat, so there this is the only way. A trial of a dead process on
another machine is failed and retried by the storage's heartbeat after the grace period (RDB storages).

Optuna (the ``search`` extra) is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from deepslim.errors import ConfigError, DeepSlimError
from deepslim.search._journal_file import SignalSafeLock, probe_journal
from deepslim.search._process import holder_dead, this_process

log = logging.getLogger(__name__)

SCHEMES = ("journal:PATH", "postgresql://user[:password]@host:port/db", "sqlite:///PATH")
DEFAULT_JOURNAL = "study.journal"
CONNECT_TIMEOUT_S = 5
HEARTBEAT_INTERVAL_S = 60  # a dead worker's trial is retried after the grace period
GRACE_PERIOD_S = 180
MAX_RETRY = 3
VERSION_ATTR = "deepslim_version"
SPACE_ATTR = "deepslim_space"
HEARTBEAT_ATTR = "deepslim_heartbeat"  # [interval_s, grace_period_s], set when the study is created
HOLDER_ATTR = "deepslim_worker"  # a trial's system attribute: the process running it (see this_process)
UNRECORDED_GRACE_S = 30.0  # a running trial naming no process this long was claimed by a worker stopped at once
POLL_S = 1.0  # how often an idle worker looks again while other workers' trials run


class StorageError(DeepSlimError):
    """A study storage that cannot be opened, or a study a worker must not join."""


def require_optuna() -> None:
    """Fail now, saying what to install, where Optuna (the ``search`` extra) is missing: a search checks this before
    its slow start (data, model, the latency table's calibration)."""
    _optuna()


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("searching needs Optuna: pip install 'deepslim[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str | None, *, out_dir: str | os.PathLike[str] | None = None,
                 heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int = GRACE_PERIOD_S) -> Any:  # fmt: skip
    """An Optuna storage for ``url`` (default: a journal file in ``out_dir``), checked to be reachable now."""
    if url is None:
        if out_dir is None:
            raise ConfigError("give a storage URL or an output directory for the default journal file")
        url = f"journal:{Path(out_dir) / DEFAULT_JOURNAL}"
    if url.startswith("journal:"):
        return _journal(url[len("journal:") :])
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme not in ("postgresql", "sqlite"):
        raise ConfigError(f"unknown storage {url!r}: use one of {', '.join(SCHEMES)}")
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise ConfigError(f"the heartbeat interval must be >= 1 s and the grace period longer, got "
                          f"{heartbeat_interval} and {grace_period}")  # fmt: skip
    if scheme == "postgresql":
        _check_postgresql(url)
    else:
        _check_sqlite(url)
    return _rdb(url, heartbeat_interval, grace_period)


def _journal(path: str) -> Any:
    optuna = _optuna()
    if not path:
        raise ConfigError("journal storage needs a file: journal:PATH")
    file = Path(path).expanduser()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        # an open lock (fcntl-free: O_EXCL on a lock file) works on local and network file systems alike
        lock = SignalSafeLock(optuna.storages.journal.JournalFileOpenLock(str(file)))
        backend = optuna.storages.journal.JournalFileBackend(str(file), lock_obj=lock)
        return optuna.storages.JournalStorage(backend)
    except OSError as exc:
        raise _unopenable(file, exc) from exc


def check_journal(path: str | os.PathLike[str]) -> None:
    """Fail now, with the reason, where the journal file ``path`` cannot be created or appended to (``--out`` under
    a file, or on a file system that refuses it) -- without leaving anything behind: the directories and the file
    made to find out are removed again, so a search refused later (an infeasible budget) writes nothing."""
    file = Path(path).expanduser()
    try:
        probe_journal(file)
    except OSError as exc:
        raise _unopenable(file, exc) from exc


def _unopenable(file: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot open the journal file {file}: {exc.strerror or exc}")


def _check_postgresql(url: str) -> None:
    """Connect once, with a short timeout: a wrong host, port, database or password fails now, with the reason."""
    try:
        import psycopg2
    except ImportError:
        raise ConfigError("PostgreSQL storage needs psycopg2: pip install 'deepslim[search]'") from None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed PostgreSQL URL {redact(url)!r}: {exc}") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(f"a PostgreSQL URL names a host and a database: {SCHEMES[1]}, got {redact(url)!r}")
    try:
        conn = psycopg2.connect(host=parts.hostname, port=port or 5432, dbname=unquote(parts.path.strip("/")),
                                user=unquote(parts.username or "") or None,
                                password=unquote(parts.password or "") or None,
                                connect_timeout=CONNECT_TIMEOUT_S)  # fmt: skip
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split())
        raise StorageError(f"cannot connect to {redact(url)}: {reason}") from None
    conn.close()


def _check_sqlite(url: str) -> None:
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else None
    if path is None:
        raise ConfigError(f"a SQLite URL is sqlite:///PATH, got {url!r}")
    if path not in ("", ":memory:") and not Path(path).expanduser().resolve().parent.is_dir():
        raise StorageError(f"cannot open {url}: the directory {Path(path).parent} does not exist")


def _rdb(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    import inspect

    optuna = _optuna()
    storages = optuna.storages
    engine = {}
    if url.startswith("postgresql"):
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        if url.startswith("postgresql://"):  # the driver checked above (SQLAlchemy 2.1 would pick psycopg 3)
            url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    params = inspect.signature(storages.RDBStorage).parameters
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; deepslim relies on them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "heartbeat_stale_trial_callback" in params:  # Optuna >= 4.9 renamed the retry callback
                callback = storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                retry = {"heartbeat_stale_trial_callback": callback}
            else:
                retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)}
            return storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                       grace_period=grace_period, **retry)  # fmt: skip
    except Exception as exc:  # SQLAlchemy's errors, raised while creating or checking the schema
        reason = " ".join(str(exc).split()).split(" (Background on this error")[0]
        raise StorageError(f"cannot open the study storage {redact(url)}: {reason}") from None


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def space_fingerprint(space: Any) -> str:
    """A short stable digest of a search space (any JSON-able description of it)."""
    text = json.dumps(space, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version() -> str:
    from deepslim._version import __version__

    return __version__


def create_study_once(url: str | None, name: str, directions: Sequence[str], *, metadata: dict[str, Any],
                      out_dir: str | os.PathLike[str] | None = None, **storage_options: Any) -> Any:  # fmt: skip
    """Create (or reopen, for a resumed search) study ``name`` and its tables, before any worker starts.

    ``metadata`` is stored in the study's user attributes; it must hold ``space_fingerprint``
    (:func:`space_fingerprint`), which, with deepslim's version, a joining worker must match. Reopening a study
    checks the same, so a resumed search cannot mix two spaces.
    """
    optuna = _optuna()
    if "space_fingerprint" not in metadata:
        raise ConfigError("study metadata must hold the search space's fingerprint (space_fingerprint)")
    storage = open_storage(url, out_dir=out_dir, **storage_options)
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions), load_if_exists=True)
    attrs = study.user_attrs
    if VERSION_ATTR in attrs:
        _check_compatible(study, name, metadata["space_fingerprint"])
        return study
    for key, value in metadata.items():
        if key != "space_fingerprint":
            study.set_user_attr(key, value)
    study.set_user_attr(SPACE_ATTR, metadata["space_fingerprint"])
    interval = _heartbeat_interval(storage)
    if interval:  # every worker must beat and judge staleness alike, whatever its own defaults
        study.set_user_attr(HEARTBEAT_ATTR, [interval, getattr(storage, "grace_period", None)])
    study.set_user_attr(VERSION_ATTR, _version())
    return study


def join_study(url: str | None, name: str, *, space_fingerprint: str, out_dir: str | os.PathLike[str] | None = None,
               **storage_options: Any) -> Any:  # fmt: skip
    """Load an existing study for a worker; refuse a study of another deepslim version or search space.

    The worker beats at the interval, and judges other workers' trials stale after the grace period, that the
    study was created with (``storage_options`` otherwise), so workers started with different settings agree.
    """
    optuna = _optuna()
    storage = open_storage(url, out_dir=out_dir, **storage_options)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study {name!r} in this storage (it has: {', '.join(names) or 'none'}): "
                           "create it with deepslim search first") from None  # fmt: skip
    _check_compatible(study, name, space_fingerprint)
    recorded = study.user_attrs.get(HEARTBEAT_ATTR)
    if recorded and [_heartbeat_interval(storage), getattr(storage, "grace_period", None)] != recorded:
        options = {**storage_options, "heartbeat_interval": recorded[0], "grace_period": recorded[1]}
        study = optuna.load_study(study_name=name, storage=open_storage(url, out_dir=out_dir, **options))
    return study


def check_version(study: Any, name: str) -> None:
    """Refuse a study that another deepslim version created (its trials would be judged differently)."""
    recorded = study.user_attrs.get(VERSION_ATTR)
    if recorded != _version():
        raise StorageError(f"study {name!r} was created by deepslim {recorded or '(unknown)'}; this worker runs "
                           f"{_version()}: run the same version on every machine")  # fmt: skip


def _check_compatible(study: Any, name: str, fingerprint: str) -> None:
    check_version(study, name)
    attrs = study.user_attrs
    if attrs.get(SPACE_ATTR) != fingerprint:
        raise StorageError(f"study {name!r} searches another space (fingerprint {attrs.get(SPACE_ATTR)}, this "
                           f"run's {fingerprint}): resume it, or join it as a worker, with the same model, data, "
                           f"objectives and space options (--space, --tie-int8, --round-to)")  # fmt: skip


def add_trial_slots(study: Any, count: int) -> None:
    """Queue ``count`` empty trials (their parameters still come from the sampler when claimed).

    Workers run only queued trials (:func:`claim_trial`), so a search runs exactly as many as were queued, however
    many workers share it; a retried trial is queued by the storage's retry callback in the same way.
    """
    if count < 0:
        raise ConfigError(f"the number of trials must be >= 0, got {count}")
    for _ in range(count):
        study.enqueue_trial({}, skip_if_exists=False)


def claim_trial(study: Any) -> Any | None:
    """Take the next queued trial for this worker (an ``optuna.Trial``), or None when none is left.

    Trials of dead workers (no heartbeat for the grace period) are failed first, which queues their retries.
    Taking a trial is atomic in the storage: two workers never get the same one.
    """
    optuna = _optuna()
    with warnings.catch_warnings():  # "experimental" in Optuna; deepslim relies on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    release_dead_trials(study)
    storage = study._storage  # Optuna's own pop (Study._pop_waiting_trial_id) falls back to a new trial
    waiting = optuna.trial.TrialState.WAITING
    for frozen in storage.get_all_trials(study._study_id, deepcopy=False, states=(waiting,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=optuna.trial.TrialState.RUNNING):
                if _heartbeat_interval(storage):  # at once: a trial that never beat never goes stale
                    storage.record_heartbeat(frozen._trial_id)
                storage.set_trial_system_attr(frozen._trial_id, HOLDER_ATTR, this_process())
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def release_dead_trials(study: Any, *, mark: str | None = None) -> list[int]:
    """Fail the running trials whose process on this machine is gone and queue a retry of each (same parameters,
    up to :data:`MAX_RETRY` times, marked as Optuna's retry callbacks mark theirs); the failed trials' numbers.

    ``mark`` names a user attribute set (True) on each failed trial, not on its retry. A trial that names no
    process (its worker stopped between claiming and recording itself) is released once it has run so for
    :data:`UNRECORDED_GRACE_S`. Two workers releasing the same trial at once
    is safe: the storage lets only one of them fail it, and only that one queues the retry.
    """
    optuna = _optuna()
    storage, me = study._storage, this_process()
    running = storage.get_all_trials(study._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    released = []
    for frozen in running:
        holder = frozen.system_attrs.get(HOLDER_ATTR)
        if not (holder_dead(holder, me) if holder is not None else _unrecorded_too_long(frozen)):
            continue
        try:
            if mark:
                storage.set_trial_user_attr(frozen._trial_id, mark, True)
            if not storage.set_trial_state_values(frozen._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker released it first
        failed = storage.get_trial(frozen._trial_id)  # its retry keeps the parameters, not what the run set
        failed.user_attrs = {k: v for k, v in failed.user_attrs.items() if k != mark}
        failed.system_attrs = {k: v for k, v in failed.system_attrs.items()
                               if k != HOLDER_ATTR and not k.startswith("constraints")}  # fmt: skip
        log.warning("trial %d was left running by a process that is gone (pid %s): failed, and queued again",
                    frozen.number, holder.get("pid") if isinstance(holder, dict) else "not recorded")  # fmt: skip
        storages = optuna.storages
        retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(max_retry=MAX_RETRY)(study, failed)
        released.append(frozen.number)
    return released


def _unrecorded_too_long(frozen: Any) -> bool:
    """Whether a running trial that names no process has been so for :data:`UNRECORDED_GRACE_S`: a worker records
    itself right after claiming (two writes), so only one stopped between them leaves such a trial — which nothing
    else would release on a storage without heartbeats (a journal file), and a resumed search waited for forever."""
    started = frozen.datetime_start
    return started is not None and (datetime.datetime.now() - started).total_seconds() > UNRECORDED_GRACE_S


def _heartbeat_interval(storage: Any) -> int | None:
    """Seconds between a running trial's heartbeats; None for storages without them (journal files)."""
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


@contextlib.contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record ``trial``'s heartbeat every interval while the block runs (a no-op for storages without one)."""
    storage = study._storage
    interval = _heartbeat_interval(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_queued_trials(study: Any, objective: Callable[[Any], Any], *,
                      recoverable: tuple[type[BaseException], ...] = (), poll_s: float = POLL_S) -> int:  # fmt: skip
    """A worker's loop: claim queued trials and run ``objective(trial)`` on each until none is left; the number
    run here.

    The worker also waits (looking again every ``poll_s``) while other workers' trials run, since a dead worker's
    trial comes back as a retry (:func:`release_dead_trials`, or the heartbeat). An exception of a ``recoverable``
    type fails its trial, recorded in the trial's ``error`` attribute, and the loop goes on; any other fails its
    trial and propagates. An interrupt (Ctrl-C) leaves the trial running, for the next search to release.
    """
    optuna = _optuna()
    done = 0
    while True:
        trial = claim_trial(study)
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                return done
            threading.Event().wait(poll_s)
            continue
        try:
            with heartbeat(study, trial):
                value = objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            _taken_over(trial)
            continue
        except recoverable as exc:
            log.warning("trial %d failed: %s", trial.number, exc)
            trial.set_user_attr("error", str(exc))
            _tell(study, trial, state=optuna.trial.TrialState.FAIL)
            continue
        except Exception:
            _tell(study, trial, state=optuna.trial.TrialState.FAIL)
            raise
        done += _tell(study, trial, value)


def _taken_over(trial: Any) -> None:
    log.warning("trial %d was failed by another worker while it ran here (its heartbeat lapsed on a busy machine); "
                "its retry runs instead", trial.number)  # fmt: skip


def _tell(study: Any, trial: Any, value: Any = None, **state: Any) -> bool:
    """``study.tell``, unless another worker has already failed the trial (a heartbeat that lapsed while it ran:
    its retry is queued): then a warning, not a dead worker. Whether the result was recorded."""
    optuna = _optuna()
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        _taken_over(trial)
        return False
    try:
        study.tell(trial, value, **state)
    except optuna.exceptions.UpdateFinishedTrialError:
        _taken_over(trial)
        return False
    return True
