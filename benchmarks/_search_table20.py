"""Session 20's floor-check runs (``benchmarks/_search_floor20.py``) read back, no new timing: each run against both
truths — ``retimed`` (the old one: each policy's single reading, its chunk re-timed only where its dense read slow)
and ``agreed`` (each chunk timed twice, a third time where a policy's two ratios disagree; the lower of two or the
median of three) — each fitted and judged on its own truth (the search's fit: the plane through dense with the
loo-max knee on the 19 calibration points, judged on the 50); the noise band between the two passes; the node
table's slow batches timed again; and each policy's measured time off its median over the runs given, per truth::

    python benchmarks/_search_table20.py benchmarks/results/search_session20_floor*[0-9].json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TRUTHS = (("retimed", "", "measured_ms"), ("agreed", "__agreed", "measured_agreed_ms"))


def row(d: dict[str, Any], truth: str, tail: str) -> str:
    """One run's line for one truth: within ±10 % of the judged, p50 / p90 / max, near floor, τ, knee, MAC τ."""
    k, s = d["summary"][f"knee_s17{tail}"], d["summary"][f"table_s17__vs_{truth}"]
    ms, near = k["ms"], k["near_floor_ratio_to_dense"]
    return (f"| {truth} | **{ms['within_10pct_count']}** ({ms['within_10pct_count'] / ms['points']:.0%}) | "
            f"{ms['p50'] * 100:.1f} / {ms['p90'] * 100:.1f} / {ms['max'] * 100:.1f} % | "
            f"{near['within_10pct_count']} of {near['points']} | {k['kendall_tau']:.3f} | {k['knee_mib']:.2f} | "
            f"{s['mac_proxy_kendall_tau']:.3f} |")  # fmt: skip


def run_lines(f: str, d: dict[str, Any]) -> list[str]:
    band, cost = d["noise_band"], d["cost"]
    head = (f"{Path(f).name}: started {d['started_utc']} UTC, load {d['loadavg_before'][0]} -> "
            f"{d['loadavg_after'][0]}, {d['seconds']:.0f} s; dense sum {d['dense']['raw_ms'] * 1e3:.0f} us; "
            f"noise band (two passes' ratios apart) p50 {band['p50'] * 100:.1f} / p90 {band['p90'] * 100:.1f} / max "
            f"{band['max'] * 100:.1f} %, {band['over_tolerance']} rows over {band['tolerance']:.0%}, "
            f"{band['chunks_timed_again']} chunks timed a third time, second-pass dense / first "
            f"{band['dense_second_over_first']:.3f}; first-pass chunks re-timed {cost['retimed_chunks']}; "
            f"slow batches timed again {cost['node_table'].get('slow_batches_timed_again')}; timer calls "
            f"{cost['node_table']['timer_calls']}; notes lowered {d.get('lowered_after_calibration')}")  # fmt: skip
    return [head, *(row(d, truth, tail) for truth, tail, _ in TRUTHS)]


def off_median(docs: list[dict[str, Any]], field: str) -> list[float]:
    """Each policy's ``field`` off its median over the runs."""
    by: dict[str, list[float]] = {}
    for d in docs:
        for r in d["rows"]:
            by.setdefault(json.dumps(r["policy"], sort_keys=True), []).append(r[field])
    return [abs(v / float(np.median(vs)) - 1) for vs in by.values() if len(vs) > 1 for v in vs]


def main() -> None:
    files = sys.argv[1:]
    docs = [json.loads(Path(f).read_text()) for f in files]
    print("| truth | within ±10 % of 50 | p50 / p90 / max | near floor | Kendall τ | knee (MiB) | MAC τ |")
    print("|---|---|---|---|---|---|---|")
    for f, d in zip(files, docs, strict=True):
        print(*run_lines(f, d), sep="\n")
    if len(docs) > 1:
        for truth, _, field in TRUTHS:
            off = off_median(docs, field)
            print(f"{truth}: a policy's measured time off its median over the {len(docs)} runs, p50 / p90 / max "
                  f"{np.percentile(off, 50) * 100:.1f} / {np.percentile(off, 90) * 100:.1f} / {max(off) * 100:.1f} %")


if __name__ == "__main__":
    main()
