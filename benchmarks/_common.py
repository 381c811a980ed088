"""What every benchmark's JSON starts with: its name, the date, the machine, its threads and the load average."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import torch

from deepslim.analysis.calibrate import cpu_name


def pick_threads(requested: int | None = None) -> int:
    """``requested``, or by default 2 intra-op threads — 1 when the machine's load is above its core count (two
    threads per process collapse ~10x when the cores are shared)."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else min(2, cores)


def training_threads(requested: int | None = None) -> int:
    """``requested``, or 1: the intra-op thread count of benchmarks that train. A trained model depends on it (the
    float sums run in another order: one epoch of ResNet-20 gives other weights at 1 and 2 threads, and 15 + 5
    epochs on one seed moved the shapes rows of pruning_accuracy by up to 6 points, BENCHMARKS.md session 8), so it
    is fixed — not chosen by the machine's load as :func:`pick_threads` does — and ``make bench`` gives the same
    numbers whatever else runs. 1 is also the fast choice on shared cores."""
    return 1 if requested is None else requested


def result_header(name: str, threads: int = 2) -> dict[str, Any]:
    """Set torch's intra-op threads and return the JSON's first fields, the load average before the run included."""
    torch.set_num_threads(threads)
    cpu = cpu_name()
    return {"benchmark": name, "date": date.today().isoformat(), "threads": threads,
            "machine": f"{cpu}, {threads} threads, torch {torch.__version__}",
            "load_average_before": os.getloadavg()}  # fmt: skip


def save_json(out: dict[str, Any], path: os.PathLike[str] | str | None) -> None:
    """Write ``out`` to ``path`` (if given) as it stands, with the load average now: a long run never loses it all."""
    if path:
        out["load_average_now"] = os.getloadavg()
        with open(path, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")


def write_json_atomic(out: dict[str, Any], path: os.PathLike[str] | str) -> None:
    """Write ``out`` to ``path`` through a temporary file renamed over it (a killed run never leaves half a JSON),
    creating the folder; values JSON cannot hold are written as their ``str``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(target)


def write_result(out: dict[str, Any], path: os.PathLike[str] | str | None, *, echo: bool = True) -> None:
    """Close a benchmark's JSON with the load average after the run, print it (unless not ``echo``: the benchmark
    printed its own table), and write it to ``path`` if given."""
    out.pop("load_average_now", None)
    out["load_average_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    if echo:
        print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
