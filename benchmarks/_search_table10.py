"""What limits the layer/node table's absolute error on MobileNetV2 0.5 at 28² (issue 14, session 10): an offline
look at session 7's 50-policy check (benchmarks/results/search_session7_table_mobilenet_v2.json; nothing is timed
here). For each policy it takes the node table's plain sum (the anchored prediction over the anchor's scale), the
count of int8 layers and of precision changes along the network, and the MAC count, and asks how well a line in
those terms, fitted to some policies, predicts the others (random splits, seeded) — a ceiling for what calibrating
the sums could reach, set beside the ±10 % target::

    python benchmarks/_search_table10.py benchmarks/results/search_session7_table_mobilenet_v2.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def features(row: dict, scale: float) -> dict[str, float]:
    """The plain node sum (ms), int8 layers, precision changes between consecutive layers, MACs (millions)."""
    flags = list(row["policy"]["int8"].values())  # module order: the network's order for MobileNetV2
    return {"raw_ms": row["node_predicted_ms"] / scale, "int8_layers": float(sum(flags)),
            "changes": float(sum(a != b for a, b in zip(flags, flags[1:], strict=False))),
            "macs_m": row["macs"] / 1e6}  # fmt: skip


def errors(pred: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred / measured - 1)
    return {"p50": float(np.percentile(rel, 50)), "p90": float(np.percentile(rel, 90)),
            "within_10pct": float(np.mean(rel <= 0.10))}  # fmt: skip


def held_out(x: np.ndarray, y: np.ndarray, n_fit: int, splits: int = 200, seed: int = 0) -> dict[str, float]:
    """A least-squares fit on ``n_fit`` random policies (+ intercept), its relative errors on the rest, averaged over
    ``splits`` random splits."""
    rng = np.random.default_rng(seed)
    found = []
    a = np.column_stack([x, np.ones(len(y))])
    for _ in range(splits):
        idx = rng.permutation(len(y))
        fit, rest = idx[:n_fit], idx[n_fit:]
        coef, *_ = np.linalg.lstsq(a[fit], y[fit], rcond=None)
        found.append(errors(a[rest] @ coef, y[rest]))
    return {k: float(np.mean([f[k] for f in found])) for k in found[0]}


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    lt = doc["models"]["mobilenet_v2"]["latency_table"]
    scale = lt["calibration"]["node_scale"]
    rows = lt["rows"]
    feats = [features(r, scale) for r in rows]
    y = np.array([r["measured_ms"] for r in rows])
    raw = np.array([f["raw_ms"] for f in feats])
    out: dict = {"source": sys.argv[1], "policies": len(rows), "measured_ms": [float(y.min()), float(y.max())],
                 "ratio_measured_over_raw": [float((y / raw).min()), float((y / raw).max())],
                 "plain_sums": errors(raw, y), "fits": {}}  # fmt: skip
    sets = {"raw": ["raw_ms"], "raw+int8": ["raw_ms", "int8_layers"], "raw+changes": ["raw_ms", "changes"],
            "raw+int8+changes": ["raw_ms", "int8_layers", "changes"], "macs+int8+changes": ["macs_m", "int8_layers",
                                                                                           "changes"]}  # fmt: skip
    for name, cols in sets.items():
        x = np.array([[f[c] for c in cols] for f in feats])
        out["fits"][name] = {f"fit_on_{n}": held_out(x, y, n) for n in (10, 25)}
        coef, *_ = np.linalg.lstsq(np.column_stack([x, np.ones(len(y))]), y, rcond=None)
        out["fits"][name]["all_50_in_sample"] = errors(np.column_stack([x, np.ones(len(y))]) @ coef, y)
        out["fits"][name]["coefficients"] = dict(zip([*cols, "intercept_ms"], map(float, coef), strict=True))
    int8 = np.array([f["int8_layers"] for f in feats])
    out["float_only_policies"] = int((int8 == 0).sum())
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
