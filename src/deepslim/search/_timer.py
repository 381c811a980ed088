"""Time ONNX files in ONNX Runtime in a process of its own, interleaved: ``python PATH/TO/_timer.py``.

Reads ``{"files": [[path, [input shape]], ...], "threads": n, "rounds": r, "block": b}`` as JSON on stdin and
writes ``{"min_ms": [...], "p10_ms": [...], "median_ms": [...], "p90_ms": [...]}``: every file gets ``rounds``
blocks of ``block`` runs, the files taken in turn (the order reversed every other round), so that drift of a shared
machine hits all of them alike. Imports only numpy and onnxruntime.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def time_files(files: list[tuple[str, list[int]]], *, threads: int, rounds: int, block: int) -> dict[str, Any]:
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
    for r in range(rounds):
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
                        rounds=cmd.get("rounds", 5), block=cmd.get("block", 5))  # fmt: skip
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
