"""Searched vs uniform compression at the same measured ONNX Runtime latency, on Fashion-MNIST (issue 14).

For each model (trained here on Fashion-MNIST) the per-layer latency table is first checked against end-to-end
measurements of random policies (error, Kendall tau beside the MAC count's), then, for each latency budget (a
fraction of the dense model's measured latency, batch 1, 1 intra-op thread) and seed, ``deepslim.search`` runs and
its best policy and the best uniform policy (one keep ratio everywhere, float or all-int8) are fine-tuned alike,
measured on the test split and timed interleaved::

    python benchmarks/search.py --models resnet20 --budgets 0.5 --trials 40 --json results.json
    python benchmarks/search.py --speed-only --json speed.json   # ResNet-18 224², random weights

The table check reports the per-layer table, the node-level table (:mod:`deepslim.search.node_table`: every node of
ONNX Runtime's optimized graph timed alone) and the MAC count against end-to-end measurements of random policies.

The defaults are scaled to a shared 2-core machine (a Fashion-MNIST subset, a few epochs); the issue's full setting
is ``--n-train 60000 --epochs 30 --trials 200 --seeds 0,1,2 --budgets 0.5,0.3``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _common import result_header, save_json, write_result  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace, check_table, search  # noqa: E402
from deepslim.search.evaluate import Evaluator, measure_model  # noqa: E402
from deepslim.search.node_table import NodeTable  # noqa: E402

MODELS = {
    "resnet20": lambda: ds.load_model("resnet20", num_classes=10, in_channels=1),
    "mobilenet_v2": lambda: ds.load_model("mobilenet_v2", num_classes=10, in_channels=1, small_input=True,
                                          width_mult=0.5, dropout=0.0),  # fmt: skip
}


def train_dense(name: str, data: Any, epochs: int, seed: int, cache: str | None) -> torch.nn.Module:
    """The dense model trained here (kept in ``cache`` if given, keyed by the settings, for a rerun)."""
    torch.manual_seed(seed)
    net = MODELS[name]()
    file = Path(cache) / f"dense-{name}-{len(data.train.dataset)}-e{epochs}-s{seed}.pt" if cache else None
    if file is not None and file.is_file():
        net.load_state_dict(torch.load(file, weights_only=True))
        return net.eval()
    ds.fit(net, data, epochs=epochs, lr=2e-3, seed=seed)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), file)
    return net.eval()


def final_pair(ev: Evaluator, result: Any, table: LatencyTable) -> dict[str, Any]:
    """Best and uniform policies rebuilt as the recipe does, on the test split, timed interleaved."""
    rows: dict[str, Any] = {}
    nets = []
    for label in ("best", "uniform"):
        cand = getattr(result, label)
        if cand is None:
            rows[label] = None
            continue
        net, predicted = ev.build(cand.policy, "finetune" if ev.finetune_epochs > 0 else "none")
        m = measure_model(net, ev.data, split="test", macs=None)
        rows[label] = {"policy": cand.policy.to_dict(), "test_accuracy": m.accuracy, "macs": m.macs,
                       "predicted_ms": predicted}  # fmt: skip
        nets.append((label, net))
    if nets:
        times = table.measure([(n, ev.data.example_input) for _, n in nets]) or []
        for (label, _), ms in zip(nets, times, strict=True):
            rows[label]["measured_ms"] = ms
    return rows


def run_model(name: str, args: argparse.Namespace, out: dict[str, Any], path: str | None) -> None:
    data = ds.load_data("fashion-mnist", n_train=args.n_train, n_test=args.n_test, seed=0, calib_size=args.calib_size)
    t0 = time.perf_counter()
    dense = train_dense(name, data, args.epochs, 0, args.cache_dir)
    entry: dict[str, Any] = {"train_s": time.perf_counter() - t0,
                             "dense_test_accuracy": ds.evaluate(dense, data).accuracy}
    out["models"][name] = entry
    table = LatencyTable(threads=1, cache_dir=args.cache_dir)
    x = data.example_input
    space = SearchSpace.from_model(dense, x, round_to=args.round_to)
    entry["space"] = {"groups": len(space.groups), "int8_layers": len(space.int8_layers), "policies": space.size}
    if args.table_policies:
        ev = Evaluator(dense, data, space, table)
        from deepslim.search.engine import calibrate_table

        calibrate_table(ev)
        t0 = time.perf_counter()
        check = check_table(dense, space, table, example_input=x, calib_data=data.calib, policies=args.table_policies,
                            nodes=NodeTable(table))  # fmt: skip
        entry["latency_table"] = {**check.to_dict(), "seconds": time.perf_counter() - t0}
        save_json(out, path)
    entry["budgets"] = {}
    for budget in [] if args.skip_search else args.budgets:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as work:
                result = search(dense, data, space, ("accuracy", "latency"), f"latency={budget}x", trials=args.trials,
                                strategy=args.strategy, seed=seed, out_dir=work, latency_table=table,
                                finetune_epochs=args.finetune_epochs, top_k=args.top_k,
                                uniform_ratios=args.uniform_ratios)  # fmt: skip
            ev = Evaluator(dense, data, space, table, finetune_epochs=args.finetune_epochs, seed=seed)
            runs.append({"seed": seed, "limit_ms": result.limits["latency"], **final_pair(ev, result, table),
                         "cost": result.cost, "search_latency_table": {k: v for k, v in result.latency_table.items()
                                                                        if k != "rows"}})  # fmt: skip
            entry["budgets"][str(budget)] = runs
            save_json(out, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20")
    p.add_argument("--budgets", default="0.5", help="comma-separated fractions of dense latency")
    p.add_argument("--seeds", default="0")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--strategy", default="tpe")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--table-policies", type=int, default=20, help="random policies measured end to end")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--uniform-ratios", default=None, help="keep ratios of the uniform family (default: the search's)")
    p.add_argument("--calib-size", type=int, default=1024, help="images for BN re-estimation and int8 calibration")
    p.add_argument("--skip-search", action="store_true", help="only train and check the latency table")
    p.add_argument("--speed-only", action="store_true", help="ResNet-18 224² uniform vs latency-aware, speed alone")
    p.add_argument("--speed-rounds", type=int, default=20)
    p.add_argument("--speed-span", type=int, default=2, help="steps a group may move from uniform (speed-only)")
    p.add_argument("--speed-moves", type=int, default=12, help="channel moves at most (speed-only)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.uniform_ratios = [float(r) for r in args.uniform_ratios.split(",")] if args.uniform_ratios else None
    out = result_header("search", threads=1)
    out["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    out["models"] = {}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.speed_only:
        from _search_speed import speed_only

        out["speed_only"] = speed_only(LatencyTable(threads=1, cache_dir=args.cache_dir), rounds=args.speed_rounds,
                                       span=args.speed_span, max_moves=args.speed_moves)  # fmt: skip
        write_result(out, args.json)
        return
    for name in args.models.split(","):
        run_model(name, args, out, args.json)
    write_result(out, args.json)


if __name__ == "__main__":
    main()
