"""What every benchmark's JSON starts with: its name, the date, and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import date

import torch


def result_header(name: str, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"benchmark": name, "date": date.today().isoformat(), "threads": threads,
            "machine": f"{cpu}, {threads} threads, torch {torch.__version__}"}  # fmt: skip


def write_result(out: dict, path: os.PathLike | None) -> None:
    """Close a benchmark's JSON with the load average after the run, print it, and write it to ``path`` if given."""
    out["load_average_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
