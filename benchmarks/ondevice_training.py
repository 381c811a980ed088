"""On-device training memory, planned and measured, and what the memory-efficient modes cost in accuracy (issue 16).

Sections (``--only`` picks some; all by default):

- ``planner``: 5 models × 4 regimes (full, bias, last, sparse) × 2 batch sizes, stock PyTorch modules: the planner's
  saved-for-backward bytes against the ``saved_tensors_hooks`` oracle and its peak against the allocation trace of a
  real steady-state Adam step (``measure_peak_bytes``).
- ``transfer``: a MobileNetV2-style CNN pretrained on Fashion-MNIST (real images, Debian ``dataset-fashion-mnist``;
  ``--pretrained FILE`` caches the weights) adapted to the 5,000 real MNIST digits (``mnist-5k``): full
  fine-tuning, stock bias-only (the "< 10%" anchor), last layer, efficient bias-only, TinyTL and sparse update
  (budgeted at bias-only's peak); saved bytes (planner and oracle), peak (planner and allocation trace), step time
  (interleaved) and test accuracy after ``--epochs`` at each of ``--lrs``, the rate chosen per mode on validation.
- ``mobilenet``: MobileNetV2 (width 1.0, 128², batch 8): full vs stock bias vs TinyTL memory at a realistic size,
  with the peak RSS of a fresh process per mode that loads the model and runs 3 Adam steps.
- ``checkpoint``: √n gradient checkpointing of MobileNetV2's blocks: saved bytes and step time, interleaved.

Run: ``nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ondevice_training.py --out results.json``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from deepslim._io import atomic_path
from deepslim.analysis.training import measure_peak_bytes, measure_saved_bytes, training_profile
from deepslim.data import load_data
from deepslim.models import load_model
from deepslim.train import evaluate, fit
from deepslim.train.ondevice import (
    bias_only_,
    checkpoint_sequential_,
    plan_sparse_update,
    recalibrate_statistics_,
    sparse_update_,
    tinytl_,
)

MB = 2**20
PLANNER_MODELS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "lenet5": ({}, (1, 28, 28)),
    "resnet20": ({}, (3, 32, 32)),
    "mobilenet_v2": ({"width_mult": 0.5, "num_classes": 10, "input_size": 32}, (3, 32, 32)),
    "shufflenet_v2": ({"width_mult": 0.5, "num_classes": 10, "input_size": 32}, (3, 32, 32)),
    "vit_tiny": ({"depth": 2}, (3, 32, 32)),
}
REGIMES = {"full": "all", "bias": "bias", "last": "last", "sparse": "sparse:bias:4,weight:2"}


def _load(name: str, options: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    return load_model(name, **options)


def planner_rows(batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for name, (options, shape) in PLANNER_MODELS.items():
        model = _load(name, options)
        for batch in batches:
            x = torch.randn(batch, *shape)
            for regime, trainable in REGIMES.items():
                prof = training_profile(model, x, trainable=trainable)
                oracle = measure_saved_bytes(model, x, trainable=trainable)
                peak = measure_peak_bytes(copy.deepcopy(model), x, trainable=trainable)
                rows.append({"model": name, "batch": batch, "regime": regime, "planned_saved": prof.saved_bytes,
                             "oracle_saved": oracle, "saved_err": prof.saved_bytes / oracle - 1,
                             "planned_peak": prof.peak_bytes, "measured_peak": peak,
                             "peak_err": prof.peak_bytes / peak - 1})  # fmt: skip
                print(f"planner {name:14} b{batch:<3} {regime:6} saved {rows[-1]['saved_err']:+.4%} "
                      f"peak {rows[-1]['peak_err']:+.2%}", flush=True)  # fmt: skip
    return rows


def _transfer_model(width: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return load_model("mobilenet_v2", width_mult=width, num_classes=10, in_channels=1, input_size=28)


def pretrain(epochs: int, cache: str | None, n_train: int | None = None, width: float = 0.5) -> nn.Module:
    """The transfer task's base: MobileNetV2 (``width``) trained on Fashion-MNIST (``n_train`` images, default all
    60,000).

    ``cache`` (a .pt file) keeps the weights, so reruns skip the pretraining; it is written atomically.
    """
    source = load_data("fashion-mnist", n_train=n_train, batch_size=128)
    model = _transfer_model(width)
    if cache and Path(cache).is_file():
        model.load_state_dict(torch.load(cache))
    else:
        fit(model, source, epochs=epochs, lr=3e-3, seed=0, threads=1,
            on_epoch=lambda m: print(f"pretrain epoch {m}", flush=True))
        if cache:
            with atomic_path(cache) as tmp:
                torch.save(model.state_dict(), tmp)
    print(f"pretrained on fashion-mnist: test accuracy {evaluate(model, source).accuracy:.2%}", flush=True)
    return model


TRANSFER_MODES = ("full", "stock-bias", "last", "bias", "tinytl", "sparse")


def _tinytl_options(mode: str) -> dict[str, Any]:
    """``tinytl+expand=2,mix=1`` → the keyword arguments of ``tinytl_`` (numbers as floats or ints)."""
    _, _, spec = mode.partition("+")
    options: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        options[key] = float(value) if "." in value else int(value)
    return options


def _convert(model: nn.Module, mode: str, data: Any, x: torch.Tensor, recalibrate: int = 0) -> nn.Module:
    """A copy of ``model`` converted for ``mode``, with ``requires_grad`` set on what trains.

    The efficient modes (bias, tinytl, sparse) freeze batch norm; ``recalibrate`` > 0 first re-estimates its
    statistics on that many training batches of the new task (no gradients). ``sparse`` gets as its budget
    efficient bias-only's peak: the lower of its planned and its measured peak, so that its measured peak can be
    compared with bias-only's at the same memory. ``tinytl+KEY=VALUE,...`` passes options to ``tinytl_``.
    """
    m = copy.deepcopy(model)
    if mode in ("full", "stock-bias", "last"):
        last = [n for n, mod in m.named_modules() if any(True for _ in mod.parameters(recurse=False))][-1]
        for n, p in m.named_parameters():
            p.requires_grad_(mode == "full" or (mode == "stock-bias" and n.endswith(".bias"))
                             or (mode == "last" and n.rsplit(".", 1)[0] == last))  # fmt: skip
        return m
    if recalibrate:
        recalibrate_statistics_(m, [inputs for inputs, _ in itertools.islice(data.train, recalibrate)])
    if mode == "bias":
        return bias_only_(m)
    if mode.startswith("tinytl"):
        return tinytl_(m, example_input=x, **_tinytl_options(mode))
    bias_only_(m)  # efficient layers; the plan then picks what trains
    budget = min(training_profile(m, x, trainable="current").peak_bytes,
                 measure_peak_bytes(copy.deepcopy(m), x, trainable="current"))  # fmt: skip
    batches = [next(iter(data.train)) for _ in range(4)]
    plan = plan_sparse_update(m, batches, F.cross_entropy, budget_bytes=budget, example_batch=x, optimizer="adam")
    return sparse_update_(m, plan)


def _step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    times = []
    model.train()
    for _ in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def transfer_rows(base: nn.Module, batch: int, epochs: int, lrs: tuple[float, ...],
                  modes: tuple[str, ...] = TRANSFER_MODES, recalibrate: int = 0, seeds: tuple[int, ...] = (0,),
                  done: Any = None, memory_only: tuple[str, ...] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """Memory of each mode (planned, oracle, trace), step time (interleaved), and accuracy after ``epochs`` at each
    of ``lrs`` and ``seeds``: the learning rate is chosen per mode by mean validation accuracy over the seeds, and
    the mean test accuracy at that rate is reported. ``done(rows)`` is called after each mode's runs (to save)."""
    data = load_data("mnist-5k", batch_size=batch)
    x, y = next(iter(data.train))
    rows, models = [], {}
    for mode in modes:  # MODE@N: recalibrate batch norm on N batches first (efficient modes), overriding the default
        kind, _, count = mode.partition("@")
        recal = (int(count) if count else recalibrate) if kind.startswith(("bias", "tinytl", "sparse")) else 0
        model = models[mode] = _convert(base, kind, data, x, recal)
        prof = training_profile(model, x, trainable="current")
        rows.append({"mode": kind + (" (recal.)" if recal else ""), "key": mode, "recalibrated_batches": recal,
                     "planned_saved": prof.saved_bytes,
                     "oracle_saved": measure_saved_bytes(model, x, trainable="current"),
                     "planned_peak": prof.peak_bytes,
                     "measured_peak": measure_peak_bytes(copy.deepcopy(model), x, trainable="current"),
                     "trainable_params": prof.trainable_bytes // 4, "step_s": []})  # fmt: skip
        print(f"transfer {mode}: planned peak {prof.peak_bytes} measured {rows[-1]['measured_peak']}", flush=True)
    for _ in range(3):  # interleaved: the machine is shared
        for row in rows:
            row["step_s"].append(_step_seconds(copy.deepcopy(models[row["key"]]), x, y, steps=3))
    for row in rows:
        row["step_s"] = sorted(row["step_s"])[1]
        print(f"transfer {row['mode']}: step {row['step_s'] * 1e3:.1f} ms", flush=True)
    for row in rows:
        if row["key"] in memory_only:
            continue
        row["runs"] = []
        for lr in lrs:
            for seed in seeds:
                model = copy.deepcopy(models[row["key"]])
                result = fit(model, data, epochs=epochs, lr=lr, seed=seed, threads=1)
                row["runs"].append({"lr": lr, "seed": seed, "best_val": result.best_val_accuracy,
                                    "best_epoch": result.best_epoch,
                                    "test": evaluate(model, data, threads=1).accuracy})  # fmt: skip
                print(f"transfer {row['mode']:10} lr {lr:g} seed {seed}: val {result.best_val_accuracy:.2%} "
                      f"test {row['runs'][-1]['test']:.2%}", flush=True)  # fmt: skip

        def mean(key: str, lr: float, runs: list[dict[str, Any]] = row["runs"]) -> float:
            values = [r[key] for r in runs if r["lr"] == lr]
            return sum(values) / len(values)

        best = max(lrs, key=lambda lr: mean("best_val", lr))  # chosen on validation, reported on test
        tests = [r["test"] for r in row["runs"] if r["lr"] == best]
        row.update(accuracy=mean("test", best), accuracy_min=min(tests), accuracy_max=max(tests), lr=best,
                   best_val=mean("best_val", best), epochs=epochs, seeds=list(seeds))  # fmt: skip
        print(f"transfer {row['mode']:10} saved {row['oracle_saved'] / MB:7.3f} MB peak "
              f"{row['measured_peak'] / MB:7.3f} MB (plan {row['planned_peak'] / MB:7.3f}) acc {row['accuracy']:.2%} "
              f"(lr {row['lr']:g}) step {row['step_s'] * 1e3:.1f} ms", flush=True)  # fmt: skip
        if done is not None:
            done([r for r in rows if "accuracy" in r or r["key"] in memory_only])
    return rows


def fresh_rss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Peak resident memory of a fresh process that loads ``model`` and runs 3 Adam steps: before the first step
    (interpreter, torch, the model and batch) and after the steps (the whole process's peak).

    Read from ``VmHWM`` (the high-water mark of the process's own address space), not ``ru_maxrss``: Linux carries
    ``ru_maxrss`` over from the parent through fork and exec, so a child of this big process would report the
    parent's size (as session 4's 654.5 MB in every mode did).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.pt")
        torch.save({"model": model, "x": x, "y": y}, path)
        code = ("import re,torch,sys;torch.set_num_threads(1);import torch.nn.functional as F\n"
                "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)',open('/proc/self/status').read()).group(1))\n"
                "d=torch.load(sys.argv[1],weights_only=False);m,x,y=d['model'],d['x'],d['y'];m.train();"
                "o=torch.optim.Adam([p for p in m.parameters() if p.requires_grad],lr=1e-3);b=hwm()\n"
                "for _ in range(3):\n o.zero_grad(set_to_none=True);F.cross_entropy(m(x),y).backward();o.step()\n"
                "print(b,hwm())")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()  # fmt: skip
    return {"rss_before": int(out[0]) * 1024, "rss_peak": int(out[1]) * 1024}


def mobilenet_rows(batch: int, size: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = load_model("mobilenet_v2", num_classes=10, input_size=size)
    x = torch.randn(batch, 3, size, size)
    model.train()
    with torch.no_grad():
        model(x)
    y = torch.randint(0, 10, (batch,))
    rows = []
    for mode in ("full", "stock-bias", "bias", "tinytl"):
        m = _convert(model, mode, None, x)
        prof = training_profile(m, x, trainable="current")
        oracle = measure_saved_bytes(m, x, trainable="current")
        peak = measure_peak_bytes(copy.deepcopy(m), x, trainable="current")
        rows.append({"mode": mode, "planned_saved": prof.saved_bytes, "oracle_saved": oracle,
                     "planned_peak": prof.peak_bytes, "measured_peak": peak, "weights": prof.weight_bytes,
                     **fresh_rss(m, x, y)})  # fmt: skip
        print(f"mobilenet_v2 {size}² b{batch} {mode:10} saved {oracle / MB:8.2f} MB peak {peak / MB:8.2f} MB "
              f"(plan {prof.peak_bytes / MB:8.2f}) RSS {rows[-1]['rss_before'] / MB:.1f} -> "
              f"{rows[-1]['rss_peak'] / MB:.1f} MB", flush=True)  # fmt: skip
    return rows


def checkpoint_rows(batch: int, size: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    plain = load_model("mobilenet_v2", width_mult=0.5, num_classes=10, input_size=size)
    n = len(plain.features)
    chk = checkpoint_sequential_(copy.deepcopy(plain), "features")
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    saved = {k: measure_saved_bytes(m, x, trainable="all") for k, m in (("plain", plain), ("checkpointed", chk))}
    planned = {k: training_profile(m, x, trainable="all") for k, m in (("plain", plain), ("checkpointed", chk))}
    peaks = {k: measure_peak_bytes(copy.deepcopy(m), x, trainable="all") for k, m in
             (("plain", plain), ("checkpointed", chk))}  # fmt: skip
    times: dict[str, list[float]] = {"plain": [], "checkpointed": []}
    for _ in range(repeats):  # interleaved: the machine is shared
        for k, m in (("plain", plain), ("checkpointed", chk)):
            times[k].append(_step_seconds(m, x, y, steps=3))
    ratio = sorted(c / p for c, p in zip(times["checkpointed"], times["plain"], strict=True))[repeats // 2]
    row = {"blocks": n, "segments": len(chk.features), "saved_plain": saved["plain"],
           "saved_checkpointed": saved["checkpointed"], "saved_ratio": saved["checkpointed"] / saved["plain"],
           "bound_2_over_sqrt_n": 2 / math.sqrt(n), "step_time_ratio": ratio,
           "planned_saved_checkpointed": planned["checkpointed"].saved_bytes,
           "planned_peak": {k: p.peak_bytes for k, p in planned.items()}, "measured_peak": peaks}  # fmt: skip
    print(f"checkpoint n={n} segments {row['segments']}: saved ×{row['saved_ratio']:.3f} (bound "
          f"{row['bound_2_over_sqrt_n']:.3f}), step time ×{ratio:.2f}; peak plan/measured "
          f"{planned['checkpointed'].peak_bytes / peaks['checkpointed']:.3f}", flush=True)  # fmt: skip
    return row


def markdown(result: dict[str, Any]) -> str:
    """The results as BENCHMARKS.md tables."""
    lines: list[str] = []
    if "planner" in result:
        rows = result["planner"]
        exact = sum(r["planned_saved"] == r["oracle_saved"] for r in rows)
        within = sum(abs(r["peak_err"]) <= 0.10 for r in rows)
        lines += [f"Planner: saved bytes equal to the oracle in {exact}/{len(rows)} cases; peak within ±10% of the "
                  f"allocation trace in {within}/{len(rows)}.", "",
                  "| model | batch | full | bias | last | sparse |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name in dict.fromkeys(r["model"] for r in rows):
            for batch in dict.fromkeys(r["batch"] for r in rows):
                cells = {r["regime"]: f"{r['peak_err']:+.1%}" for r in rows
                         if r["model"] == name and r["batch"] == batch}  # fmt: skip
                lines.append(f"| {name} | {batch} | " + " | ".join(cells.get(k, "") for k in REGIMES) + " |")
        lines.append("")
    if "transfer" in result:
        trained = [r for r in result["transfer"] if "runs" in r]  # memory-only rows have no accuracy
        result = {**result, "transfer": trained}
        lines += ["| mode | trainable params | saved (plan / oracle) | peak (plan / trace) | step | lr | "
                  "acc. (test) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["transfer"]:
            lines.append(f"| {r['mode']} | {r['trainable_params']:,} | {r['planned_saved'] / MB:.3f} / "
                         f"{r['oracle_saved'] / MB:.3f} MB | {r['planned_peak'] / MB:.2f} / "
                         f"{r['measured_peak'] / MB:.2f} MB | {r['step_s'] * 1e3:.1f} ms | {r['lr']:g} | "
                         f"{r['accuracy']:.2%} |")  # fmt: skip
        lines += ["", "| mode | " + " | ".join(f"lr {run['lr']:g} (val / test)" for run in
                                             result["transfer"][0]["runs"]) + " |",
                  "|---|" + "---|" * len(result["transfer"][0]["runs"])]  # fmt: skip
        for r in result["transfer"]:
            lines.append(f"| {r['mode']} | " + " | ".join(f"{run['best_val']:.2%} / {run['test']:.2%}"
                                                         for run in r["runs"]) + " |")  # fmt: skip
        lines.append("")
    if "mobilenet" in result:
        lines += ["| MobileNetV2 128² b8 | saved (plan / oracle) | peak (plan / trace) | process RSS (loaded / peak) |",
                  "|---|---|---|---|"]  # fmt: skip
        for r in result["mobilenet"]:
            lines.append(f"| {r['mode']} | {r['planned_saved'] / MB:.2f} / {r['oracle_saved'] / MB:.2f} MB | "
                         f"{r['planned_peak'] / MB:.2f} / {r['measured_peak'] / MB:.2f} MB | "
                         f"{r.get('rss_before', 0) / MB:.1f} / {r.get('rss_peak', 0) / MB:.1f} MB |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["planner", "transfer", "mobilenet", "checkpoint"])
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--pretrain-n", type=int, help="Fashion-MNIST images to pretrain on (default: all 60,000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2],
                        help="learning rates tried in every transfer mode (chosen per mode on validation)")
    parser.add_argument("--modes", nargs="+", default=list(TRANSFER_MODES), help="transfer modes to run")
    parser.add_argument("--recalibrate", type=int, default=0,
                        help="batches of the new task to re-estimate frozen batch-norm statistics on (efficient modes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every transfer run")
    parser.add_argument("--memory-only", nargs="*", default=[], help="transfer modes measured but not trained")
    parser.add_argument("--width", type=float, default=0.5, help="width of the transfer task's MobileNetV2")
    parser.add_argument("--json", "--out", dest="out", default="ondevice_training.json", help="write the results here")
    parser.add_argument("--pretrained", help="cache file of the pretrained weights (written if missing)")
    parser.add_argument("--render", nargs="*", help="print the tables of earlier result files and exit")
    args = parser.parse_args()
    if args.render:
        merged: dict[str, Any] = {}
        for path in args.render:  # transfer rows of several files (modes run apart) are concatenated
            part = json.loads(Path(path).read_text())
            rows = merged.get("transfer", []) + part.get("transfer", [])
            merged.update(part)
            if rows:
                merged["transfer"] = rows
        print(markdown(merged))
        return
    torch.set_num_threads(1)
    load_before = Path("/proc/loadavg").read_text().strip()
    result: dict[str, Any] = {"loadavg_before": load_before, "torch": torch.__version__}
    start = time.perf_counter()
    if "planner" in args.only:
        result["planner"] = planner_rows((8, 32))
    if "transfer" in args.only:
        base = pretrain(args.pretrain_epochs, args.pretrained, args.pretrain_n, args.width)

        def save(rows: list[dict[str, Any]]) -> None:  # after each mode: a long run keeps what it finished
            with atomic_path(args.out) as tmp:
                tmp.write_text(json.dumps({**result, "transfer": rows}, indent=2))

        result["transfer"] = transfer_rows(base, args.batch, args.epochs, tuple(args.lrs), tuple(args.modes),
                                           args.recalibrate, tuple(args.seeds), save, tuple(args.memory_only))
    if "mobilenet" in args.only:
        result["mobilenet"] = mobilenet_rows(8, 128)
    if "checkpoint" in args.only:
        result["checkpoint"] = checkpoint_rows(8, 64, 5)
    result["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
    result["seconds"] = time.perf_counter() - start
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} in {result['seconds']:.0f} s; load {load_before} -> {result['loadavg_after']}")


if __name__ == "__main__":
    main()
