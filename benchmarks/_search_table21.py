"""Session 21's replay of a rule for a node batch whose chosen trivial graph reads LOW, on the logged floor-check runs
(sessions 17, 18 and 20; ``_search_table17.py`` reads them back), no new timing. Session 20's run 4 failed on one
batch (its calibration's batch 4): four timings of 109 new nodes with gross sums within 5 % (811 / 809 / 775 /
790 µs) and trivial graphs of 5.29 / 5.24 / **3.36** / 5.11 µs; the library took the least gross sum, the 3.36 µs
process, whose nodes ran as slow as the others', so each entry kept ~1.7 µs too much. The rules, each at ``T`` µs:

- ``median-other``: the chosen timing's trivial graph more than ``T`` below the median of the trivial graphs the table
  timed before the batch (once there are 4, else of all so far, the batch's own included: ``_slow_batch``'s frame)
  -> the least gross sum among the batch's whole timings whose trivial graph is not that low (none: as before);
- ``median-shift``: the same test -> the chosen timing's gross times less that median (each entry shifted by the
  trivial graph's deficit);
- ``batch-carried``: the chosen timing's trivial graph more than ``T`` below the batch's other whole timings'
  carried into its process by the median node shift between the two (``o + median_i(g_chosen,i − g_other,i)``,
  their median) -> its gross times less that carried trivial graph (session 18's ``guard``, mirrored);
- ``batch-sum``: the same, carried by the mean node shift (the two gross sums' gap per node): the trivial graphs'
  gap that the gross sums do not show; only with two other whole timings or more (with one, a trivial graph that
  reads low alone in the chosen and one that reads high alone in the other, session 17's third run, look alike);
- ``batch-other``: more than ``T`` below the median of the other whole timings' trivial graphs while their least
  gross sum is within 10 % of the chosen's -> the least gross sum among the others, less its own (session 20's
  "left" candidate, as entries from the logged timings instead of a new timing).

Every rule reads only what the library holds as it times (the batch's timings and the trivial graphs timed before),
so each could run live. Each run is judged as the search fits (the plane through dense with the loo-max knee, the
calibration's notes applied), against the old truth (``measured_ms``) and, where the run has it, the agreed one::

    python benchmarks/_search_table21.py benchmarks/results/search_session{17,18,20}_floor*[0-9].json \\
        benchmarks/results/search_session17_floor.json
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _search_table17 import SEEN_CHOOSERS, Runs, judge, load, replay  # noqa: E402
from _search_table18 import _carried, _whole, _with  # noqa: E402
from deepslim.search._batch_timing import SLOW_BATCH_EARLIER, _net  # noqa: E402

TS_US = (0.5, 1.0, 1.5, 2.0)
RULES = ("median-other", "median-shift", "batch-carried", "batch-sum", "batch-other")
AGREE = 0.10  # batch-other: the others' least gross sum within this of the chosen's
Fix = tuple[dict[int, float], float]  # the timing (gross ms by batch index) and the trivial graph taken off it


def _median_so_far(runs: Runs, earlier: list[float]) -> float:
    frame = earlier if len(earlier) >= SLOW_BATCH_EARLIER else earlier + [o for _, o in runs]
    return float(np.median(frame))


def _carried_sum(base: dict[int, float], other: tuple[dict[int, float], float], size: int) -> float:
    """``other``'s trivial graph carried into ``base``'s process by the mean node shift (their gross sums' gap)."""
    return other[1] + (sum(base.values()) - sum(other[0].values())) / size


def fix(rule: str, runs: Runs, size: int, earlier: list[float], t_ms: float) -> tuple[Fix, float] | None:
    """Where ``rule`` fires on a batch: the timing and trivial graph its entries come from instead, and the chosen
    trivial graph's deficit (ms) the rule saw; None where it does not fire."""
    (base, own), others = _whole(runs, size)
    if rule.startswith("median"):
        med = _median_so_far(runs, earlier)
        if own >= med - t_ms:
            return None
        if rule == "median-shift":
            return (base, med), med - own
        ok = [run for run in others if run[1] >= med - t_ms]
        return (min(ok, key=lambda run: sum(run[0].values())), med - own) if ok else None
    if not others:
        return None
    if rule == "batch-sum" and len(others) < 2:  # one other: a low own and a high other look alike
        return None
    if rule in ("batch-carried", "batch-sum"):
        carried = float(np.median([_carried(base, o) if rule == "batch-carried" else _carried_sum(base, o, size)
                                   for o in others]))  # fmt: skip
        return ((base, carried), carried - own) if own < carried - t_ms else None
    level = float(np.median([o for _, o in others]))
    other = min(others, key=lambda run: sum(run[0].values()))
    if own >= level - t_ms or sum(other[0].values()) > (1 + AGREE) * sum(base.values()):
        return None
    return other, level - own


def chooser(rule: str, t_ms: float) -> Callable[[Runs, int, int, list[float]], list[float]]:
    def pick(runs: Runs, size: int, new: int, earlier: list[float]) -> list[float]:
        got = fix(rule, runs, size, earlier, t_ms)
        (base, off) = got[0] if got else _whole(runs, size)[0]
        return _with(runs, size, new, base, off)

    return pick


def way(rule: str, t_us: float) -> str:
    return f"{rule}@{t_us:g}"


for _rule in RULES:
    for _t in TS_US:
        SEEN_CHOOSERS[way(_rule, _t)] = chooser(_rule, _t * 1e-3)
# The library's own estimator on all of a batch's timings as it runs live (``node_table._net``: since session 21 with
# its low-trivial rule, ``batch-sum@1``; ``before``: without it). ``gross`` and the rules above pass _net the chosen
# timing and the nodes timed alone only, as _search_table17/18 replay (a node timed alone then takes its least gross
# time among those, not among the other whole timings too): compare each with its own baseline.
SEEN_CHOOSERS["library"] = lambda runs, size, new, earlier: _net(runs, size, new)
SEEN_CHOOSERS["before"] = lambda runs, size, new, earlier: _net(runs, size, new, low=False)


def touched(log: dict[str, Any], rule: str, t_ms: float) -> list[str]:
    """The batches ``rule`` fires on: index, new nodes, the deficit (µs)."""
    out: list[str] = []
    overheads: list[float] = []
    for n, b in enumerate(log["batches"]):
        calls = log["calls"][b["calls"][0]:b["calls"][1]]
        batch = b["new"] + b["canaries"]
        runs = [({batch.index(k): t for k, t in zip(c["keys"], c["gross_ms"], strict=True)}, c["overhead_ms"])
                for c in calls]  # fmt: skip
        got = fix(rule, runs, len(batch), overheads, t_ms)
        if got:
            out.append(f"b{n}({len(b['new'])} new, -{got[1] * 1e3:.2f})")
        overheads = overheads + [c["overhead_ms"] for c in calls]
    return out


def truths(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run under each truth it has: ``old`` (its rows' ``measured_ms``), ``agreed`` (``measured_agreed_ms``)."""
    out = {"old": d}
    if "measured_agreed_ms" in d["dense"]:
        rows = [dict(r, measured_ms=r["measured_agreed_ms"]) for r in d["rows"]]
        out["agreed"] = {**d, "rows": rows, "dense": dict(d["dense"], measured_ms=d["dense"]["measured_agreed_ms"])}
    return out


def main() -> None:
    files = sys.argv[1:]
    totals: dict[tuple[str, str], list[int]] = {}
    for f in files:
        d, log = load(f)
        print(Path(f).stem.replace("search_", ""))
        sums = {"gross": replay(d, log, "gross", True)[0], "before": replay(d, log, "before", True)[0],
                "library": replay(d, log, "library", True)[0]}  # fmt: skip
        for rule in RULES:
            for t in TS_US:
                sums[way(rule, t)] = replay(d, log, way(rule, t), True)[0]
        for truth, dt in truths(d).items():
            live = d["summary"]["knee_s17" + ("" if truth == "old" else "__agreed")]["ms"]["within_10pct_count"]
            base = judge(dt, sums["gross"])["ms"]["within_10pct_count"]
            before = judge(dt, sums["before"])["ms"]["within_10pct_count"]
            line = [f"   {truth}: live {live}, replayed {base} (gross), {before} (before)"]
            totals.setdefault((truth, "gross"), []).append(base)
            totals.setdefault((truth, "before"), []).append(before)
            for name, s in sums.items():
                if name in ("gross", "before"):
                    continue
                k = judge(dt, s)["ms"]["within_10pct_count"]
                totals.setdefault((truth, name), []).append(k)
                if k != (before if name == "library" else base):
                    line.append(f"{name} {k}")
            print("; ".join(line))
        for rule in RULES:
            for t in TS_US:
                hit = touched(log, rule, t * 1e-3)
                print(f"   {way(rule, t)} fires on {len(hit)}: {' '.join(hit)}")
    for (truth, name), counts in totals.items():
        base = totals[(truth, "before" if name == "library" else "gross")]
        worse = sum(k < b for k, b in zip(counts, base, strict=True))
        better = sum(k > b for k, b in zip(counts, base, strict=True))
        print(f"{truth:6s} {name:18s} {' '.join(map(str, counts))} (sum {sum(counts)}, runs up {better}, down "
              f"{worse}, met {sum(k >= 45 for k in counts)})")


if __name__ == "__main__":
    main()
