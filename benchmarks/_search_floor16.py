"""The node table's weight knee re-fitted offline (issue 14, session 16): no new timing. For each recorded floor
check (sessions 14–15: ``search_session14_floor_table*.json``, ``search_session15_floor*.json``; and session 16's),
the plane through dense with a knee is fitted on its 19 calibration points as the search fits it
(:meth:`NodeTable.calibrate_weights`) with the knee chosen in several ways, and judged on its 50 other policies
against the same measurements (each row's ``raw_ms`` and ``measured_ms``: the node sums and the re-timed chunks the
run itself judged). The ways: the in-sample RMS relative error (``rms``, sessions 14–15), the RMS and the worst error
of each point left out of the fit (``loo-rms``; ``loo-max``, session 16's default), a floor under the in-sample
choice at the largest weight size of the float calibration points (``floor+rms``: they are near the space's floor),
one knee shared by the other runs (``pooled``: the knee with the least sum of squared in-sample RMS over the other
runs' calibration points, each run with its own plane; a knee cached per machine would be chosen so), the plane in
all the MiB (``plane``) and fixed knees::

    python benchmarks/_search_floor16.py OUT.json RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deepslim.search import LatencyTable, kendall_tau  # noqa: E402
from deepslim.search.node_table import NodeTable  # noqa: E402

Triple = tuple[float, float, float]
GRID = 41  # knees tried, evenly from 0 to the largest weight size (as calibrate_weights(knee=True) tries)


def fitted(points: list[Triple], dense: Triple, knee: float | bool, knee_by: str = "rms") -> NodeTable | None:
    """The plane through dense with ``knee`` (a number, or True: chosen by ``knee_by``), or None when it fails."""
    nodes = NodeTable(LatencyTable(threads=1, cache_dir=None), timer=lambda n, w: [])  # the fit only
    ok = nodes.calibrate_weights(points, through=dense, knee=knee, knee_by=knee_by, min_points=3)
    return nodes if ok else None


def rel_errors(nodes: NodeTable, points: list[Triple]) -> np.ndarray:
    return np.array([nodes.predict(r, w) / m - 1 for r, w, m in points])


def left_out(points: list[Triple], dense: Triple, knee: float) -> np.ndarray | None:
    """Each point's relative error predicted by the plane (``knee`` fixed) fitted on the others."""
    out = []
    for i, (r, w, m) in enumerate(points):
        nodes = fitted(points[:i] + points[i + 1:], dense, knee)
        if nodes is None:
            return None
        out.append(nodes.predict(r, w) / m - 1)
    return np.array(out)


def least(knees: list[float], score: Callable[[float], float | None]) -> float:
    """The knee with the least score (ties: the least knee)."""
    best: tuple[float, float] | None = None
    for k in knees:
        s = score(k)
        if s is not None and (best is None or s < best[0] - 1e-9):
            best = (s, k)
    if best is None:
        raise ValueError("no knee fits")
    return best[1]


def rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e**2)))


class Run:
    """One recorded check: its dense triple, calibration triples, judged rows and the knees tried."""

    def __init__(self, path: str) -> None:
        doc = json.loads(Path(path).read_text())
        d = doc["dense"]
        self.name = Path(path).stem
        self.dense = (d["raw_ms"], d["weight_mb"], d["measured_ms"])
        calib = [r for r in doc["rows"] if r["role"] == "calibration"]
        self.points = [(r["raw_ms"], r["weight_mb"], r["measured_ms"]) for r in calib]
        self.float_top = max(r["weight_mb"] for r in calib if r["int8_layers"] == 0)
        self.judged = [r for r in doc["rows"] if r["role"] != "calibration"]
        top = max(w for _, w, _ in self.points + [self.dense])
        self.knees = [float(k) for k in np.linspace(0.0, top, GRID)]

    def in_sample(self, k: float) -> float | None:
        nodes = fitted(self.points, self.dense, k)
        return None if nodes is None or nodes.scale <= 0 else rms(rel_errors(nodes, self.points))

    def judge(self, knee: float) -> dict[str, Any]:
        nodes = fitted(self.points, self.dense, knee)
        assert nodes is not None
        pred = [nodes.predict(r["raw_ms"], r["weight_mb"]) for r in self.judged]
        meas = [r["measured_ms"] for r in self.judged]
        e = np.abs(np.array(pred) / np.array(meas) - 1)
        return {"knee_mib": knee, "within_10pct_count": int((e <= 0.1).sum()), "points": len(e),
                "p50": float(np.percentile(e, 50)), "p90": float(np.percentile(e, 90)),
                "kendall_tau": kendall_tau(pred, meas)}  # fmt: skip


def choices(run: Run, others: list[Run]) -> dict[str, float]:
    """The knee each way chooses on ``run``'s calibration points (``others``: the runs a shared knee pools)."""

    def loo(stat: Callable[[np.ndarray], float]) -> Callable[[float], float | None]:
        def score(k: float) -> float | None:
            e = left_out(run.points, run.dense, k)
            return None if e is None else stat(np.abs(e))

        return score

    def pooled(k: float) -> float | None:
        got = [o.in_sample(k) for o in others]
        return None if any(g is None for g in got) else float(sum(g**2 for g in got if g is not None))

    out = {"rms": least(run.knees, run.in_sample), "loo-rms": least(run.knees, loo(rms)),
           "loo-max": least(run.knees, loo(lambda e: float(e.max()) + 1e-6 * rms(e))),
           "floor+rms": least([k for k in run.knees if k >= run.float_top - 1e-12], run.in_sample),
           "pooled": least(run.knees, pooled), "plane": 0.0}  # fmt: skip
    library = fitted(run.points, run.dense, True, "loo-max")
    assert library is not None and abs(library.weight_knee - out["loo-max"]) < 1e-9  # the search's choice, the same
    for k in (0.4, 0.5, 0.6, 0.75):
        out[f"fixed {k}"] = k
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    runs = [Run(p) for p in args.runs]
    table: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for way, knee in choices(run, [o for o in runs if o is not run]).items():
            table.setdefault(way, []).append({"run": run.name, **run.judge(knee)})
    print("way".ljust(10), "  ".join(r.name[-18:].rjust(18) for r in runs), " min  mean")
    for way, rows in table.items():
        n = [r["within_10pct_count"] for r in rows]
        cells = "  ".join(f"{r['knee_mib']:.2f}: {r['within_10pct_count']:2d} p90 {100 * r['p90']:4.1f}".rjust(18)
                          for r in rows)  # fmt: skip
        print(way.ljust(10), cells, f"{min(n):4d} {np.mean(n):5.1f}")
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "runs": args.runs, "ways": table}, indent=1))


if __name__ == "__main__":
    main()
