"""Session 17's floor-check runs re-derived offline from their timer logs (``OUT.log.json`` of
``benchmarks/_search_floor17.py``), no new timing: each run's node entries with another estimator — ``gross`` (the
library's: each batch from the timing with the least gross sum, less its own trivial graph), ``net`` (the least net
sum: runs 1-3's live choice), ``s16`` (session 16's: each node's least gross time less the least trivial graph seen)
— with or without the calibration's canary notes applied (``+low``), judged as the search fits (the plane through
dense with the knee, on the 19 calibration points); then each policy's sum off its median over the runs. Reads each
run's node cache (its command's CACHE_DIR) for the per-node graph term, unless the log records it (``graph_ms``: a
log packed by ``_search_table18.py --pack``, read as ``OUT.log.json.gz``)::

    python benchmarks/_search_table17.py benchmarks/results/search_session17_floor{,2,3,4,5,6}.json
"""

from __future__ import annotations

import glob
import gzip
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _search_floor14 import knee_summary, view  # noqa: E402
from deepslim.search.node_table import _net  # noqa: E402

GRAPH = "(one more node in a graph)"
WAYS = (("gross", True), ("gross", False), ("net", True), ("net", False), ("s16", False))
Runs = list[tuple[dict[int, float], float]]  # a batch's timings: ({batch index: gross ms}, its trivial graph's ms)
# more estimators by name (``runs, batch size, new nodes -> net times``), e.g. _search_table18.py's
CHOOSERS: dict[str, Callable[[Runs, int, int], list[float]]] = {}
# estimators that also read the trivial graphs the run timed before the batch (``..., earlier -> net times``), e.g.
# _search_table21.py's rules against the table's median so far, as ``node_table._slow_batch`` reads it
SEEN_CHOOSERS: dict[str, Callable[[Runs, int, int, list[float]], list[float]]] = {}


def load(f: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's result and its timer log (``OUT.log.json``, else ``OUT.log.json.gz``)."""
    log = Path(f).with_suffix(".log.json")
    text = log.read_text() if log.is_file() else gzip.decompress(Path(f"{log}.gz").read_bytes()).decode()
    return json.loads(Path(f).read_text()), json.loads(text)


def graph_ms(d: dict[str, Any], log: dict[str, Any]) -> float:
    """The run's per-node graph entry: recorded in a packed log, else read from the run's node cache, else (the cache
    is gone: session 17's unpacked logs after /tmp was cleared) derived from the dense row — its live sum of the
    least-gross entries before the notes (``raw_s17_gross_ms`` where the run recorded it, else ``raw_s17_kept_ms``)
    less those entries replayed, per node; on session 18's and 20's packed logs this gives the recorded entry."""
    if "graph_ms" in log:
        return float(log["graph_ms"])
    found = glob.glob(d["command"].split()[2] + "/session17/*.json")
    if found:
        cache = json.loads(Path(found[0]).read_text())["entries"]
        return float([v for k, v in cache.items() if k.endswith(GRAPH)][0])
    dense = d["dense"]
    e = entries(d, log, "gross", False)[0]
    live = dense.get("raw_s17_gross_ms", dense["raw_s17_kept_ms"])
    return (live - sum(e[k] for k in dense["node_keys"])) / len(dense["node_keys"])


def choose(runs: Runs, size: int, new: int, by: str, earlier: list[float] | None = None) -> list[float]:
    if by in SEEN_CHOOSERS:
        return SEEN_CHOOSERS[by](runs, size, new, earlier or [])
    if by in CHOOSERS:
        return CHOOSERS[by](runs, size, new)
    whole = [run for run in runs if len(run[0]) == size]
    if by == "net":
        base = min(whole, key=lambda run: sum(run[0].values()) - size * run[1])
    else:
        base = min(whole, key=lambda run: sum(run[0].values()))
    return _net([base] + [run for run in runs if len(run[0]) < size], size, new)


def replay(d: dict[str, Any], log: dict[str, Any], by: str, lower: bool) -> tuple[dict[Any, float], int | None]:
    """Every row's sum (and dense's) with estimator ``by``; the notes of the calibration's canaries applied before
    the first batch of a judged policy when ``lower``."""
    e, _, lowered = entries(d, log, by, lower)
    g = graph_ms(d, log)
    rows: list[tuple[Any, dict[str, Any]]] = [("dense", d["dense"]), *enumerate(d["rows"])]
    return {name: sum(e[k] for k in r["node_keys"]) + g * len(r["node_keys"]) for name, r in rows}, lowered


def entries(d: dict[str, Any], log: dict[str, Any], by: str,
            lower: bool) -> tuple[dict[str, float], dict[str, int], int | None]:  # fmt: skip
    """:func:`replay`'s node entries (key -> ms), the batch each came from (its index in the log; a lowered entry:
    the batch whose canary lowered it) and how many the notes lowered."""
    calib_keys = set(d["dense"]["node_keys"])
    for r in d["rows"]:
        if r["role"] == "calibration":
            calib_keys |= set(r["node_keys"])
    e: dict[str, float] = {}
    src: dict[str, int] = {}
    faster: dict[str, float] = {}
    noted: dict[str, int] = {}
    lowered: int | None = None
    overheads: list[float] = []
    for n, b in enumerate(log["batches"]):
        if lowered is None and any(k not in calib_keys for k in b["new"]):
            lowered = 0
            for k, t in faster.items() if lower else ():
                if t < e[k]:
                    e[k], src[k] = t, noted[k]
                    lowered += 1
        calls = log["calls"][b["calls"][0]:b["calls"][1]]
        batch = b["new"] + b["canaries"]
        runs = [({batch.index(k): t for k, t in zip(c["keys"], c["gross_ms"], strict=True)}, c["overhead_ms"])
                for c in calls]  # fmt: skip
        earlier = list(overheads)
        overheads += [c["overhead_ms"] for c in calls]
        if by == "s16":
            for i, k in enumerate(b["new"]):
                e[k], src[k] = max(0.0, min(r[i] for r, _ in runs if i in r) - min(overheads)), n
            continue
        net = choose(runs, len(batch), len(b["new"]), by, earlier)
        e.update(zip(b["new"], net, strict=False))
        src.update(dict.fromkeys(b["new"], n))
        if lowered is None:
            for k, t in zip(b["canaries"], net[len(b["new"]):], strict=True):
                if t * 1.1 < e[k] and t <= faster.get(k, t):
                    faster[k], noted[k] = t, n
    return e, src, lowered


def judge(d: dict[str, Any], sums: dict[Any, float]) -> dict[str, Any]:
    rows = [dict(r, v=sums[i]) for i, r in enumerate(d["rows"])]
    dense = dict(d["dense"], v=sums["dense"])
    return knee_summary(view(rows, "v", "measured_ms"), view([dense], "v", "measured_ms")[0])


def spread(files: list[str]) -> dict[str, tuple[float, float, float, int]]:
    """Per way: each policy's sum off its median over the runs (p50 / p90 / max %), and the measured times'."""
    docs, logs = zip(*(load(f) for f in files), strict=True)
    out = {}
    for by, lower in (("gross", True), ("net", False), ("s16", False), ("measured", False)):
        table = []
        for d, log in zip(docs, logs, strict=True):
            sums = replay(d, log, by, lower)[0] if by != "measured" else {}
            table.append({json.dumps(r["policy"], sort_keys=True): sums[i] if sums else r["measured_ms"]
                          for i, r in enumerate(d["rows"])})  # fmt: skip
        common = [k for k in table[0] if all(k in t for t in table)]
        a = np.array([[t[k] for t in table] for k in common])
        dev = np.abs(a / np.median(a, axis=1, keepdims=True) - 1) * 100
        out[by + ("+low" if lower else "")] = (float(np.percentile(dev, 50)), float(np.percentile(dev, 90)),
                                               float(dev.max()), len(common))  # fmt: skip
    return out


def main() -> None:
    for f in sys.argv[1:]:
        d, log = load(f)
        print(Path(f).name)
        for by, lower in WAYS:
            sums, low = replay(d, log, by, lower)
            k = judge(d, sums)
            ms, nf = k["ms"], k["near_floor_ratio_to_dense"]
            live = max(abs(sums[i] / r["raw_s17_ms"] - 1) for i, r in enumerate(d["rows"])) * 100
            print(f"   {by}{'+low' if lower else ''}: {ms['within_10pct_count']} of {ms['points']} within 10 %, "
                  f"p50 {ms['p50'] * 100:.1f} p90 {ms['p90'] * 100:.1f} max {ms['max'] * 100:.1f} %, near floor "
                  f"{nf['within_10pct_count']}/{nf['points']}, tau {k['kendall_tau']:.3f}, knee {k['knee_mib']:.2f}, "
                  f"dense {sums['dense'] * 1e3:.0f} us (lowered {low}; off the live sums by {live:.2f} % at most)")
    if len(sys.argv) > 2:
        for name, v in spread(sys.argv[1:]).items():
            print(f"spread {name:10s} p50 {v[0]:.1f} p90 {v[1]:.1f} max {v[2]:.1f} % over {v[3]} policies")


if __name__ == "__main__":
    main()
