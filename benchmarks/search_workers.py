"""Search trials on worker processes (issue 15): trial throughput of 1 worker × 2 threads against 2 workers × 1
thread, and a worker killed mid-trial (0 trials lost, 0 run twice), on the search benchmark's model (ResNet-20 on a
Fashion-MNIST subset, the ONNX Runtime latency table)::

    python benchmarks/search_workers.py --trials 16 --pairs 2 --kills 3 --json results.json

Throughput counts the trial phase only (first trial started to last trial finished, from the study's own times):
both configurations prepare alike in the parent, and the workers' start-up (importing torch, loading the data) is
reported beside it as the wall time of the whole search. The pairs run interleaved (the order alternates), so a
shared machine's load drifts over both alike; a warm-up search fills the latency table first, so no timed run
measures layers. Strategy ``random`` with the same seed in a pair: both configurations judge policies of one kind.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _common import result_header, save_json, write_result  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace, search  # noqa: E402
from deepslim.search import storage as st  # noqa: E402

DATA = "fashion-mnist"


def train_dense(options: dict[str, Any], epochs: int, cache: str | None) -> torch.nn.Module:
    """ResNet-20 trained here as benchmarks/search.py trains it (kept in ``cache`` for a rerun); loaded by name, so
    that its file records the architecture the workers rebuild."""
    torch.manual_seed(0)
    net = ds.load_model("resnet20", num_classes=10, in_channels=1)
    file = Path(cache) / f"dense-resnet20-{options['n_train']}-e{epochs}-s0.pt" if cache else None  # any calib_size
    if file is not None and file.is_file():
        net.load_state_dict(torch.load(file, weights_only=True))
        return net.eval()
    ds.fit(net, ds.load_data(DATA, **options), epochs=epochs, lr=2e-3, seed=0)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), file)
    return net.eval()


def study_stats(url: str, trials: int) -> dict[str, Any]:
    """Trials completed, the trial phase's span, and each queued slot's fate (lost, run twice) from the study."""
    import optuna

    study = optuna.load_study(study_name="deepslim-search", storage=st.open_storage(url))
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    slots = [t.system_attrs.get("failed_trial", t.number) for t in done]
    starts = [t.datetime_start for t in done if t.datetime_start is not None]
    ends = [t.datetime_complete for t in done if t.datetime_complete is not None]
    if len(starts) < len(done) or len(ends) < len(done):  # optuna stamps both on every COMPLETE trial
        raise RuntimeError("a COMPLETE trial in the study lacks its start or completion time")
    start, end = min(starts), max(ends)
    return {"completed": len(done), "failed": sum(t.state.name == "FAIL" for t in study.get_trials()),
            "trial_phase_s": (end - start).total_seconds(), "lost": trials - len(set(slots)),
            "run_twice": len(slots) - len(set(slots)),
            "workers_seen": len({t.system_attrs[st.HOLDER_ATTR]["pid"] for t in done})}  # fmt: skip


def kill_one_worker(url: str, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first worker seen running a trial, 0.3 s into it."""
    import optuna

    storage = st.open_storage(url)
    while not stop.is_set():
        try:
            study = optuna.load_study(study_name="deepslim-search", storage=storage)
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            running = []
        for t in running:
            holder = t.system_attrs.get(st.HOLDER_ATTR)
            if holder and holder["pid"] != os.getpid():
                time.sleep(0.3)
                os.kill(holder["pid"], signal.SIGKILL)
                killed.append(t.number)
                return
        stop.wait(0.1)


def one_run(dense: torch.nn.Module, space: SearchSpace, table: LatencyTable, args: argparse.Namespace, *,
            workers: int, threads: int, seed: int, kill: bool = False) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        url = f"journal:{Path(work) / 'study.journal'}"
        torch.set_num_threads(threads if workers == 1 else 1)
        stop = threading.Event()
        killed: list[int] = []  # the number of the trial whose worker was killed
        killer = threading.Thread(target=kill_one_worker, args=(url, stop, killed), daemon=True)
        if kill:
            killer.start()
        start, load0 = time.perf_counter(), os.getloadavg()
        try:
            search(dense, DATA, space, ("accuracy", "latency"), "latency=0.6x", trials=args.trials, strategy="random",
                   seed=seed, out_dir=work, storage=url, latency_table=table, finetune_epochs=0, top_k=1,
                   check_every=0, uniform_ratios=(1.0, 0.5), workers=workers, threads=threads,
                   data_options=args.data_options)  # fmt: skip
        finally:
            stop.set()
        row = {"workers": workers, "threads": threads, "seed": seed, "wall_s": time.perf_counter() - start,
               "load_before": load0, "load_after": os.getloadavg(), **study_stats(url, args.trials)}  # fmt: skip
        row["trials_per_s"] = row["completed"] / row["trial_phase_s"]
        if kill:
            row["killed_trial"] = killed[0] if killed else None
        print(row, flush=True)
        return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--pairs", type=int, default=2, help="interleaved pairs of (1 worker x 2 threads, 2 workers x 1)")
    p.add_argument("--kills", type=int, default=3, help="runs of 2 workers with one killed mid-trial")
    p.add_argument("--kill-trials", type=int, default=6, help="trials of each run with a killed worker")
    p.add_argument("--keep-ratios", default="1.0,0.5", help="channel keep ratios of the space")
    p.add_argument("--calib-size", type=int, default=64, help="images of the batch-norm re-estimation")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--cache-dir", default=None, help="dense model and latency table cache")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.data_options = {"n_train": args.n_train, "n_test": args.n_test, "seed": 0, "calib_size": args.calib_size}
    out = result_header("search_workers", threads=1)
    out["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dense = train_dense(args.data_options, args.epochs, args.cache_dir)
    data = ds.load_data(DATA, **args.data_options)
    ratios = tuple(float(r) for r in args.keep_ratios.split(","))
    space = SearchSpace.from_model(dense, data.example_input, keep_ratios=ratios)
    table = LatencyTable(threads=1, cache_dir=args.cache_dir)
    out["space"] = {"groups": len(space.groups), "int8_layers": len(space.int8_layers), "policies": space.size}
    out["warm_up"] = one_run(dense, space, table, args, workers=1, threads=1, seed=100)
    out["pairs"] = []
    for i in range(args.pairs):
        order = [(1, 2), (2, 1)] if i % 2 == 0 else [(2, 1), (1, 2)]
        runs = {f"{w}x{t}": one_run(dense, space, table, args, workers=w, threads=t, seed=i) for w, t in order}
        runs["ratio"] = runs["2x1"]["trials_per_s"] / runs["1x2"]["trials_per_s"]
        runs["wall_ratio"] = runs["1x2"]["wall_s"] / runs["2x1"]["wall_s"]
        out["pairs"].append(runs)
        save_json(out, args.json)
    pair_ratios = [r["ratio"] for r in out["pairs"]]
    out["throughput_ratio_median"] = statistics.median(pair_ratios) if pair_ratios else None
    args.trials = args.kill_trials
    out["kills"] = [one_run(dense, space, table, args, workers=2, threads=1, seed=50 + i, kill=True)
                    for i in range(args.kills)]  # fmt: skip
    out["kills_lost"] = sum(r["lost"] for r in out["kills"])
    out["kills_run_twice"] = sum(r["run_twice"] for r in out["kills"])
    write_result(out, args.json)


if __name__ == "__main__":
    main()
