"""Time ONNX files in ONNX Runtime in a process of its own, interleaved: ``python PATH/TO/_timer.py``.

Reads ``{"files": [[path, [input shape]], ...], "threads": n, "rounds": r, "block": b, "window_s": w}`` as JSON on
stdin and writes ``{"min_ms": [...], "p10_ms": [...], "median_ms": [...], "p90_ms": [...]}``: every file gets
``rounds`` blocks of ``block`` runs, the files taken in turn (the order reversed every other round), so that drift of
a shared machine hits all of them alike, and the rounds spread over at least ``w`` seconds (idle between them).

Why the window: on the shared 2-core machine (session 14) every model ran 1.3–1.7x slower for stretches of seconds
(whatever shares the cores), and not by one factor for all (a small float MobileNetV2 1.6x, the dense one 1.35x,
so a ratio to dense moved 10–25 %): a timing of ~1 s fell wholly inside or outside such a stretch, and its minimum
was in either frame. Rounds spread over a few seconds let the minimum of every file come from the undisturbed
stretches. Imports only numpy and onnxruntime.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def pace(start: float, r: int, rounds: int, window_s: float) -> None:
    """Before round ``r`` of ``rounds``: sleep until its share of ``window_s`` seconds (counted from ``start``) has
    passed, so that the last round starts ``window_s`` after the first."""
    if window_s > 0 and r > 0 and rounds > 1:
        time.sleep(max(0.0, start + window_s * r / (rounds - 1) - time.perf_counter()))


def time_files(files: list[tuple[str, list[int]]], *, threads: int, rounds: int, block: int,
               window_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    import numpy as np
    import onnxruntime as ort

    runs = []
    for path, shape in files:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(3):  # warm-up
            sess.run(None, feed)
        runs.append((sess, feed))
    times: list[list[float]] = [[] for _ in files]
    start = time.perf_counter()
    for r in range(rounds):
        pace(start, r, rounds, window_s)
        order = range(len(files)) if r % 2 == 0 else reversed(range(len(files)))
        for i in order:
            sess, feed = runs[i]
            for _ in range(block):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[i].append((time.perf_counter() - t0) * 1e3)
    qs = [np.percentile(t, [0, 10, 50, 90]) for t in times]
    return {"min_ms": [float(q[0]) for q in qs], "p10_ms": [float(q[1]) for q in qs],
            "median_ms": [float(q[2]) for q in qs], "p90_ms": [float(q[3]) for q in qs]}  # fmt: skip


def main() -> None:
    cmd = json.load(sys.stdin)
    result = time_files([(p, s) for p, s in cmd["files"]], threads=cmd.get("threads", 1),
                        rounds=cmd.get("rounds", 5), block=cmd.get("block", 5),
                        window_s=float(cmd.get("window_s", 0.0)))  # fmt: skip
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
