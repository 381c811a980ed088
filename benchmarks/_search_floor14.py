"""The node table near the floor, session 14: session 13's 69 MobileNetV2 policies (19 calibration + 50 judged, read
from its JSON so that the set is the same), each node sum taken twice on fresh caches — the session-14 node table
(IO-bound node timings spread over a window, plus the measured cost of one more node in a graph per node) and the
session-13 one (its ``_node_timer.py`` from git, plain ``run``, no per-node term) — and each chunk timed end to end
twice in one process after the other: rounds spread over 3 s (session 14's timer) and unspread (session 13's). Every
predictor (the weight plane through dense, fitted on the 19 calibration points as the search fits it) is judged
against both measurements, so the old and new tables are compared on the same run. ``benchmarks/_search_floor12.py``
holds the model, the export and the judging::

    OMP_NUM_THREADS=1 python benchmarks/_search_floor14.py OUT.json CACHE_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import deepslim as ds  # noqa: E402
from _search_floor12 import build, judge, record_chunk, save, summary  # noqa: E402
from deepslim.analysis import profile  # noqa: E402
from deepslim.errors import ExportError  # noqa: E402
from deepslim.export import export_onnx  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace  # noqa: E402
from deepslim.search.latency import _run_timer  # noqa: E402
from deepslim.search.node_table import GRAPH_NODE, KNEE_BY, Node, NodeTable, weight_mb  # noqa: E402
from deepslim.search.space import Policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402

OLD_TIMER_COMMIT = "5b9bd9b"  # session 13's last commit: its _node_timer.py
POLICIES = "benchmarks/results/search_session13_floor_table_quiet.json"
WINDOW_S = 3.0


def old_node_timer(script: str) -> Any:
    """Session 13's node timer (plain ``run``, rounds unspread) as a NodeTable timer."""

    def timer(nodes: Sequence[Node], work: str) -> list[float]:
        cmd = {"cmd": "time", "files": [[n["file"], n["feeds"]] for n in nodes], "threads": 1, "rounds": 5,
               "block": 5, "work": work}  # fmt: skip
        proc = subprocess.run([sys.executable, script], input=json.dumps(cmd), capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)  # fmt: skip
        doc = json.loads(proc.stdout)
        return [max(0.0, t - doc["overhead_ms"]) for t in doc["min_ms"]]

    return timer


def view(rows: list[dict[str, Any]], raw: str, measured: str) -> list[dict[str, Any]]:
    """``rows`` with ``raw_ms`` / ``measured_ms`` read from the given fields (for floor12's summary)."""
    return [{**r, "raw_ms": r[raw], "measured_ms": r[measured]} for r in rows]


def knee_summary(rows: list[dict[str, Any]], dense: dict[str, Any], knee_by: str = KNEE_BY) -> dict[str, Any]:
    """The weight term with a knee (``calibrate_weights(..., knee=True, knee_by=...)``; the search's choice by
    default), fitted through dense on the calibration points as floor12's summary fits the plane, judged on the
    rest."""
    calib = [r for r in rows if r["role"] == "calibration"]
    judged = [r for r in rows if r["role"] != "calibration"]
    nodes = NodeTable(LatencyTable(threads=1, cache_dir=None), timer=lambda n, w: [])  # the fit only
    at = (dense["raw_ms"], dense["weight_mb"], dense["measured_ms"])
    if not judged or not nodes.calibrate_weights([(r["raw_ms"], r["weight_mb"], r["measured_ms"]) for r in calib],
                                                 through=at, knee=True, knee_by=knee_by):  # fmt: skip
        return {}
    return {"knee_by": knee_by, "scale": nodes.scale, "ms_per_mib": nodes.weight_coef, "knee_mib": nodes.weight_knee,
            "offset_ms": nodes.offset, **judge([nodes.predict(r["raw_ms"], r["weight_mb"]) for r in judged],
                                               dense["measured_ms"], judged, dense["measured_ms"])}  # fmt: skip


def summaries(rows: list[dict[str, Any]], dense: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, raw in (("table_session14", "raw_ms"), ("table_session13", "raw_old_ms"),
                      ("table_session14_no_node_term", "raw_entries_ms")):  # fmt: skip
        for truth, meas in (("window", "measured_ms"), ("unspread", "measured_unspread_ms")):
            out[f"{name}__vs_{truth}"] = summary(view(rows, raw, meas), view([dense], raw, meas)[0])
            out[f"{name}__vs_{truth}"]["knee"] = knee_summary(view(rows, raw, meas), view([dense], raw, meas)[0])
    return out


def parser() -> argparse.ArgumentParser:
    """The arguments session 14's and 15's checks share: OUT.json, CACHE_DIR, --chunk, --limit."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("cache")
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="only the first N policies (a smoke run)")
    return ap


def setup(limit: int | None) -> tuple[Any, torch.nn.Module, SearchSpace, str, list[tuple[str, float, Policy]]]:
    """The data, the dense MobileNetV2 0.5 (random weights from seed 0), its prune + int8 space, the floor policy's
    text and the first ``limit`` of session 13's policies as (role, level, policy)."""
    full = ds.load_data("fashion-mnist", seed=0, calib_size=256)
    torch.manual_seed(0)  # random weights, the same each run (latency does not depend on them; int8 parity does)
    dense = PRETRAINED_ARCH["mobilenet_v2"]().eval()
    space = SearchSpace.from_model(dense, full.example_input, round_to=8, kinds=("prune", "int8"))
    rows = json.loads(Path(POLICIES).read_text())["rows"]
    order = [(r["role"], r["level"], Policy.from_dict(r["policy"])) for r in rows][:limit]
    return full, dense, space, str(space.smallest(False).to_dict()), order


def main() -> None:
    ap = parser()
    ap.add_argument("--window", type=float, default=WINDOW_S, help="seconds the end-to-end timing's rounds spread over")
    args = ap.parse_args()
    t0 = time.perf_counter()
    full, dense, space, smallest, order = setup(args.limit)
    x = full.example_input
    new = NodeTable(LatencyTable(threads=1, cache_dir=Path(args.cache) / "session14"))
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "weights": "random initial weights", "policies": POLICIES,
                           "model": "mobilenet_v2 0.5, 28x28, prune+int8 space, round_to 8", "window_s": args.window,
                           "old_node_timer": f"{OLD_TIMER_COMMIT}:src/deepslim/search/_node_timer.py",
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
                           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        old_script = Path(work) / "old_node_timer.py"
        old_script.write_text(subprocess.run(["git", "show", f"{OLD_TIMER_COMMIT}:src/deepslim/search/_node_timer.py"],
                                             capture_output=True, text=True, check=True).stdout)  # fmt: skip
        old = NodeTable(LatencyTable(threads=1, cache_dir=Path(args.cache) / "session13"),
                        timer=old_node_timer(str(old_script)))  # fmt: skip

        def sums(path: Path) -> dict[str, Any]:
            raw, n = new.raw_file(path, list(x.shape)), new.last_nodes
            return {"raw_ms": raw, "raw_entries_ms": raw - new.table.entries[GRAPH_NODE] * n, "nodes": n,
                    "raw_old_ms": old.raw_file(path, list(x.shape))}  # fmt: skip

        dense_file = Path(work) / "dense.onnx"
        export_onnx(dense, dense_file, example_input=x)
        doc["dense"] = dense_row = {**sums(dense_file), "weight_mb": weight_mb(dense), "macs": profile(dense, x).macs}
        doc["graph_node_ms"] = new.table.entries[GRAPH_NODE]
        for start in range(0, len(order), args.chunk):
            built = []
            for k, (role, level, policy) in enumerate(order[start:start + args.chunk]):
                path = Path(work) / f"m{k}.onnx"
                try:
                    macs, mb = build(dense, space, policy, x, full.calib, path, True)
                except ExportError as exc:  # random weights: an int8 policy may fail the export's parity check
                    doc.setdefault("skipped", []).append({"role": role, "policy": policy.to_dict(), "why": str(exc)})
                    continue
                built.append((str(path), {"role": role, "level": level, "policy": policy.to_dict(), "macs": macs,
                                          **sums(path), "weight_mb": mb, "floor": str(policy.to_dict()) == smallest,
                                          "channels": sum(policy.keep.values()),
                                          "int8_layers": sum(policy.int8.values())}))  # fmt: skip
            files = [(str(dense_file), list(x.shape))] + [(p, list(x.shape)) for p, _ in built]
            spread = _run_timer(files, 1, 10, 5, args.window)
            unspread = _run_timer(files, 1, 10, 5, 0.0)
            record_chunk(doc, [row for _, row in built], start // args.chunk, dense_row,
                         {"": spread, "_unspread": unspread})  # fmt: skip
            save(doc, args.out, t0, start // args.chunk, summaries(doc["rows"], dense_row))


if __name__ == "__main__":
    main()
