"""Which process runs a trial, and whether it is gone: what a claimed trial records about its worker (machine,
pid, start time) and the check that lets the workers of one machine release a dead worker's trial at once, on any
storage (:func:`deepslim.search.storage.release_dead_trials`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def machine_id() -> str:
    """This machine: its host name and, on Linux, its boot id (two containers may share a host name)."""
    import socket

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of process ``pid`` from /proc, or None when it does not exist or
    /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def this_process() -> dict[str, Any]:
    """What a claimed trial records about the process running it (``deepslim.search.storage.HOLDER_ATTR``)."""
    state = process_state(os.getpid())
    return {"machine": machine_id(), "pid": os.getpid(), "start": state[1] if state else None}


def holder_dead(holder: Any, me: dict[str, Any]) -> bool:
    """Whether the process that ``holder`` names is known to be gone: on this machine and not running (a zombie
    counts as gone), or this very process (a trial it left running belongs to an interrupted earlier call)."""
    if not isinstance(holder, dict) or holder.get("machine") != me["machine"]:
        return False
    if holder.get("pid") == me["pid"] and holder.get("start") == me["start"]:
        return True
    state = process_state(int(holder.get("pid", -1)))
    if state is None:
        if Path("/proc/self/stat").is_file():
            return True  # /proc works here and has no such process
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return state[0] in ("Z", "X") or (holder.get("start") is not None and state[1] != holder["start"])
