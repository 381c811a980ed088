"""How much memory this process may use: what the profiler, the device profile of ``host`` and model loading check
before they allocate."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def available_memory_bytes() -> int | None:
    """Memory this process may still allocate: ``MemAvailable`` capped by the cgroup's limit; None if unknown."""
    free = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        free = int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int((_CGROUP / "memory.current").read_text())
            free = room if free is None else min(free, room)
    return None if free is None else max(free, 0)


def total_memory_bytes() -> int | None:
    """Physical memory, capped by this process's cgroup limit when it has one; None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    with contextlib.suppress(OSError, ValueError):
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    return total
