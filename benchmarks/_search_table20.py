"""Session 20's floor-check runs (``benchmarks/_search_floor20.py``) read back, no new timing: each run against both
truths — ``retimed`` (the old one: each policy's single reading, its chunk re-timed only where its dense read slow)
and ``agreed`` (each chunk timed twice, a third time where a policy's two ratios disagree; the lower of two or the
median of three) — each fitted and judged on its own truth (the search's fit: the plane through dense with the
loo-max knee on the 19 calibration points, judged on the 50); the noise band between the two passes; the node
table's slow batches timed again; each policy's measured time off its median over the runs given, per truth; and
other truths replayed from each row's ratio readings (:data:`READINGS`: the first alone, the second alone, the lower
of the two, their mean, the least of all), framed by the agreed dense, each fitted and judged as above. A run still
in progress (its saved document has no ``noise_band`` yet) is named as unfinished and left out (review R20 L1)::

    python benchmarks/_search_table20.py benchmarks/results/search_session20_floor*[0-9].json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_floor14 import knee_summary, view  # noqa: E402

TRUTHS = (("retimed", "", "measured_ms"), ("agreed", "__agreed", "measured_agreed_ms"))


READINGS: dict[str, Callable[[list[float]], float]] = {
    "first": lambda r: r[0], "second": lambda r: r[1], "lower of two": lambda r: min(r[:2]),
    "mean of two": lambda r: (r[0] + r[1]) / 2, "agreed": lambda r: float(np.percentile(r, 50, method="lower")),
    "least of all": min}  # fmt: skip


def replayed(d: dict[str, Any]) -> str:
    """Each :data:`READINGS` truth's count within ±10 % of the judged (its knee), the fit on the same truth."""
    frame = d["dense"]["measured_agreed_ms"]
    dense = view([d["dense"]], "raw_s17_ms", "measured_agreed_ms")[0]
    out = []
    for name, pick in READINGS.items():
        rows = [{**r, "raw_ms": r["raw_s17_ms"], "measured_ms": frame * pick(r["ratio_readings"])} for r in d["rows"]]
        k = knee_summary(rows, dense)
        out.append(f"{name} {k['ms']['within_10pct_count']} (knee {k['knee_mib']:.2f})")
    return "replayed truths: " + "; ".join(out)


def row(d: dict[str, Any], truth: str, tail: str) -> str:
    """One run's line for one truth: within ±10 % of the judged, p50 / p90 / max, near floor, τ, knee, MAC τ."""
    k, s = d["summary"][f"knee_s17{tail}"], d["summary"][f"table_s17__vs_{truth}"]
    ms, near = k["ms"], k["near_floor_ratio_to_dense"]
    return (f"| {truth} | **{ms['within_10pct_count']}** ({ms['within_10pct_count'] / ms['points']:.0%}) | "
            f"{ms['p50'] * 100:.1f} / {ms['p90'] * 100:.1f} / {ms['max'] * 100:.1f} % | "
            f"{near.get('within_10pct_count', 0)} of {near['points']} | {k['kendall_tau']:.3f} | {k['knee_mib']:.2f} | "
            f"{s['mac_proxy_kendall_tau']:.3f} |")  # fmt: skip


def run_lines(f: str, d: dict[str, Any]) -> list[str]:
    band, cost = d["noise_band"], d["cost"]
    head = (f"{Path(f).name}: started {d['started_utc']} UTC, load {d['loadavg_before'][0]} -> "
            f"{d['loadavg_after'][0]}, {d['seconds']:.0f} s; dense sum {d['dense']['raw_ms'] * 1e3:.0f} us; "
            f"noise band (two passes' ratios apart) p50 {band['p50'] * 100:.1f} / p90 {band['p90'] * 100:.1f} / max "
            f"{band['max'] * 100:.1f} %, {band['over_tolerance']} rows over {band['tolerance']:.0%}, "
            f"{band['chunks_timed_again']} chunks timed a third time, second-pass dense / first "
            f"{band['dense_second_over_first']:.3f}; first-pass chunks re-timed {cost['retimed_chunks']}; "
            f"slow batches timed again {cost['node_table'].get('slow_batches_timed_again')}; low trivial graphs "
            f"replaced {cost['node_table'].get('low_trivial_batches')}; timer calls "
            f"{cost['node_table']['timer_calls']}; notes lowered {d.get('lowered_after_calibration')}")  # fmt: skip
    return [head, *(row(d, truth, tail) for truth, tail, _ in TRUTHS), replayed(d)]


def off_median(docs: list[dict[str, Any]], field: str) -> list[float]:
    """Each policy's ``field`` off its median over the runs."""
    by: dict[str, list[float]] = {}
    for d in docs:
        for r in d["rows"]:
            by.setdefault(json.dumps(r["policy"], sort_keys=True), []).append(r[field])
    return [abs(v / float(np.median(vs)) - 1) for vs in by.values() if len(vs) > 1 for v in vs]


def finished(files: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """The runs that finished (their documents have a ``noise_band``) and their documents; each other named as
    unfinished on a line of its own: ``_search_floor20.py`` saves its document while it runs."""
    done = [(f, json.loads(Path(f).read_text())) for f in files]
    for f, d in done:
        if "noise_band" not in d:
            print(f"{Path(f).name}: unfinished (no noise_band yet), left out")
    kept = [(f, d) for f, d in done if "noise_band" in d]
    return [f for f, _ in kept], [d for _, d in kept]


def main() -> None:
    files, docs = finished(sys.argv[1:])
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
