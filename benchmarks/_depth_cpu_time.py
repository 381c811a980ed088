"""The depth search's models timed by thread CPU time: the "thread CPU time" table of session 12's depth search
(issue 14, helper DEP), for a machine too loaded (load > 3) for wall-clock ratios.

Rebuilds, from the committed results of the ResNet-20 depth searches (``search_session12_depth.json`` at 0.5×, and
``search_session12_depth_b03.json`` at 0.3× if present), the dense model, the searched 0.5× policy, the uniform floor,
the searched 0.3× policy and the smallest policy of the space. Latency depends on the graph, not the weights, so the
models are built unrecovered. Each is exported as the runtime runs it (int8 QDQ) and timed in ONNX Runtime on one
thread by ``_cpu_timer.py``: 3 processes, one after another, each 20 rounds × 5 runs with 2 sessions per file,
the order reversed every other process. It prints each model's median CPU time as a fraction of dense's in the same
process. It then recovers the 0.5× search's trial 0 (3 blocks dropped) as the finalists were (1 epoch on 5,000 images,
seed 0) and prints its test accuracy. The dense weights come from
``python benchmarks/_search_train.py --models resnet20 --epochs 10 --cache-dir /tmp/b12``::

    OMP_NUM_THREADS=1 python benchmarks/_depth_cpu_time.py --json /tmp/cpu_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _search_train import MODELS, subset_bundle
from deepslim.search import LatencyTable, SearchSpace
from deepslim.search.evaluate import Evaluator
from deepslim.search.space import Policy

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    ap.add_argument("--checkpoint", default="/tmp/b12/dense-resnet20-sgd1cyc-aug-e10-lr0.1-s0.pt")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder of the searches' JSON")
    ap.add_argument("--json", help="write the timings here")
    args = ap.parse_args()
    net = MODELS["resnet20"]()
    net.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    net.eval()
    data = ds.load_data("fashion-mnist", seed=0, calib_size=1024)
    space = SearchSpace.from_model(net, data.example_input, round_to=8, kinds=("prune", "int8", "depth"))
    searched = json.loads(Path(args.results, "search_session12_depth.json").read_text())
    half = searched["models"]["resnet20"]["budgets"]["0.5"][0]
    pols = [("dense", space.dense()), ("searched_0.5x", Policy.from_dict(half["final"]["best"]["policy"])),
            ("uniform_floor", Policy.from_dict(half["final"]["uniform"]["policy"]))]  # fmt: skip
    b03 = Path(args.results, "search_session12_depth_b03.json")
    if b03.exists():
        final = json.loads(b03.read_text())["models"]["resnet20"]["budgets"].get("0.3", [{}])[0].get("final") or {}
        if final.get("best"):
            pols.append(("searched_0.3x", Policy.from_dict(final["best"]["policy"])))
    pols.append(("smallest", space.smallest(False)))
    out: dict[str, Any] = {"names": [n for n, _ in pols], "runs": [], "loadavg": []}
    with tempfile.TemporaryDirectory() as tmp:
        ev = Evaluator(net, data, space, LatencyTable(threads=1))
        files = []
        for name, policy in pols:
            model, _ = ev.build(policy, "none")
            ds.export_onnx(model, f"{tmp}/{name}.onnx", example_input=data.example_input)
            files.append([f"{tmp}/{name}.onnx", list(data.example_input.shape)])
        for r in range(3):
            order = list(range(len(files)))[:: 1 if r % 2 == 0 else -1]
            cmd = json.dumps({"files": files, "rounds": 20, "block": 5, "order": order, "copies": 2})
            run = subprocess.run([sys.executable, str(HERE / "_cpu_timer.py")], input=cmd, capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)  # fmt: skip
            times = json.loads(run.stdout)["cpu_median_ms"]
            out["runs"].append(times)
            out["loadavg"].append(os.getloadavg())
            ratios = {n: round(t / times[0], 3) for n, t in zip(out["names"], times, strict=True)}
            print(ratios, [round(t, 4) for t in times], flush=True)
    trial0 = next(c for c in half["pareto_feasible"] if c["trial"] == 0)
    ev0 = Evaluator(net, subset_bundle(data, 5000, 1000), space, LatencyTable(threads=1), finetune_epochs=1, seed=0)
    model0, _ = ev0.build(Policy.from_dict(trial0["policy"]), "finetune")
    out["trial0"] = {"policy": trial0["policy"], "test_accuracy": ds.evaluate(model0, data, split="test").accuracy}
    print("trial 0", trial0["policy"].get("drop"), out["trial0"]["test_accuracy"], os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
