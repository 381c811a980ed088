"""Re-run a search benchmark's final recovery in a fresh process: ``best`` and ``uniform`` of a
benchmarks/search.py result, each fine-tuned as its final comparison does (the result's settings: fine-tune epochs,
distillation temperature, the search's training subset; recovery seeds given) and scored on the 10,000 test images,
with a checksum of the weights so that two seeds giving one accuracy can be told apart from one model (issue 14,
session 9; session 12: any model and space of the result, the dense model from ``--pretrained`` or from
_search_train.py's cache)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/_search_final9.py RESULT.json 0.3 0,1,2 OUT.json

Session 13: ``--front-trial N`` recovers the search's Pareto-front trial N in place of ``best`` (a front policy the
finals passed over, judged alike), and ``--interleaves K`` then times dense, it and uniform (the last seed's models)
interleaved in ONNX Runtime, K runs of ``--rounds`` rounds: the ratios of one frame.

Session 15: ``--finalists`` recovers every searched finalist of the result instead (its trial numbers are the
labels) and scores each on three sets: the search's validation images (what the finals chose on), the held-out
rest of the validation split (``select_accuracy``: images neither the proxy, the recovery nor the dense model's
training saw, five times as many with the usual ``--search-n-val 1000``) and the test split — whether more
held-out images would have ordered the finalists as their test accuracies do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deepslim as ds  # noqa: E402
from _search_train import MODELS, recipe_key, subset_bundle  # noqa: E402
from deepslim.search import LatencyTable, SearchSpace  # noqa: E402
from deepslim.search.evaluate import Evaluator  # noqa: E402
from deepslim.search.latency import time_models  # noqa: E402
from deepslim.search.space import Policy  # noqa: E402
from search import PRETRAINED_ARCH, held_out_val  # noqa: E402


def setup(result: str, budget: str, cache_dir: str | None = None) -> tuple[Any, ...]:
    """What a benchmarks/search.py result was searched with, rebuilt: (settings, the budget's run, the full data,
    the search's data subset, the dense model, the space, the latency table)."""
    doc_in = json.loads(Path(result).read_text())
    settings = doc_in["settings"]
    (name,) = doc_in["models"]  # one model per result file
    run = doc_in["models"][name]["budgets"][budget][0]
    torch.set_num_threads(1)
    full = ds.load_data("fashion-mnist", seed=0, calib_size=settings["calib_size"])
    data = subset_bundle(full, settings["search_n_train"] or None, settings["search_n_val"] or None)
    if settings["pretrained"]:  # a checkpoint given with --pretrained (session 6's architecture)
        dense, weights = PRETRAINED_ARCH[name](), Path(settings["pretrained"])
    else:  # the dense model _search_train.py trained into --cache-dir
        key = recipe_key(settings["epochs"], settings.get("train_lr", 0.1), 0)
        dense, weights = MODELS[name](), Path(settings["cache_dir"]) / f"dense-{name}-{key}.pt"
    dense.load_state_dict(torch.load(weights, weights_only=True))
    dense.eval()
    kinds = tuple(settings.get("space", "prune").split(","))
    space = SearchSpace.from_model(dense, data.example_input, round_to=settings["round_to"], kinds=kinds)
    table = LatencyTable(threads=1, cache_dir=cache_dir or settings["cache_dir"])
    return settings, run, full, data, dense, space, table


def main() -> None:
    p = argparse.ArgumentParser(description="re-run a search benchmark's final recovery in a fresh process")
    p.add_argument("result"), p.add_argument("budget"), p.add_argument("seeds"), p.add_argument("out")
    p.add_argument("--front-trial", type=int, default=None, help="recover this Pareto-front trial instead of best")
    p.add_argument("--interleaves", type=int, default=0, help="timing runs of dense, searched, uniform (0: none)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--finalists", action="store_true",
                   help="recover every searched finalist; score each on the search's val, the held-out rest of the "
                        "val split and the test split")  # fmt: skip
    args = p.parse_args()
    seeds, out = [int(s) for s in args.seeds.split(",")], Path(args.out)
    settings, run, full, data, dense, space, table = setup(args.result, args.budget)
    if args.finalists:
        finalists(args.result, run, settings, full, data, dense, space, table, seeds, out)
        return
    doc: dict = {"source": args.result, "budget": args.budget, "front_trial": args.front_trial,
                 "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
                 "started": time.strftime("%H:%M:%S"), "rows": {}}  # fmt: skip
    nets, held_out = {"dense": dense}, held_out_val(full, data)
    for label in ("best", "uniform"):
        policy = Policy.from_dict(_policy_doc(run, label, args.front_trial))
        rows = doc["rows"].setdefault(label, [])
        for seed in seeds:
            t0 = time.perf_counter()
            ev = Evaluator(dense, data, space, table, finetune_epochs=settings["finetune_epochs"], seed=seed,
                           temperature=settings["temperature"])  # fmt: skip
            net, _ = ev.build(policy, "finetune")
            nets[label] = net
            rows.append({"seed": seed, "test_accuracy": ds.evaluate(net, full, split="test").accuracy,
                         "val_accuracy": ds.evaluate(net, data, split="val").accuracy,
                         "select_accuracy": None if held_out is None else ds.evaluate(net, held_out).accuracy,
                         "weight_checksum": float(sum(p.detach().double().abs().sum() for p in net.parameters())),
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            out.write_text(json.dumps(doc, indent=1))
    if args.interleaves:
        doc["timing"] = timing(nets, full.example_input, args.interleaves, args.rounds)
    doc["loadavg_after"], doc["finished"] = Path("/proc/loadavg").read_text().split()[:3], time.strftime("%H:%M:%S")
    out.write_text(json.dumps(doc, indent=1))


def finalists(source: str, run: dict[str, Any], settings: dict[str, Any], full: Any, data: Any, dense: Any,
              space: Any, table: Any, seeds: list[int], out: Path) -> None:  # fmt: skip
    """Every searched finalist of ``run`` recovered with each seed (as the finals recover it: the result's fine-tune
    settings; seed = the search's seed reproduces the finals' own model) and scored on the search's val images, the
    held-out rest of the val split and the test split; written to ``out`` after each."""
    held_out = held_out_val(full, data)
    if held_out is None:
        raise SystemExit("the search judged on the whole validation split: no held-out images are left")
    doc: dict[str, Any] = {"source": source, "finalists": True, "select_images": len(held_out.dataset),
                           "val_images": len(data.val.dataset), "loadavg_before": Path("/proc/loadavg").read_text()
                           .split()[:3], "started": time.strftime("%H:%M:%S"), "rows": {}}  # fmt: skip
    for cand in (c for c in run["finalists"] if c["trial"] is not None):
        rows = doc["rows"].setdefault(str(cand["trial"]), [])
        for seed in seeds:
            t0 = time.perf_counter()
            ev = Evaluator(dense, data, space, table, finetune_epochs=settings["finetune_epochs"], seed=seed,
                           temperature=settings["temperature"])  # fmt: skip
            net, _ = ev.build(Policy.from_dict(cand["policy"]), "finetune")
            rows.append({"seed": seed, "finals_val_accuracy": finals_val_accuracy(cand),
                         "val_accuracy": ds.evaluate(net, data, split="val").accuracy,
                         "select_accuracy": ds.evaluate(net, held_out).accuracy,
                         "test_accuracy": ds.evaluate(net, full, split="test").accuracy,
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            out.write_text(json.dumps(doc, indent=1))
    doc["loadavg_after"], doc["finished"] = Path("/proc/loadavg").read_text().split()[:3], time.strftime("%H:%M:%S")
    out.write_text(json.dumps(doc, indent=1))


def finals_val_accuracy(cand: dict[str, Any]) -> float | None:
    """A finalist's accuracy on the search's validation images as its search.json records it: ``accuracy``, or, when
    the finals scored it on held-out images (``--select-held-out``), the ``val_accuracy`` kept beside that score."""
    return cand.get("measurement", {}).get("extra", {}).get("val_accuracy", cand["accuracy"])


def _policy_doc(run: dict[str, Any], label: str, front_trial: int | None) -> dict[str, Any]:
    """The policy recovered as ``label``: the result's final one, or for "best" the front's trial ``front_trial``."""
    if label == "uniform" or front_trial is None:
        return run["final"][label]["policy"]
    found = [c["policy"] for c in run["pareto_feasible"] if c["trial"] == front_trial]
    if not found:
        front = [c["trial"] for c in run["pareto_feasible"]]
        raise SystemExit(f"trial {front_trial} is not on the result's front: {front}")
    return found[0]


def timing(nets: dict[str, Any], x: Any, interleaves: int, rounds: int) -> dict[str, Any]:
    """The models timed interleaved, ``interleaves`` runs: each one's ms per run, ratio to dense and searched over
    uniform run by run (with the load average before each run)."""
    runs, loads = [], []
    for _ in range(interleaves):
        loads.append(Path("/proc/loadavg").read_text().split()[:3])
        runs.append(time_models([(n, x) for n in nets.values()], threads=1, rounds=rounds))
    ms = {label: [r[i] for r in runs] for i, label in enumerate(nets)}
    found: dict[str, Any] = {"ms": ms, "loadavg": loads}
    found["ratio_to_dense"] = {k: [a / b for a, b in zip(v, ms["dense"], strict=True)] for k, v in ms.items()}
    found["searched_over_uniform"] = [a / b for a, b in zip(ms["best"], ms["uniform"], strict=True)]
    return found


if __name__ == "__main__":
    main()
