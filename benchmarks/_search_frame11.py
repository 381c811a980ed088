"""Why the search's timing and the finals' disagreed on 4 of 8 Pareto-front policies (issue 14, session 11).

The ``measured`` latency model judges a trial by its ratio to dense in a *pair* run (the dense model's TorchScript
file and the trial's, after the proxy's fine-tune: :class:`deepslim.search._timing.PairTimer`, 10 rounds × 5 runs);
the finals time the toolkit's export of dense, the finalists and the front's other (unrecovered) models *all in one
process* (10 rounds × 5 runs). This rebuilds the front policies of a benchmarks/search.py result and times each of
them every way at once, repetition after repetition (so load hits every condition alike)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_frame11.py RESULT.json 0.3 OUT.json [REPS] [CACHE_DIR]

Conditions per policy (ratio policy / dense, each pair in the same run):
- ``pair_ts_steps``: the search's own frame and file (TorchScript, proxy-recovered weights);
- ``pair_ts_none`` / ``pair_tk_none``: the pair frame with the unrecovered model (weights as the finals time them),
  TorchScript or the toolkit's export (``export_onnx``);
- ``multi_tk_none`` / ``multi_ts_none``: every front model, the uniform finalist and dense in one process, as the
  finals do, with either export;
- ``alone_tk_none``: each file alone in its own process (dense and the policy alternating): one model per process,
  as a deployment runs it.

Timed back to back (``window_s=0.0`` pinned): the protocol of the recorded numbers (session 14's timer can spread
its rounds over a window).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_final9 import setup  # noqa: E402
from deepslim.export import export_onnx  # noqa: E402
from deepslim.search._timing import _torchscript  # noqa: E402
from deepslim.search.evaluate import Evaluator  # noqa: E402
from deepslim.search.latency import _run_timer  # noqa: E402
from deepslim.search.space import Policy  # noqa: E402

PAIR = (10, 5)  # the search's PairTimer: rounds, block
MULTI = (10, 5)  # the finals: time_models_runs' defaults (the benchmark's own final comparison uses 20 rounds)


def ops(path: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for n in onnx.load(path).graph.node:
        found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def optimized_ops(path: str) -> dict[str, int]:
    """The op counts of the graph ONNX Runtime runs (its optimized model at ORT_ENABLE_ALL, as the timer sets)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as work:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(work) / "opt.onnx")
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return ops(opts.optimized_model_filepath)


def export_all(ev: Evaluator, names: dict[str, Policy], x: torch.Tensor, work: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for name, policy in names.items():
        recoveries = ("none", "steps") if name not in ("dense", "uniform") else ("none",)
        for rec in recoveries:
            net, _ = ev.model_and_keys(policy, rec) if name != "dense" else (ev.model, None)
            net.eval()
            _torchscript(net, x, work / f"{name}_ts_{rec}.onnx")
            files[f"{name}_ts_{rec}"] = str(work / f"{name}_ts_{rec}.onnx")
            if rec == "none":
                export_onnx(net, work / f"{name}_tk_none.onnx", example_input=x)
                files[f"{name}_tk_none"] = str(work / f"{name}_tk_none.onnx")
            print(name, rec, time.strftime("%H:%M:%S"), flush=True)
    return files


def one_rep(files: dict[str, str], fronts: list[str], shape: list[int]) -> dict[str, dict[str, float]]:
    """Every condition once; {condition: {policy: ratio}}."""
    out: dict[str, dict[str, float]] = {}

    def pair(cond: str, a: str, b: str, p: str) -> None:
        t = _run_timer([(files[a], shape), (files[b], shape)], 1, *PAIR, 0.0)
        out.setdefault(cond, {})[p] = t[1] / t[0]

    for p in fronts:
        pair("pair_ts_steps", "dense_ts_none", f"{p}_ts_steps", p)
        pair("pair_ts_none", "dense_ts_none", f"{p}_ts_none", p)
        pair("pair_tk_none", "dense_tk_none", f"{p}_tk_none", p)
        d0 = _run_timer([(files["dense_tk_none"], shape)], 1, *PAIR, 0.0)[0]
        t = _run_timer([(files[f"{p}_tk_none"], shape)], 1, *PAIR, 0.0)[0]
        d1 = _run_timer([(files["dense_tk_none"], shape)], 1, *PAIR, 0.0)[0]
        out.setdefault("alone_tk_none", {})[p] = t / ((d0 + d1) / 2)
    for kind in ("tk", "ts"):
        names = ["dense", *fronts, "uniform"]
        times = _run_timer([(files[f"{n}_{kind}_none"], shape) for n in names], 1, *MULTI, 0.0)
        out[f"multi_{kind}_none"] = {n: times[i] / times[0] for i, n in enumerate(names) if n != "dense"}
        out[f"multi_{kind}_none_dense_ms"] = {"dense": times[0]}
    return out


def finals_ratios(doc: dict[str, Any], latency_table: dict[str, Any],
                  finalist: bool = False) -> tuple[list[float], bool]:  # fmt: skip
    """A re-measured model's time over the dense model's in each of its runs, and whether those dense runs are its
    own. Its own: the dense runs its verdict kept (``dense_repeats_ms``, both readings of a model read twice), or,
    in files before session 18, the finals' dense runs (``dense_remeasured_ms``) for a ``finalist``, timed with it.
    A front entry of such a file was timed in the front's own runs (since session 11), whose dense times the file
    does not keep: its runs over the median of the finals' dense runs, flagged not its own (review R2 18 L3). A run
    not measured (null in the JSON, either time) is left out (L5)."""
    reps, dense = doc["repeats_ms"], doc.get("dense_repeats_ms")
    own = bool(dense) or finalist
    if not dense:
        dense = latency_table["dense_remeasured_ms"]
        if not finalist:
            dense = [statistics.median(d for d in dense if d is not None)] * len(reps)
    return [r / d for r, d in zip(reps, dense, strict=True) if r is not None and d is not None], own


def main() -> None:
    result, budget, out_path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    settings, run, full, data, dense, space, table = setup(result, budget, sys.argv[5] if len(sys.argv) > 5 else None)
    ev = Evaluator(dense, data, space, table, finetune_epochs=settings["finetune_epochs"], seed=0,
                   proxy_steps=settings["proxy_steps"], proxy_lr=settings["proxy_lr"],
                   temperature=settings["temperature"])  # fmt: skip
    front = {f"t{c['trial']}": Policy.from_dict(c["policy"]) for c in run["pareto_feasible"]}
    names = {"dense": space.dense(), **front, "uniform": Policy.from_dict(run["final"]["uniform"]["policy"])}
    doc: dict[str, Any] = {"source": result, "budget": budget, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "reps": [],
                           "recorded": {f"t{c['trial']}": {
                               "search_median": c["measurement"]["extra"]["measured_runs"]["median"],
                               "search_ratios": c["measurement"]["extra"]["measured_runs"]["ratios"],
                               **dict(zip(("finals_ratios", "finals_dense_own"),
                                          finals_ratios(c["remeasured"], run["search_latency_table"]), strict=True)),
                               "verdict": c["remeasured"]["verdict"],
                               "tail": c["policy"]["keep"].get("features.18.0"),
                               "channels": sum(c["policy"]["keep"].values())} for c in run["pareto_feasible"]}}
    with tempfile.TemporaryDirectory(prefix="s11-frame-") as work:
        files = export_all(ev, names, data.example_input, Path(work))
        doc["graphs"] = {k: {"ops": ops(f), "optimized_ops": optimized_ops(f)} for k, f in files.items()
                         if k.startswith(("dense", "t49", "t199")) and "steps" not in k}  # fmt: skip
        shape = list(data.example_input.shape)
        for r in range(reps):
            doc["reps"].append(one_rep(files, list(front), shape))
            print("rep", r, time.strftime("%H:%M:%S"), Path("/proc/loadavg").read_text().split()[:3], flush=True)
            out_path.write_text(json.dumps(doc, indent=1))
    conds = [c for c in doc["reps"][0] if not c.endswith("dense_ms")]
    doc["median"] = {c: {p: statistics.median(rep[c][p] for rep in doc["reps"]) for p in doc["reps"][0][c]}
                     for c in conds}  # fmt: skip
    doc["loadavg_after"], doc["finished"] = Path("/proc/loadavg").read_text().split()[:3], time.strftime("%H:%M:%S")
    out_path.write_text(json.dumps(doc, indent=1))
    for p in front:
        rec = doc["recorded"][p]
        print(p, rec["verdict"], "tail", rec["tail"], "search", round(rec["search_median"], 3), "finals",
              round(statistics.median(rec["finals_ratios"]), 3),
              {c: round(doc["median"][c][p], 3) for c in conds})  # fmt: skip


if __name__ == "__main__":
    main()
