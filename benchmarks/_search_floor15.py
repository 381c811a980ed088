"""The node table near the floor, session 15: robustness to slow stretches. Session 13's 69 MobileNetV2 policies (19
calibration + 50 judged, read from its JSON), each node sum taken twice on fresh caches — the session-15 node table
(a batch of new entries timed as twins, again where they disagree or its canaries read slow:
``NodeTable._timed``) and the session-14 one (``twins=1, retries=0``: each batch timed once) — the order of the two
alternating by model; each chunk of 5 timed end to end beside dense (rounds spread over 3 s), and a chunk whose
dense reads more than 8 % above the chunks' median re-timed (``table_check.steady_chunks``: the chunks before the
newest after each chunk, so a re-timing comes at least one chunk's exports later; all of them at the end, 5 s
after the last timing), its files kept for it. Every predictor (the weight plane with the knee through dense,
fitted on the 19 calibration points as the search fits it) is judged against the re-timed measurement and against
each chunk's first timing (session 14's protocol), so the two tables and the two protocols are compared on one
run. ``benchmarks/_search_floor12.py`` holds the export and the judging. The exported files can be kept across
runs (``--models DIR``, built once with ``--build-only``): the node caches and every timing are fresh in each run::

    OMP_NUM_THREADS=1 python benchmarks/_search_floor15.py OUT.json CACHE_DIR [--models DIR]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _search_floor12 import build, save, summary  # noqa: E402
from _search_floor14 import POLICIES, knee_summary, parser, setup, view  # noqa: E402
from deepslim.analysis import profile  # noqa: E402
from deepslim.errors import ExportError  # noqa: E402
from deepslim.export import export_onnx  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace  # noqa: E402
from deepslim.search.latency import _run_timer  # noqa: E402
from deepslim.search.node_table import GRAPH_NODE, Node, NodeTable, weight_mb  # noqa: E402
from deepslim.search.space import Policy  # noqa: E402
from deepslim.search.table_check import AGREE_TOLERANCE, agreed_ratios, chunk_ratios, reading_spread, steady_chunks  # noqa: E402

WINDOW_S = 3.0
FINAL_GAP_S = 5.0  # seconds before each re-timing of the final pass (the last chunk was timed just before it)


class Sums:
    """The node tables, their sums of one file and the seconds each spent (its cost per cache). The session-15
    table's first timing of each node is logged too (``raw_once_ms``: the sum had each batch been timed once, over
    the twin's half window): session 14's table at no extra timing, where its own (``s14``) is left out."""

    def __init__(self, cache: Path, names: Sequence[str]) -> None:
        made = {"s15": lambda: NodeTable(LatencyTable(threads=1, cache_dir=cache / "session15")),
                "s14": lambda: NodeTable(LatencyTable(threads=1, cache_dir=cache / "session14"), twins=1,
                                         retries=0, canaries=0)}  # fmt: skip
        self.tables = {name: made[name]() for name in names}
        self.seconds = dict.fromkeys(self.tables, 0.0)
        self.count = 0
        self.once: dict[str, float] = {}  # node key -> its first timing in the session-15 table
        self.keys: list[str] = []  # the node keys of the last file the session-15 table split
        table = self.tables["s15"]
        timer, splitter = table.timer, table.splitter

        def logged_timer(nodes: Sequence[Node], work: str) -> list[float]:
            times = timer(nodes, work)  # gross: this process's trivial graph is its last overhead
            for n, t in zip(nodes, times, strict=True):
                self.once.setdefault(n["key"], max(0.0, float(t) - table.overheads[-1]))
            return times

        def logged_splitter(path: str, shape: Sequence[int], work: str) -> list[Node]:
            nodes = splitter(path, shape, work)
            self.keys = [n["key"] for n in nodes]
            return nodes

        table.timer, table.splitter = logged_timer, logged_splitter

    def __call__(self, path: Path, shape: list[int]) -> dict[str, Any]:
        order = list(self.tables) if self.count % 2 == 0 else list(reversed(self.tables))
        self.count += 1
        out: dict[str, Any] = {}
        for name in order:
            t0 = time.perf_counter()
            out[f"raw_{name}_ms"] = self.tables[name].raw_file(path, shape)
            self.seconds[name] += time.perf_counter() - t0
        per_node = self.tables["s15"].table.entries.get(GRAPH_NODE, 0.0)
        out["raw_once_ms"] = sum(self.once[k] for k in self.keys) + per_node * len(self.keys)
        out["raw_ms"], out["nodes"] = out["raw_s15_ms"], self.tables["s15"].last_nodes
        return out

    def cost(self) -> dict[str, Any]:
        return {name: {"seconds": self.seconds[name], "timer_calls": t.timings, "entries": t.table.measured,
                       "canaries_read_fast": len(t.faster)} for name, t in self.tables.items()}  # fmt: skip


def built_file(folder: Path, i: int, dense: torch.nn.Module, space: SearchSpace, policy: Policy, x: Any,
               calib: Any) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Policy ``i``'s exported file in ``folder`` and its MACs and weight MiB (or why the export refused it), built
    once: the export is deterministic (random weights from seed 0, the same calibration data), and the
    exports were most of a run's time (~25 s a policy at load 4–6, 69 policies)."""
    path, meta = folder / f"p{i}.onnx", folder / f"p{i}.json"
    if not meta.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            macs, mb = build(dense, space, policy, x, calib, path, True)
            info: dict[str, Any] = {"macs": macs, "weight_mb": mb}
        except ExportError as exc:
            info = {"why": str(exc)}
        meta.write_text(json.dumps({**info, "policy": policy.to_dict()}))
    return path, json.loads(meta.read_text())


def frame(doc: dict[str, Any], chunks: list[list[float]], first: list[list[float]], tries: list[int]) -> None:
    """Every row's measured times from its chunk: ``measured_ms`` = its ratio to its chunk's dense (the chunk's kept
    timing) × the chunks' median dense; ``measured_first_ms`` = its ratio in the chunk's first timing × the first
    chunk's first dense (session 14's frame)."""
    dense = doc["dense"]
    dense["measured_ms"] = float(np.median([c[0] for c in chunks]))
    dense["measured_first_ms"] = first[0][0]
    for row in doc["rows"]:
        c, k = row["chunk"], row["index_in_chunk"]
        kept, once = chunks[c], first[c]
        row.update(chunk_dense_ms=kept[0], chunk_dense_first_ms=once[0], absolute_ms=kept[k + 1],
                   absolute_first_ms=once[k + 1], ratio=kept[k + 1] / kept[0], ratio_first=once[k + 1] / once[0],
                   measured_ms=dense["measured_ms"] * kept[k + 1] / kept[0],
                   measured_first_ms=dense["measured_first_ms"] * once[k + 1] / once[0],
                   chunk_timings=tries[c])  # fmt: skip


def summaries(rows: list[dict[str, Any]], dense: dict[str, Any]) -> dict[str, Any]:
    """Each table's sums against each protocol's measurement: the plane through dense and the knee (the search's,
    ``knee``; ``knee_rms``: the knee chosen in sample, sessions 14-15's fit, on the same points)."""
    out = {}
    for name in [n for n in ("s15", "s14", "once") if f"raw_{n}_ms" in dense]:
        for truth, meas in (("retimed", "measured_ms"), ("first", "measured_first_ms")):
            v, d = view(rows, f"raw_{name}_ms", meas), view([dense], f"raw_{name}_ms", meas)[0]
            out[f"table_{name}__vs_{truth}"] = {**summary(v, d), "knee": knee_summary(v, d),
                                                "knee_rms": knee_summary(v, d, "rms")}  # fmt: skip
    return out


def new_doc() -> dict[str, Any]:
    """A run's document before its rows: the command, the model and policies, the load and time it started at."""
    return {"command": " ".join(sys.argv), "weights": "random initial weights", "policies": POLICIES,
            "model": "mobilenet_v2 0.5, 28x28, prune+int8 space, round_to 8", "window_s": WINDOW_S,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rows": []}  # fmt: skip


def frame_agreed(doc: dict[str, Any], readings: list[list[list[float]]], ratios: list[list[float]]) -> None:
    """Session 20's truth beside the old one (:func:`frame`, left as it was): ``measured_agreed_ms`` = the row's
    agreed ratio (:func:`~deepslim.search.table_check.agreed_ratios`) × the median dense reference of both passes'
    kept timings; ``ratio_readings`` = its ratios in every timing of its chunk (the first pass's kept one first),
    ``reading_spread`` = how far its first two are apart. ``doc["noise_band"]``: that spread over the rows."""
    dense = doc["dense"]
    dense["measured_agreed_ms"] = float(np.median([t[0] for r in readings for t in r[:2]]))
    for row in doc["rows"]:
        c, k = row["chunk"], row["index_in_chunk"]
        row["ratio_readings"] = [chunk_ratios(t)[k] for t in readings[c]]
        row["reading_spread"] = reading_spread(row["ratio_readings"][:2])
        row["measured_agreed_ms"] = dense["measured_agreed_ms"] * ratios[c][k]
    spread = [row["reading_spread"] for row in doc["rows"]]
    doc["noise_band"] = {"p50": float(np.percentile(spread, 50)), "p90": float(np.percentile(spread, 90)),
                         "max": max(spread), "over_tolerance": sum(s > AGREE_TOLERANCE for s in spread),
                         "tolerance": AGREE_TOLERANCE, "chunks_timed_again": sum(len(r) > 2 for r in readings),
                         "dense_second_over_first": float(np.median([r[1][0] / r[0][0] for r in readings])),
                         }  # fmt: skip


def second_pass(doc: dict[str, Any], chunks: list[list[float]], timing: Callable[..., list[float]]) -> None:
    """Every chunk timed again after the first pass (the chunks in reverse order, each chunk's policies reversed
    in its timer process), a second-pass reference that reads slow against both passes' re-timed
    (``steady_chunks``), a policy whose two ratios disagree timed a third time (``agreed_ratios``), framed by
    :func:`frame_agreed`."""
    n = len(chunks)
    both: list[list[float]] = [list(c) for c in chunks] + [[] for _ in chunks]
    for i in reversed(range(n)):
        both[n + i] = timing(i, backwards=True, why="second pass")
    more = steady_chunks(both, lambda i: timing(i - n, gap=FINAL_GAP_S, why="second pass, dense slow"),
                         eligible=range(n, 2 * n))[n:]  # fmt: skip
    readings = [[both[i], both[n + i]] for i in range(n)]
    ratios = agreed_ratios(readings, lambda i: timing(i, gap=FINAL_GAP_S, why="readings disagree"))
    doc["second_pass_timings"] = [m + len(r) - 2 for m, r in zip(more, readings, strict=True)]
    frame_agreed(doc, readings, ratios)


def time_chunks(doc: dict[str, Any], args: Any, setup_: tuple[Any, ...], work: str,
                sums: Callable[[Path, list[int]], dict[str, Any]], chunked: Callable[[int], None],
                summed: Callable[[str], None] = lambda role: None,
                passes: int = 1) -> tuple[list[int], float]:  # fmt: skip
    """This session's protocol, also ``_search_floor17.py``'s: the dense model exported into ``work`` and summed
    (``sums(file, shape)``: the node tables' fields of a row, into ``doc["dense"]``), then the policies of ``setup_``
    (:func:`_search_floor14.setup`'s) in chunks of ``args.chunk``: each built once (:func:`built_file`, in
    ``args.models`` when given), summed, a row in ``doc["rows"]`` (or in ``doc["skipped"]`` where the export refuses
    it) and ``summed(role)`` after it; each chunk timed end to end beside dense, the earlier chunks whose dense reads
    slow re-timed (``steady_chunks``), every row's measurement framed (:func:`frame`) and ``chunked(chunk)`` called
    (the caller saves); a final re-timing pass, :data:`FINAL_GAP_S` apart. ``passes=2`` (session 20): then every
    chunk timed again (:func:`second_pass`), the rows' ``measured_agreed_ms`` beside their ``measured_ms``. Each
    chunk's timing count (of the first pass) and the re-timings' seconds (the second pass's too)."""
    full, dense, space, smallest, order = setup_
    x = full.example_input
    shape = list(x.shape)
    chunks: list[list[float]] = []
    first: list[list[float]] = []
    files: list[list[tuple[str, list[int]]]] = []
    retime_s = [0.0]
    dense_file = Path(work) / "dense.onnx"
    export_onnx(dense, dense_file, example_input=x)
    doc["dense"] = {**sums(dense_file, shape), "weight_mb": weight_mb(dense), "macs": profile(dense, x).macs}

    def retime(i: int, gap: float = 0.0, backwards: bool = False, why: str = "first pass, dense slow") -> list[float]:
        time.sleep(gap)
        t = time.perf_counter()
        own = files[i][:1] + files[i][:0:-1] if backwards else files[i]
        got = _run_timer(own, 1, 10, 5, WINDOW_S)
        got = got[:1] + got[:0:-1] if backwards else got
        retime_s[0] += time.perf_counter() - t
        doc.setdefault("retimings", []).append({"chunk": i, "dense_ms": got[0], "kept_dense_ms": chunks[i][0],
                                                "why": why, "times_ms": got,
                                                "utc": time.strftime("%H:%M:%S", time.gmtime()),
                                                "loadavg": Path("/proc/loadavg").read_text().split()[:3]})
        return got

    tries: list[int] = []
    for start in range(0, len(order), args.chunk):
        c = len(chunks)
        built = []
        for k, (role, level, policy) in enumerate(order[start:start + args.chunk]):
            path, meta = built_file(Path(args.models or work), start + k, dense, space, policy, x, full.calib)
            if "why" in meta:  # random weights: an int8 policy may fail the export's parity check
                doc.setdefault("skipped", []).append({"role": role, "policy": policy.to_dict(), "why": meta["why"]})
            else:
                built.append((str(path), {"role": role, "level": level, "policy": policy.to_dict(),
                                          "macs": meta["macs"], **sums(path, shape), "weight_mb": meta["weight_mb"],
                                          "floor": str(policy.to_dict()) == smallest,
                                          "channels": sum(policy.keep.values()),
                                          "int8_layers": sum(policy.int8.values())}))  # fmt: skip
            summed(role)
        files.append([(str(dense_file), shape)] + [(p, shape) for p, _ in built])
        chunks.append(_run_timer(files[c], 1, 10, 5, WINDOW_S))
        first.append(list(chunks[c]))
        load = Path("/proc/loadavg").read_text().split()[:3]
        for k, (_, row) in enumerate(built):
            doc["rows"].append({**row, "chunk": c, "index_in_chunk": k, "loadavg": load})
        tries = steady_chunks(chunks, retime, tries=tries, eligible=range(c))  # the newest waits for the next
        frame(doc, chunks, first, tries)
        chunked(c)
    tries = steady_chunks(chunks, lambda i: retime(i, FINAL_GAP_S), tries=tries)
    frame(doc, chunks, first, tries)
    doc["first_pass_ms"] = [list(c) for c in first]
    if passes == 2:
        second_pass(doc, chunks, retime)
    return tries, retime_s[0]


def main() -> None:
    ap = parser()
    ap.add_argument("--models", default=None, help="a folder keeping each policy's exported file across runs")
    ap.add_argument("--tables", default="s15,s14", help="node tables timed: s15 (always) and s14")
    ap.add_argument("--build-only", action="store_true", help="export the policies into --models, time nothing")
    args = ap.parse_args()
    t0 = time.perf_counter()
    full, dense, space, smallest, order = setup_ = setup(args.limit)
    if args.build_only:
        for i, (_, _, policy) in enumerate(order):
            built_file(Path(args.models), i, dense, space, policy, full.example_input, full.calib)
        return
    sums = Sums(Path(args.cache), args.tables.split(","))
    doc = new_doc()
    with tempfile.TemporaryDirectory() as work:
        tries, retime_s = time_chunks(doc, args, setup_, work, sums, lambda c: save(
            doc, args.out, t0, c, summaries(doc["rows"], doc["dense"])))  # fmt: skip
        doc["cost"] = {"node_tables": sums.cost(), "retimed_chunks": sum(t > 1 for t in tries),
                       "retimings": sum(t - 1 for t in tries), "retiming_seconds": retime_s}  # fmt: skip
        save(doc, args.out, t0, len(tries), summaries(doc["rows"], doc["dense"]))


if __name__ == "__main__":
    main()
