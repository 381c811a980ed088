"""How many intra-op threads training, calibration and timing use: one policy, applied and undone in one place.

When a caller gives no thread count and the machine is oversubscribed (its 1-minute load average is above the number
of cores this process may run on), a process uses 1 intra-op thread: on this project's shared 2-core machine, 2
threads per process ran about 10x slower than 1 while other processes held the cores, because each thread waits
for the others at every parallel region. Otherwise (and whenever ``OMP_NUM_THREADS`` says what the user wants)
torch's own default stands.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

from deepslim.errors import ConfigError

MAX_THREADS = 1024  # far beyond any core count here; thread pools of 10**6 crash the runtimes (segfault)


def cores() -> int:
    """The number of CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's 1-minute load average, or None where the system does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def check_threads(threads: int | None, *, what: str = "threads") -> int | None:
    """``threads`` if it is None or a whole number from 1 to :data:`MAX_THREADS`; a ``ConfigError`` otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"{what} must be a whole number from 1 to {MAX_THREADS} (or left out for the default), "
                          f"got {threads!r}")  # fmt: skip
    return threads


def default_threads(*, load: float | None = None, ncores: int | None = None) -> int | None:
    """The intra-op thread count to use when none is given: 1 on an oversubscribed machine, else None (the
    runtime's default). ``load`` and ``ncores`` default to this machine's; ``OMP_NUM_THREADS`` in the environment
    means the user has chosen, and wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    load = load_average() if load is None else load
    ncores = cores() if ncores is None else ncores
    return 1 if load is not None and load > ncores else None


def resolve_threads(threads: int | None) -> int | None:
    """``threads`` checked, or the policy's default when it is None."""
    return check_threads(threads) if threads is not None else default_threads()


_chosen: contextvars.ContextVar[bool] = contextvars.ContextVar("deepslim_threads_chosen", default=False)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads and restore the previous count afterwards; yields the
    count in force. None means the policy's default -- or, inside an enclosing ``torch_threads`` block (evaluation
    inside a training loop that was given a count), the count already chosen."""
    chosen = resolve_threads(threads) if threads is not None or not _chosen.get() else None
    previous = torch.get_num_threads()
    token = _chosen.set(True)
    try:
        if chosen is None or chosen == previous:
            yield previous
            return
        torch.set_num_threads(chosen)
        try:
            yield chosen
        finally:
            torch.set_num_threads(previous)
    finally:
        _chosen.reset(token)
