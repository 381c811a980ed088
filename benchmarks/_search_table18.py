"""Session 18's offline look at the floor-check runs (``benchmarks/_search_floor17.py``'s results and timer logs), no
new timing. Three parts:

- **Other estimators**, replayed as ``_search_table17.py`` replays its own (the calibration's notes applied): the
  library's ``gross`` (each batch from the timing with the least gross sum, less that timing's own trivial graph)
  against the two options session 17 left —
  ``shift``: the batch's median trivial graph plus the chosen timing's node shift (the median over the batch's nodes
  of its gross time less their median over the batch's timings), so that one slow trivial-graph reading does not
  move the entries; ``guard``: the chosen timing's own trivial graph unless it reads more than :data:`GAP_MS` above
  the other timings' carried over by the node shift between the two timings (then their median);
  ``agree``: the least gross sum among the timings whose trivial graph is within :data:`GAP_MS` of the least (a
  stand-in for re-timing a batch whose trivial graphs disagree, which no log can replay).
- **Where the misses come from**: each run judged again with each policy's measured time replaced by its median over
  the runs given (the fit on the run's own measurements, then on the medians too), and with each policy's sum
  replaced by its median over the runs.
- **Slow batches**: the batches whose chosen timing's trivial graph reads more than :data:`SLOW_MS` above the median
  of every trivial graph the run's table had timed so far (a slow stretch of the machine, which a search could tell
  as it times), and how many of them, and of the others, hold an entry more than :data:`FAR_MS` above that node's
  median over the runs.
- **The misses** (outside ±10 %) of each run: the policy's sum and measurement against its median over the runs, and
  the node entry furthest from its median over the runs, with the batch it came from and that batch's timings'
  trivial graphs.

``--pack`` instead writes each run's log as ``OUT.log.json.gz`` with the run's per-node graph entry (read from its
node cache) recorded, and removes ``OUT.log.json``: the packed log replays without the cache::

    python benchmarks/_search_table18.py benchmarks/results/search_session1{7,8}_floor*[0-9].json
    python benchmarks/_search_table18.py --pack benchmarks/results/search_session18_floor*[0-9].json
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _search_table17 import CHOOSERS, Runs, choose, entries, graph_ms, judge, load, replay  # noqa: E402
from deepslim.search.node_table import _net  # noqa: E402

GAP_MS = 1e-3  # how far (ms) a timing's trivial graph may read from the others' before ``guard`` / ``agree`` act
WAYS = ("gross", "shift", "guard", "agree")
SLOW_MS = 0.5e-3  # a slow batch: its chosen timing's trivial graph this far above the run's median so far
FAR_MS = 5e-3  # an entry this far above its node's median over the runs


def _whole(runs: Runs, size: int) -> tuple[tuple[dict[int, float], float], Runs]:
    """The batch's timing with the least gross sum and its other timings of the whole batch."""
    whole = [run for run in runs if len(run[0]) == size]
    base = min(whole, key=lambda run: sum(run[0].values()))
    return base, [run for run in whole if run is not base]


def _with(runs: Runs, size: int, new: int, base: dict[int, float], overhead: float) -> list[float]:
    """``_net`` from the timing ``base`` less ``overhead`` (the nodes timed again alone as the library takes them)."""
    return _net([(base, overhead)] + [run for run in runs if len(run[0]) < size], size, new)


def _carried(base: dict[int, float], other: tuple[dict[int, float], float]) -> float:
    """``other``'s trivial graph carried into ``base``'s process: plus the median node shift between the two."""
    return other[1] + float(np.median([base[i] - other[0][i] for i in base]))


def shift(runs: Runs, size: int, new: int) -> list[float]:
    (base, own), others = _whole(runs, size)
    if not others:
        return choose(runs, size, new, "gross")
    whole = [(base, own), *others]
    median = {i: float(np.median([r[i] for r, _ in whole])) for i in base}
    overhead = float(np.median([o for _, o in whole])) + float(np.median([base[i] - median[i] for i in base]))
    return _with(runs, size, new, base, overhead)


def guard(runs: Runs, size: int, new: int) -> list[float]:
    (base, own), others = _whole(runs, size)
    carried = float(np.median([_carried(base, o) for o in others])) if others else own
    return _with(runs, size, new, base, carried if own - carried > GAP_MS else own)


def agree(runs: Runs, size: int, new: int) -> list[float]:
    whole = [run for run in runs if len(run[0]) == size]
    least = min(o for _, o in whole)
    base, own = min([run for run in whole if run[1] <= least + GAP_MS], key=lambda run: sum(run[0].values()))
    return _with(runs, size, new, base, own)


CHOOSERS.update({"shift": shift, "guard": guard, "agree": agree})


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row["policy"], sort_keys=True)


def _medians(docs: list[dict[str, Any]], sums: list[dict[Any, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Each policy's median sum and median measured time over the runs (keyed by policy; dense as "dense")."""
    s: dict[str, list[float]] = {"dense": [x["dense"] for x in sums]}
    m: dict[str, list[float]] = {"dense": [d["dense"]["measured_ms"] for d in docs]}
    for d, x in zip(docs, sums, strict=True):
        for i, r in enumerate(d["rows"]):
            s.setdefault(_key(r), []).append(x[i])
            m.setdefault(_key(r), []).append(r["measured_ms"])
    return ({k: float(np.median(v)) for k, v in s.items()}, {k: float(np.median(v)) for k, v in m.items()})


def _predicted(k: dict[str, Any], d: dict[str, Any], sums: dict[Any, float]) -> list[tuple[int, float]]:
    """(row index, predicted ms) of each judged row by the fit ``k`` (:func:`judge`'s: the plane with its knee)."""
    return [(i, k["scale"] * sums[i] + k["ms_per_mib"] * max(0.0, r["weight_mb"] - k["knee_mib"]) + k["offset_ms"])
            for i, r in enumerate(d["rows"]) if r["role"] != "calibration"]  # fmt: skip


def _count(d: dict[str, Any], sums: dict[Any, float], fit_on: dict[str, float] | None,
           judged_on: dict[str, float] | None) -> int:  # fmt: skip
    """Within ±10 % of the run's judged policies: the fit on the run's measurements (or ``fit_on``'s, by policy, dense
    too), judged against the run's (or ``judged_on``'s)."""
    rows = [dict(r, measured_ms=fit_on[_key(r)] if fit_on else r["measured_ms"]) for r in d["rows"]]
    dense = dict(d["dense"], measured_ms=fit_on["dense"] if fit_on else d["dense"]["measured_ms"])
    k = judge({**d, "rows": rows, "dense": dense}, sums)
    return sum(abs(p / (judged_on[_key(d["rows"][i])] if judged_on else d["rows"][i]["measured_ms"]) - 1) <= 0.10
               for i, p in _predicted(k, d, sums))  # fmt: skip


def misses(d: dict[str, Any], log: dict[str, Any], sums: dict[Any, float], med_sum: dict[str, float],
           med_ms: dict[str, float], med_entry: dict[str, float]) -> list[str]:  # fmt: skip
    """One line per judged policy outside ±10 %: what was off (see the module docstring)."""
    e, src, _ = entries(d, log, "gross", True)
    out = []
    for i, p in _predicted(judge(d, sums), d, sums):
        r = d["rows"][i]
        err = p / r["measured_ms"] - 1
        if abs(err) <= 0.10:
            continue
        dev = {key: (e[key] - med_entry[key]) * n for key, n in Counter(r["node_keys"]).items()}
        worst = max(dev, key=lambda key: abs(dev[key]))
        b = log["batches"][src[worst]]
        size = len(b["new"]) + len(b["canaries"])
        trivial = [c["overhead_ms"] * 1e3 for c in log["calls"][b["calls"][0]:b["calls"][1]] if len(c["keys"]) == size]
        out.append(f"row {i:2d} ({r['weight_mb']:.2f} MiB, {r['int8_layers']} int8): {err * 100:+.1f} %; sum "
                   f"{(sums[i] / med_sum[_key(r)] - 1) * 100:+.1f} % and measured "
                   f"{(r['measured_ms'] / med_ms[_key(r)] - 1) * 100:+.1f} % off their medians over the runs; "
                   f"against the median measured {(p / med_ms[_key(r)] - 1) * 100:+.1f} %; furthest entry {worst} "
                   f"{dev[worst] * 1e3:+.1f} us (batch {src[worst]}, trivial graphs "
                   f"{' / '.join(f'{t:.2f}' for t in trivial)} us)")  # fmt: skip
    return out


def slow_batches(log: dict[str, Any], e: dict[str, float], src: dict[str, int],
                 med_entry: dict[str, float]) -> tuple[int, int, int, int]:  # fmt: skip
    """(slow batches, those holding an entry more than :data:`FAR_MS` above its median over the runs, the other
    batches, those of them holding one) of a run (see the module docstring)."""
    seen: list[float] = []
    counts = [0, 0, 0, 0]
    for n, b in enumerate(log["batches"]):
        size = len(b["new"]) + len(b["canaries"])
        calls = log["calls"][b["calls"][0]:b["calls"][1]]
        seen += [c["overhead_ms"] for c in calls]
        chosen = min((c for c in calls if len(c["keys"]) == size), key=lambda c: sum(c["gross_ms"]))
        slow = chosen["overhead_ms"] - float(np.median(seen)) > SLOW_MS
        far = any(e[k] - med_entry[k] > FAR_MS for k in b["new"] if src.get(k) == n)
        counts[0 if slow else 2] += 1
        counts[1 if slow else 3] += far
    return counts[0], counts[1], counts[2], counts[3]


def pack(files: list[str]) -> None:
    for f in files:
        d, log = load(f)
        log["graph_ms"] = graph_ms(d, log)
        plain = Path(f).with_suffix(".log.json")
        Path(f"{plain}.gz").write_bytes(gzip.compress(json.dumps(log).encode(), mtime=0))
        plain.unlink(missing_ok=True)
        print(f"{plain}.gz")


def main() -> None:
    files = [f for f in sys.argv[1:] if f != "--pack"]
    if "--pack" in sys.argv[1:]:
        pack(files)
        return
    runs = [load(f) for f in files]
    docs = [d for d, _ in runs]
    print("run: " + " | ".join(Path(f).stem.replace("search_", "") for f in files))
    for way in WAYS:
        ks = [judge(d, replay(d, log, way, True)[0]) for d, log in runs]
        counts = [k["ms"]["within_10pct_count"] for k in ks]
        taus = " ".join(f"{k['kendall_tau']:.3f}" for k in ks)
        print(f"{way:6s} within ±10 %: {' '.join(map(str, counts))} (sum {sum(counts)}, least {min(counts)}); "
              f"tau {taus}")
    sums = [replay(d, log, "gross", True)[0] for d, log in runs]
    med_sum, med_ms = _medians(docs, sums)
    pairs = list(zip(docs, sums, strict=True))
    medians = [{"dense": med_sum["dense"], **{i: med_sum[_key(r)] for i, r in enumerate(d["rows"])}} for d in docs]
    rows = {"the run's own (gross, notes applied)": [_count(d, s, None, None) for d, s in pairs],
            "judged against each policy's median measured": [_count(d, s, None, med_ms) for d, s in pairs],
            "fitted and judged on the median measured": [_count(d, s, med_ms, med_ms) for d, s in pairs],
            "each policy's median sum": [_count(d, m, None, None) for d, m in zip(docs, medians, strict=True)]}
    for name, counts in rows.items():
        print(f"{name:48s} {' '.join(map(str, counts))} (sum {sum(counts)})")
    ents = [entries(d, log, "gross", True)[0] for d, log in runs]
    med_entry = {k: float(np.median([e[k] for e in ents if k in e])) for k in set().union(*ents)}
    slow = [slow_batches(log, *entries(d, log, "gross", True)[:2], med_entry) for d, log in runs]
    print(f"slow batches (holding an entry > {FAR_MS * 1e3:g} us above its median): "
          f"{' '.join(f'{a} ({b})' for a, b, _, _ in slow)}; the others: "
          f"{' '.join(f'{c} ({x})' for _, _, c, x in slow)}")
    for f, (d, log), s in zip(files, runs, sums, strict=True):
        lines = misses(d, log, s, med_sum, med_ms, med_entry)
        print(f"{Path(f).stem}: {len(lines)} outside ±10 %")
        for line in lines:
            print("   " + line)


if __name__ == "__main__":
    main()
