"""The node table's weight-bytes plane near the space's floor (issue 14, session 12): MobileNetV2 0.5 at 28², the
prune + int8 space. The calibration policies are exactly those a search with ``calibration_policies=n_extra``
measures (:func:`deepslim.search.engine.calibration_set`: dense, the floor, levels crowded toward it); 50 fresh
policies are judged — ``n_spread`` at evenly spaced levels over the whole space (:meth:`SearchSpace.sample_at`, int8
share drawn per policy) and ``n_floor`` float policies sampled near the floor (levels 0–0.2, every layer float: the
fastest corner, 0.25–0.4x of dense), with seeds no earlier check drew from. The plane is fitted through the dense
model's measured point as the search fits it (:meth:`NodeTable.calibrate_weights`, ``through``) and judged in
milliseconds and as ratios to dense, the dense anchor and the MAC count beside it. Latency does not depend on the
weights: random initial weights unless ``--pretrained`` is given (int8 fidelity check waived for them).

Each model is exported once with the toolkit's exporter: the node table splits that file, the timer times it. Timed in
chunks with the dense model (one timer process per chunk, 10 rounds × 5 runs); a model's measured ms = dense's ms in
the first chunk × its ratio to dense in its own chunk. The JSON is rewritten after every chunk::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_floor12.py OUT.json CACHE_DIR [--n-extra 13]

Timed back to back (``window_s=0.0`` pinned, for the end-to-end timings and the table's entries): the protocol of
the recorded numbers; session 14 spread the tables' rounds over a window by default; its node timer also binds
inputs and outputs (IO binding), which this script does not undo (the cache key changed with it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from deepslim._io import atomic_path  # noqa: E402
from deepslim.analysis import profile  # noqa: E402
from deepslim.export import export_onnx  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace, kendall_tau  # noqa: E402
from deepslim.search.engine import calibration_set  # noqa: E402
from deepslim.search.latency import _run_timer  # noqa: E402
from deepslim.search.node_table import NodeTable, weight_mb  # noqa: E402
from deepslim.search.space import prune_policy, quantize_policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402

NEAR_FLOOR = (0.25, 0.40)  # ratios to dense the brief calls "near the floor"


def errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    e = np.abs(pred / meas - 1)
    if len(e) == 0:
        return {"points": 0}
    return {"points": len(e), "p50": float(np.percentile(e, 50)), "p90": float(np.percentile(e, 90)),
            "within_10pct": float((e <= 0.1).mean()), "within_10pct_count": int((e <= 0.1).sum()),
            "max": float(e.max())}  # fmt: skip


def judge(pred: list[float], dense_pred: float, rows: list[dict[str, Any]], dense_ms: float) -> dict[str, Any]:
    """A predictor's error on ``rows`` in ms and as ratios to dense (the predictor's own dense), τ, and the same on
    the rows near the floor."""
    p, y = np.array(pred), np.array([r["measured_ms"] for r in rows])
    near = np.array([NEAR_FLOOR[0] <= r["measured_ms"] / dense_ms <= NEAR_FLOOR[1] for r in rows], dtype=bool)
    out = {"ms": errors(p, y), "ratio_to_dense": errors(p / dense_pred, y / dense_ms),
           "near_floor_ratio_to_dense": errors(p[near] / dense_pred, y[near] / dense_ms),
           "kendall_tau": kendall_tau(list(p), list(y)) if len(p) > 1 else None}  # fmt: skip
    return out


def summary(rows: list[dict[str, Any]], dense: dict[str, Any]) -> dict[str, Any]:
    calib = [r for r in rows if r["role"] == "calibration"]
    judged = [r for r in rows if r["role"] != "calibration"]
    out: dict[str, Any] = {"calibration_points": len(calib), "judged_points": len(judged)}
    if not judged or "measured_ms" not in dense:
        return out
    dense_ms = dense["measured_ms"]
    ratios = [r["measured_ms"] / dense_ms for r in judged]
    out["judged_ratio_range"] = [min(ratios), max(ratios)]
    out["judged_near_floor"] = sum(NEAR_FLOOR[0] <= q <= NEAR_FLOOR[1] for q in ratios)
    nodes = NodeTable(LatencyTable(threads=1, cache_dir=None), timer=lambda n, w: [])  # the fit only
    at = (dense["raw_ms"], dense["weight_mb"], dense_ms)
    if nodes.calibrate_weights([(r["raw_ms"], r["weight_mb"], r["measured_ms"]) for r in calib], through=at):
        out["through_dense"] = {"scale": nodes.scale, "ms_per_mib": nodes.weight_coef, "offset_ms": nodes.offset,
                                **judge([nodes.predict(r["raw_ms"], r["weight_mb"]) for r in judged], dense_ms,
                                        judged, dense_ms)}  # fmt: skip
        floor = [r for r in calib if r.get("floor")]
        out["through_dense"]["floor_predicted_vs_measured"] = [
            [nodes.predict(r["raw_ms"], r["weight_mb"]) / dense_ms, r["measured_ms"] / dense_ms] for r in floor]
    anchor = dense_ms / dense["raw_ms"]
    out["dense_anchor"] = judge([anchor * r["raw_ms"] for r in judged], dense_ms, judged, dense_ms)
    out["mac_proxy_kendall_tau"] = kendall_tau([r["macs"] for r in judged], [r["measured_ms"] for r in judged])
    return out


def save(doc: dict[str, Any], out: str, t0: float, chunk: int, summary_doc: dict[str, Any]) -> None:
    """After a chunk: the load, the seconds so far and ``summary_doc`` into ``doc``, written to ``out`` whole."""
    doc["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    doc["seconds"] = time.perf_counter() - t0
    doc["summary"] = summary_doc
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1))
    print(time.strftime("%H:%M:%S"), f"chunk {chunk}: {len(doc['rows'])} rows", file=sys.stderr, flush=True)


def build(dense: torch.nn.Module, space: SearchSpace, policy: Any, x: Any, calib: Any,
          path: Path, low_fidelity: bool) -> tuple[int, float]:  # fmt: skip
    net = prune_policy(dense, space, policy, example_input=x, calib_data=calib)
    macs = profile(net, x).macs
    net = quantize_policy(net, space, policy, calib_data=calib, accept_low_fidelity=low_fidelity).eval()
    export_onnx(net, path, example_input=x)
    return macs, weight_mb(net)


def policies(space: SearchSpace, n_extra: int, n_spread: int, n_floor: int) -> list[tuple[str, float, Any]]:
    """(role, level, policy): the search's calibration set, then the judged ones, shuffled within each role (partial
    results spread over the levels)."""
    calib = [("calibration", float("nan"), p) for p in calibration_set(space, n_extra)[1:]]  # dense is the reference
    rng = random.Random("session12-floor-judged")
    spread = [("judged", i / (n_spread - 1), space.sample_at(rng, i / (n_spread - 1))) for i in range(n_spread)]
    floor = []
    for _ in range(n_floor):
        level = rng.uniform(0.0, 0.2)
        p = space.sample_at(rng, level)
        floor.append(("judged_floor", level, replace(p, int8={n: False for n in p.int8})))
    judged = spread + floor
    rng.shuffle(judged)
    return calib + judged


def record_chunk(doc: dict[str, Any], rows: list[dict[str, Any]], chunk: int, dense_row: dict[str, Any],
                 timings: dict[str, list[float]]) -> None:
    """One chunk's end-to-end times into its ``rows``, then the rows into ``doc``. ``timings``: per protocol suffix
    (``""``, ``"_unspread"``), the times of dense then ``rows``' models: the chunk's dense time, each model's time,
    its ratio to that dense time and that ratio in the first chunk's frame (dense's ``measured{suffix}_ms``, set by
    the first chunk)."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    for suffix, times in timings.items():
        dense_row.setdefault(f"measured{suffix}_ms", times[0])
        for row, t in zip(rows, times[1:], strict=True):
            row.update({f"chunk_dense{suffix}_ms": times[0], f"absolute{suffix}_ms": t,
                        f"ratio{suffix}": t / times[0],
                        f"measured{suffix}_ms": dense_row[f"measured{suffix}_ms"] * t / times[0]})  # fmt: skip
    for row in rows:
        row.update(chunk=chunk, loadavg=load)
        doc["rows"].append(row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("cache")
    ap.add_argument("--n-extra", type=int, default=13)
    ap.add_argument("--n-spread", type=int, default=36)
    ap.add_argument("--n-floor", type=int, default=14)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--resume", action="store_true", help="keep OUT.json's rows and measure the policies after them")
    args = ap.parse_args()
    t0 = time.perf_counter()
    full = ds.load_data("fashion-mnist", seed=0, calib_size=256)
    dense = PRETRAINED_ARCH["mobilenet_v2"]()
    if args.pretrained:
        dense.load_state_dict(torch.load(args.pretrained, weights_only=True))
    dense.eval()
    x = full.example_input
    space = SearchSpace.from_model(dense, x, round_to=8, kinds=("prune", "int8"))
    nodes = NodeTable(LatencyTable(threads=1, cache_dir=args.cache, window_s=0.0))
    order = policies(space, args.n_extra, args.n_spread, args.n_floor)
    smallest = str(space.smallest(False).to_dict())
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "weights": args.pretrained or "random initial weights",
                           "model": "mobilenet_v2 0.5, 28x28, prune+int8 space, round_to 8",
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
                           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rows": []}  # fmt: skip
    done = 0
    if args.resume:  # the policies are drawn deterministically: the first len(rows) of them are measured
        old = json.loads(Path(args.out).read_text())
        doc["rows"], done = old["rows"], len(old["rows"])
        doc["resumed"] = old.get("resumed", []) + [{"at_row": done, "utc": doc["started_utc"],
                                                     "loadavg": doc["loadavg_before"]}]  # fmt: skip
        doc["started_utc"], doc["loadavg_before"] = old["started_utc"], old["loadavg_before"]
    with tempfile.TemporaryDirectory() as work:
        shape = list(x.shape)
        dense_file = Path(work) / "dense.onnx"
        export_onnx(dense, dense_file, example_input=x)
        doc["dense"] = dense_row = {"raw_ms": nodes.raw_file(dense_file, shape), "weight_mb": weight_mb(dense),
                                    "macs": profile(dense, x).macs}  # fmt: skip
        if args.resume:
            dense_row["measured_ms"] = old["dense"]["measured_ms"]  # the frame: dense's ms in the first chunk
        for start in range(done, len(order), args.chunk):
            built = []
            for k, (role, level, policy) in enumerate(order[start:start + args.chunk]):
                path = Path(work) / f"m{k}.onnx"
                macs, mb = build(dense, space, policy, x, full.calib, path, not args.pretrained)
                built.append((str(path), {"role": role, "level": level, "policy": policy.to_dict(), "macs": macs,
                                          "raw_ms": nodes.raw_file(path, shape), "weight_mb": mb,
                                          "floor": str(policy.to_dict()) == smallest,
                                          "channels": sum(policy.keep.values()),
                                          "int8_layers": sum(policy.int8.values())}))  # fmt: skip
            times = _run_timer([(str(dense_file), shape)] + [(p, shape) for p, _ in built], 1, 10, 5, 0.0)
            record_chunk(doc, [row for _, row in built], start // args.chunk, dense_row, {"": times})
            save(doc, args.out, t0, start // args.chunk, summary(doc["rows"], dense_row))


if __name__ == "__main__":
    main()
