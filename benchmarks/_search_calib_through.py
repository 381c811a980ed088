"""Offline, on ``_search_calib11.py``'s measurements: the node table's weight-bytes plane fitted freely and through the
dense model's point (``NodeTable.calibrate_weights(through=...)``), judged on the held-out policies in milliseconds
and as ratios to dense (predicted dense for the free fit: the frame a relative budget is taken in).

    python benchmarks/_search_calib_through.py benchmarks/results/search_session11_table_calibrated.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from deepslim.search.latency import LatencyTable, kendall_tau
from deepslim.search.node_table import NodeTable


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    e = np.abs(predicted / measured - 1)
    return {"p50": float(np.percentile(e, 50)), "p90": float(np.percentile(e, 90)),
            "within_10pct": float((e <= 0.1).mean())}


def judge(nodes: NodeTable, judged: list[dict[str, Any]], dense: dict[str, Any]) -> dict[str, Any]:
    y = np.array([r["measured_ms"] for r in judged])
    p = np.array([nodes.predict(r["raw_ms"], r["weight_mb"]) for r in judged])
    dense_p = nodes.predict(dense["raw_ms"], dense["weight_mb"])
    return {"scale": nodes.scale, "ms_per_mib": nodes.weight_coef, "offset_ms": nodes.offset,
            "dense_predicted_ms": dense_p, "dense_measured_ms": dense["measured_ms"], "ms": errors(p, y),
            "ratio_to_dense": errors(p / dense_p, y / dense["measured_ms"]),
            "kendall_tau": kendall_tau(list(p), list(y))}


def main() -> None:
    with open(sys.argv[1]) as f:
        data = json.load(f)
    cal = [r for r in data["rows"] if r["role"] == "calibration"]
    judged = [r for r in data["rows"] if r["role"] != "calibration"]
    dense = data["dense"]
    points = [(r["raw_ms"], r["weight_mb"], r["measured_ms"]) for r in cal]
    out = {}
    at = (dense["raw_ms"], dense["weight_mb"], dense["measured_ms"])
    for name, through in (("free", None), ("through_dense", at)):
        nodes = NodeTable(LatencyTable(), timer=lambda nodes, work: [])  # only the fit is used: nothing is timed
        assert nodes.calibrate_weights(points, through=through)
        out[name] = judge(nodes, judged, dense)
    print(json.dumps({"calibration_points": len(cal), "judged": len(judged), **out}, indent=2))


if __name__ == "__main__":
    main()
