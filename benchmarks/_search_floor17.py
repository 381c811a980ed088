"""The node table near the floor, session 17: each batch's entries from one timer process, less its own trivial graph
(``node_table._net``), and the calibration's canary notes applied before the fit (``NodeTable.lower_entries`` after
the 19 calibration models are summed, those re-summed). Session 13's 69 MobileNetV2 policies (19 calibration + 50
judged) on a fresh cache, each chunk of 5 timed end to end beside dense and re-timed where its dense reads slow, as
``_search_floor15.py`` does. Every timer call of the node table is logged (each node's gross time and the process's
trivial graph), so the same timings also give, without timing anything again:

- ``s16``: session 16's entries (each node's least gross time over its batch's timings less the least trivial graph
  of every process so far), no canary notes applied;
- ``s17_kept``: this session's entries before the notes were applied (item 2 off);
- ``s17_net``: the timing chosen by its least net sum (gross less its own trivial graph) instead of its least gross
  sum, no notes applied (the library's choice in this session's first three runs, which recorded the gross choice
  as ``s17_gross``).

Each is judged as the search fits (the plane through dense with the knee, on the 19 calibration points) against the
re-timed measurements. The log is written beside ``OUT.json`` (``OUT.log.json``)::

    OMP_NUM_THREADS=1 python benchmarks/_search_floor17.py OUT.json CACHE_DIR [--models DIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_floor12 import save, summary  # noqa: E402
from _search_floor14 import knee_summary, parser, setup, view  # noqa: E402
from _search_floor15 import new_doc, time_chunks  # noqa: E402
from deepslim.search import LatencyTable  # noqa: E402
from deepslim.search.node_table import Node, NodeTable, _net  # noqa: E402

VARIANTS = ("s17", "s17_kept", "s16", "s17_net")


class Logged:
    """The session-17 node table on ``cache``, every timer call and batch logged (:meth:`replay` re-derives the
    other estimators' entries from the log)."""

    def __init__(self, cache: Path) -> None:
        self.nodes = NodeTable(LatencyTable(threads=1, cache_dir=cache / "session17"))
        self.calls: list[dict[str, Any]] = []  # {"keys", "gross_ms", "overhead_ms"} per timer call
        self.batches: list[dict[str, Any]] = []  # {"new", "canaries", "calls": [first, end), "net_ms"}
        self.seconds = 0.0
        self.applied = False  # whether lower_entries was called (the notes go to the study's own entries)
        timer, timed = self.nodes.timer, self.nodes._timed

        def logged_timer(batch: Sequence[Node], work: str) -> list[float]:
            times = timer(batch, work)
            self.calls.append({"keys": [n["key"] for n in batch], "gross_ms": [float(t) for t in times],
                               "overhead_ms": self.nodes.overheads[-1]})  # fmt: skip
            return times

        def logged_timed(new: list[Node], canaries: list[Node], work: str) -> list[float]:
            first = len(self.calls)
            net = timed(new, canaries, work)
            self.batches.append({"new": [n["key"] for n in new], "canaries": [n["key"] for n in canaries],
                                 "calls": [first, len(self.calls)], "net_ms": net})  # fmt: skip
            return net

        self.nodes.timer, self.nodes._timed = logged_timer, logged_timed

    def __call__(self, path: Path, shape: list[int]) -> dict[str, Any]:
        t0 = time.perf_counter()
        raw = self.nodes.raw_file(path, shape)
        self.seconds += time.perf_counter() - t0
        return {"raw_ms": raw, "nodes": self.nodes.last_nodes, "node_keys": list(self.nodes.last_keys)}

    def lower(self) -> int:
        """Apply the canaries' notes once, as the search's calibration does before its fit."""
        self.applied = True
        return self.nodes.lower_entries()

    def replay(self) -> dict[str, dict[str, float]]:
        """Each variant's entries (node key without prefix -> ms) from the logged timings."""
        prefix = self.nodes.prefix
        kept = {k[len(prefix):]: v for k, v in self.nodes.table.entries.items() if k.startswith(prefix)}  # the cache
        now = {**kept, **{k[len(prefix):]: v for k, v in self.nodes.study_entries.items()}}  # the study's
        s16: dict[str, float] = {}
        by_net: dict[str, float] = {}
        overheads: list[float] = []
        for b in self.batches:
            calls = self.calls[b["calls"][0]:b["calls"][1]]
            overheads += [c["overhead_ms"] for c in calls]
            batch = b["new"] + b["canaries"]
            runs = [({batch.index(k): t for k, t in zip(c["keys"], c["gross_ms"], strict=True)}, c["overhead_ms"])
                    for c in calls]  # fmt: skip
            for i, k in enumerate(b["new"]):
                s16[k] = max(0.0, min(r[i] for r, _ in runs if i in r) - min(overheads))
            for k, t in zip(b["new"], _net_by_net(runs, len(batch), len(b["new"]))[: len(b["new"])], strict=True):
                by_net[k] = t
        graph = self.nodes.graph_key[len(prefix):]
        for table in (s16, by_net):
            table[graph] = now[graph]
        return {"s17": now, "s17_kept": kept, "s16": s16, "s17_net": by_net}


def _net_by_net(runs: list[tuple[dict[int, float], float]], size: int, new: int) -> list[float]:
    """:func:`node_table._net` with the whole batch's timing chosen by its least net sum (its gross times less its
    own trivial graph's, per node)."""
    whole = [run for run in runs if len(run[0]) == size]
    base = min(whole, key=lambda run: sum(run[0].values()) - size * run[1])
    return _net([base] + [run for run in runs if len(run[0]) < size], size, new)


def resum(rows: list[dict[str, Any]], entries: dict[str, dict[str, float]], graph: str) -> None:
    """Each variant's sum of every row's node keys (``raw_<variant>_ms``)."""
    for name, table in entries.items():
        for row in rows:
            keys = row["node_keys"]
            row[f"raw_{name}_ms"] = sum(table[k] for k in keys) + table.get(graph, 0.0) * len(keys)


TRUTHS = {"retimed": "measured_ms"}  # each truth's name -> the rows' field (session 20 adds its agreed one)


def summaries(rows: list[dict[str, Any]], dense: dict[str, Any],
              truths: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Each variant's sums with the plane through dense and the knee (the search's fit, fitted and judged on the
    same truth), against each truth (``knee_<variant>`` against the re-timed measurements, ``knee_<variant>__<truth>``
    against another); the plain summary for the live table (``table_s17__vs_<truth>``)."""
    out: dict[str, Any] = {}
    for truth, field in (truths or TRUTHS).items():
        if field not in dense:
            continue
        tail = "" if truth == "retimed" else f"__{truth}"
        out[f"table_s17__vs_{truth}"] = summary(view(rows, "raw_ms", field), view([dense], "raw_ms", field)[0])
        for name in [n for n in VARIANTS if f"raw_{n}_ms" in dense]:
            v, d = view(rows, f"raw_{name}_ms", field), view([dense], f"raw_{name}_ms", field)[0]
            out[f"knee_{name}{tail}"] = knee_summary(v, d)
            out[f"knee_rms_{name}{tail}"] = knee_summary(v, d, "rms")
    return out


def report(doc: dict[str, Any], truths: dict[str, str]) -> None:
    """Each variant's knee, count within ±10 %, p50, p90 and τ against each truth, and the MAC proxy's τ."""
    for truth in truths:
        tail = "" if truth == "retimed" else f"__{truth}"
        for name in VARIANTS:
            k = doc["summary"].get(f"knee_{name}{tail}", {})
            if k:
                print(f"{truth:8s} {name:10s} knee {k['knee_mib']:.2f} within {k['ms']['within_10pct_count']}/"
                      f"{k['ms']['points']} p50 {k['ms']['p50'] * 100:.1f} p90 {k['ms']['p90'] * 100:.1f} "
                      f"tau {k['kendall_tau']:.3f}")  # fmt: skip
        print(f"{truth:8s} MAC tau", doc["summary"].get(f"table_s17__vs_{truth}", {}).get("mac_proxy_kendall_tau"))


def main(passes: int = 1, truths: dict[str, str] | None = None) -> None:
    """The run (``passes=2``: every chunk timed twice, ``_search_floor15.second_pass``), judged against
    ``truths``."""
    truths = truths or TRUTHS
    ap = parser()
    ap.add_argument("--models", default=None, help="a folder keeping each policy's exported file across runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    setup_ = setup(args.limit)
    table = Logged(Path(args.cache))
    n_calib = sum(role == "calibration" for role, _, _ in setup_[4])
    doc = new_doc()
    seen = [0]  # calibration policies summed (or refused by the export)

    def summed(role: str) -> None:
        seen[0] += role == "calibration"
        if seen[0] == n_calib and not table.applied:  # the search's calibration, before its fit
            doc["lowered_after_calibration"] = table.lower()

    def chunked(c: int) -> None:
        resum(doc["rows"] + [doc["dense"]], table.replay(), table.nodes.graph_key[len(table.nodes.prefix):])
        for row in doc["rows"] + [doc["dense"]]:
            row["raw_ms"] = row["raw_s17_ms"]  # the study's sums now (its own lowered entries): its frame's
        save(doc, args.out, t0, c, summaries(doc["rows"], doc["dense"], truths))

    with tempfile.TemporaryDirectory() as work:
        tries, retime_s = time_chunks(doc, args, setup_, work, table, chunked, summed, passes)
        doc["cost"] = {"node_table": {"seconds": table.seconds, "timer_calls": table.nodes.timings,
                                      "entries": table.nodes.table.measured,
                                      "canaries_read_fast_after_calibration": len(table.nodes.faster),
                                      "slow_batches_timed_again": table.nodes.slow_batches,
                                      "low_trivial_batches": table.nodes.low_batches},
                       "retimed_chunks": sum(t > 1 for t in tries), "retimings": sum(t - 1 for t in tries),
                       "retiming_seconds": retime_s}  # fmt: skip
        save(doc, args.out, t0, len(tries), summaries(doc["rows"], doc["dense"], truths))
        Path(args.out).with_suffix(".log.json").write_text(json.dumps({"calls": table.calls,
                                                                       "batches": table.batches}))
    report(doc, truths)


if __name__ == "__main__":
    main()
