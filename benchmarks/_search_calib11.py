"""The node table calibrated with the weights' bytes, checked on fresh policies (issue 14, session 11): MobileNetV2 0.5
at 28² (Fashion-MNIST, the converged dense model), ``n_calib`` + ``n_judge`` random policies spread from the fewest
channels to all (:meth:`SearchSpace.sample_at`, a seed no earlier check drew from); the ``n_calib`` at evenly spaced
levels (both ends included) calibrate. ``NodeTable.calibrate_weights`` fits ``a·sum + b·weight MiB + c`` to them; the
other ``n_judge`` are judged against it, beside the plain line in the sum, the dense anchor (the search's default)
and the MAC count. Each model is exported once (the toolkit's exporter): the node table splits that file and the
timer times it. Models are timed in chunks, each with the dense model, interleaved in one timer process; a model's
measured latency is ``dense's time in the first chunk × its ratio to dense in its own chunk``, so load that changes
between chunks cancels. The JSON is rewritten after every chunk (partial results survive)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_calib11.py OUT.json CACHE_DIR [n_calib n_judge chunk]

Timed back to back (``window_s=0.0`` pinned, for the end-to-end timings and the table's entries): the protocol of
the recorded numbers; session 14 spread the tables' rounds over a window by default; its node timer also binds
inputs and outputs (IO binding), which this script does not undo (the cache key changed with it).
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
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
from deepslim.search.latency import _run_timer, fit_line  # noqa: E402
from deepslim.search.node_table import NodeTable, weight_mb  # noqa: E402
from deepslim.search.space import prune_policy, quantize_policy  # noqa: E402
from search import PRETRAINED_ARCH  # noqa: E402

PRETRAINED = "/tmp/o6/fashion_mnv2_050_full_e10.pt"


def accuracy(pred: list[float], meas: list[float]) -> dict[str, Any]:
    errs = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    if len(errs) < 2:
        return {"points": len(errs)}
    return {"points": len(errs), "error_p50": float(np.percentile(errs, 50)),
            "error_p90": float(np.percentile(errs, 90)), "within_10pct": float(np.mean([e <= 0.10 for e in errs])),
            "kendall_tau": kendall_tau(pred, meas)}  # fmt: skip


def summary(rows: list[dict[str, Any]], dense: dict[str, Any]) -> dict[str, Any]:
    """The calibrations fitted to the measured calibration rows and every predictor's accuracy on the judged ones."""
    calib = [r for r in rows if r["role"] == "calibration"]
    judged = [r for r in rows if r["role"] == "judged"]
    table = NodeTable(LatencyTable(threads=1, cache_dir=None))
    fitted = table.calibrate_weights([(r["raw_ms"], r["weight_mb"], r["measured_ms"]) for r in calib])
    out: dict[str, Any] = {"calibration_points": len(calib), "judged_points": len(judged), "weight_fit": fitted}
    meas = [r["measured_ms"] for r in judged]
    preds: dict[str, list[float]] = {}
    if fitted:
        out["weight_coefficients"] = {"scale": table.scale, "ms_per_mib": table.weight_coef, "offset_ms": table.offset}
        preds["sum+weight_mib"] = [table.predict(r["raw_ms"], r["weight_mb"]) for r in judged]
    _, line = fit_line([(r["raw_ms"], r["measured_ms"]) for r in calib])
    if line is not None:
        out["line_coefficients"] = {"scale": line[0], "offset_ms": line[1]}
        preds["sum_line"] = [line[0] * r["raw_ms"] + line[1] for r in judged]
    anchor = dense["measured_ms"] / dense["raw_ms"]
    preds["dense_anchor"] = [anchor * r["raw_ms"] for r in judged]
    out["predictors"] = {k: accuracy(v, meas) for k, v in preds.items()}
    out["mac_proxy_kendall_tau"] = kendall_tau([r["macs"] for r in judged], meas) if len(judged) >= 2 else None
    return out


def build(dense: torch.nn.Module, space: SearchSpace, policy: Any, x: Any, calib: Any,
          path: Path) -> tuple[int, float]:  # fmt: skip
    """Export ``policy``'s model (pruned, quantized) to ``path`` with the toolkit's exporter, once: the node table
    splits that file and the timer times it; the model's MACs."""
    net = prune_policy(dense, space, policy, example_input=x, calib_data=calib)
    macs = profile(net, x).macs
    net = quantize_policy(net, space, policy, calib_data=calib).eval()
    export_onnx(net, path, example_input=x)
    return macs, weight_mb(net)


def main() -> None:
    out_path, cache = sys.argv[1], sys.argv[2]
    n_calib, n_judge, chunk = (int(v) for v in (sys.argv[3:6] if len(sys.argv) >= 6 else (20, 50, 5)))
    t0 = time.perf_counter()
    full = ds.load_data("fashion-mnist", seed=0, calib_size=1024)
    dense = PRETRAINED_ARCH["mobilenet_v2"]()
    dense.load_state_dict(torch.load(PRETRAINED, weights_only=True))
    dense.eval()
    x = full.example_input
    space = SearchSpace.from_model(dense, x, round_to=8, kinds=("prune", "int8"))
    table = LatencyTable(threads=1, cache_dir=cache, window_s=0.0)
    nodes = NodeTable(table)
    rng = random.Random("session11-fresh-calibration")  # not check_table's stream (seed 0) nor the search's
    n = n_calib + n_judge
    drawn = [(i, space.sample_at(rng, i / (n - 1))) for i in range(n)]
    evenly = {round(j * (n - 1) / max(n_calib - 1, 1)) for j in range(n_calib)}  # both ends calibrate
    calib_set = [d for d in drawn if d[0] in evenly]
    picked = {d[0] for d in calib_set}
    judged_set = [d for d in drawn if d[0] not in picked][:n_judge]
    rng.shuffle(calib_set)  # partial results spread over the levels
    rng.shuffle(judged_set)
    order = [("calibration", *d) for d in calib_set] + [("judged", *d) for d in judged_set]
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "model": "mobilenet_v2 0.5, 28x28, " + PRETRAINED,
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cache_dir": cache,
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
                           "started_utc": time.strftime("%H:%M:%S", time.gmtime()), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        shape = list(x.shape)
        dense_file = Path(work) / "dense.onnx"
        export_onnx(dense, dense_file, example_input=x)
        dense_row = {"raw_ms": nodes.raw_file(dense_file, shape), "weight_mb": weight_mb(dense),
                     "macs": profile(dense, x).macs}  # fmt: skip
        doc["dense"] = dense_row
        for start in range(0, len(order), chunk):
            built = []
            for k, (role, level_i, policy) in enumerate(order[start:start + chunk]):
                path = Path(work) / f"m{k}.onnx"
                macs, mb = build(dense, space, policy, x, full.calib, path)
                built.append((str(path), {"role": role, "level": level_i / (n - 1), "policy": policy.to_dict(),
                                          "macs": macs, "raw_ms": nodes.raw_file(path, shape), "weight_mb": mb,
                                          "int8_layers": sum(policy.int8.values())}))  # fmt: skip
            times = _run_timer([(str(dense_file), shape)] + [(p, shape) for p, _ in built], 1, 10, 5, 0.0)
            dense_row.setdefault("measured_ms", times[0])
            for (_, row), t in zip(built, times[1:], strict=True):
                row.update(chunk=start // chunk, chunk_dense_ms=times[0], absolute_ms=t,
                           measured_ms=dense_row["measured_ms"] * t / times[0])
                doc["rows"].append(row)
            doc["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
            doc["seconds"] = time.perf_counter() - t0
            doc["summary"] = summary(doc["rows"], dense_row)
            with atomic_path(out_path) as tmp:
                Path(tmp).write_text(json.dumps(doc, indent=1))
            print(time.strftime("%H:%M:%S"), f"chunk {start // chunk}: {len(doc['rows'])} rows",
                  json.dumps(doc["summary"]["predictors"]), file=sys.stderr, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
