"""Time ONNX files in ONNX Runtime (1 thread) in a process of its own, interleaved, by wall clock and by the calling
thread's CPU time: ``python benchmarks/_cpu_timer.py`` (JSON on stdin, JSON on stdout).

Why: on a machine shared by several single-thread jobs (load 5-7 on 2 cores) a 3 ms model run is preempted most of
the time, and even the minimum of 30 wall-clock runs moved by up to 2x between two identical files (session 11).
With one intra-op thread ONNX Runtime computes on the calling thread, so that thread's CPU time leaves the time
spent preempted out (cache refills after a preemption stay in). Reads ``{"files": [[path, [shape]], ...],
"rounds": r, "block": b, "order": [...], "copies": c}``; writes per file ``min_ms``/``median_ms`` (wall),
``cpu_min_ms``/``cpu_median_ms`` and ``cpu_rounds_ms`` (per round the mean over the file's sessions of each one's
fastest run, for ratios paired by round): ``rounds`` blocks of ``block`` runs per session, the files in turn, the
order reversed every other round. Identical files ran up to 10 % apart by their sessions (where each one's buffers
landed): ``copies`` sessions per file average that out, created in ``order`` (alternate it between runs).
Imports only numpy and onnxruntime.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def time_files(files: list[tuple[str, list[int]]], rounds: int, block: int,
               order: list[int] | None = None, copies: int = 1) -> dict[str, Any]:  # fmt: skip
    import numpy as np
    import onnxruntime as ort

    made: dict[int, Any] = {}
    for k in [k for _ in range(copies) for k in (order or range(len(files)))]:
        path, shape = files[k]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(3):  # warm-up
            sess.run(None, feed)
        made.setdefault(k, []).append((sess, feed))
    sessions = [made[k] for k in range(len(files))]
    wall: list[list[float]] = [[] for _ in files]
    cpu: list[list[float]] = [[] for _ in files]
    per_round: list[list[float]] = [[] for _ in files]
    for r in range(rounds):
        for i in (range(len(files)) if r % 2 == 0 else reversed(range(len(files)))):
            fastest = []
            for sess, feed in sessions[i]:
                for _ in range(block):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    sess.run(None, feed)
                    cpu[i].append((time.thread_time() - c0) * 1e3)
                    wall[i].append((time.perf_counter() - w0) * 1e3)
                fastest.append(min(cpu[i][-block:]))
            per_round[i].append(float(np.mean(fastest)))
    return {"min_ms": [min(t) for t in wall], "median_ms": [float(np.median(t)) for t in wall],
            "cpu_min_ms": [min(t) for t in cpu], "cpu_median_ms": [float(np.median(t)) for t in cpu],
            "cpu_rounds_ms": per_round}  # fmt: skip


def main() -> None:
    cmd = json.load(sys.stdin)
    json.dump(time_files([(p, s) for p, s in cmd["files"]], cmd.get("rounds", 10), cmd.get("block", 3),
                         cmd.get("order"), cmd.get("copies", 1)), sys.stdout)  # fmt: skip


if __name__ == "__main__":
    main()
