"""The measurements of benchmarks/vit_tome.py: export, accuracy from the ONNX files, interleaved throughput in ONNX
Runtime and in PyTorch eager, and the measured attention / FFN view of the dense and merged files."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deepslim as ds
from deepslim.analysis.onnx_profile import time_onnx

log = logging.getLogger("vit_tome")


def test_arrays(data: ds.DataBundle) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split as arrays (inputs as the model takes them, labels)."""
    xs, ys = zip(*[(x, y) for x, y in data.test], strict=True)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of the ONNX file itself on (x, y)."""
    from deepslim.export.onnx import ort_session

    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def eager_throughput(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, block: int = 3) -> dict[str, float]:
    """Images/s of each model in PyTorch eager (1 thread), timed round-robin, order reversed every round; medians."""
    times: dict[str, list[float]] = {k: [] for k in models}
    order = list(models)
    with torch.inference_mode():
        for m in models.values():
            m.eval()(x)
        for r in range(rounds):
            for k in order if r % 2 == 0 else reversed(order):
                for _ in range(block):
                    t = time.perf_counter()
                    models[k](x)
                    times[k].append(time.perf_counter() - t)
    return {k: len(x) / statistics.median(v) for k, v in times.items()}


def groups(path: Path, batch: int) -> dict[str, Any]:
    """The measured block / group view of one file at one batch size."""
    prof = time_onnx(path, batch_size=batch, runs=15, warmup=3, threads=1)
    log.info("%s at batch %d:\n%s", path.name, batch, prof)
    share = prof.by_group()
    return {"node_ms": prof.node_us / 1000, "group_ms": {g: t / 1000 for g, t in share.items()},
            "blocks": [{"block": b.block, **{g: t / 1000 for g, t in b.group_us.items()}} for b in prof.by_block()],
            "table": str(prof)}  # fmt: skip


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of the PyTorch model on (x, y)."""
    with torch.inference_mode():
        pred = torch.cat([model.eval()(torch.from_numpy(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)])
    return float((pred.numpy() == y).mean())


def export_all(models: dict[str, nn.Module], x: np.ndarray, work: Path) -> dict[str, Path]:
    """Each variant as ONNX (dynamic batch; export_onnx checks ORT against PyTorch on two test images)."""
    files = {}
    for name, model in models.items():
        files[name] = work / f"{name.replace(' ', '_').replace('=', '')}.onnx"
        ds.export_onnx(model.eval(), files[name], example_input=torch.from_numpy(x[:2]))
        log.info("exported %s (%d bytes)", name, os.path.getsize(files[name]))
    return files


def measure_accuracy(models: dict[str, nn.Module], x: np.ndarray, y: np.ndarray, files: dict[str, Path] | None,
                     out: dict[str, Any], save: Callable[[], None]) -> None:  # fmt: skip
    """Test accuracy of every variant: of its ONNX file when ``files`` are given, else of the PyTorch model."""
    for name, model in models.items():
        acc = onnx_accuracy(files[name], x, y) if files else torch_accuracy(model, x, y)
        out["variants"][name]["accuracy"] = acc
        out["variants"][name]["accuracy_of"] = "onnx" if files else "pytorch"
        log.info("%s: test accuracy %.4f (%d images)", name, acc, len(y))
        save()
    out["test_images"] = len(y)
    out["load_average_stages"]["after_accuracy"] = os.getloadavg()


def cpu_timing(files: dict[str, Path], x: np.ndarray, out: dict[str, Any], *, repeats: int, rounds: int,
               batches: tuple[int, ...], save: Callable[[], None]) -> None:  # fmt: skip
    """ORT time of every file by the calling thread's CPU time (``_cpu_timer.py``, 1 thread; for a loaded machine,
    where wall time counts the preempted time): ``repeats`` processes per batch, one after another, the sessions
    created in reverse order every other one; per file each process's median and the speed-up over the dense file
    paired by round (``speed_side.paired_ratios``)."""
    from speed_side import paired_ratios, time_cpu

    names = list(files)
    for b in batches:
        load = os.getloadavg()
        runs = time_cpu([(str(files[k]), [b, *x.shape[1:]]) for k in names], repeats, rounds, block=3)
        ratios = paired_ratios(runs)
        dense = ratios[names.index("dense")]
        for i, k in enumerate(names):
            per = [run["cpu_median_ms"][i] for run in runs]
            out["variants"][k][f"ort_cpu_b{b}"] = {"cpu_median_ms": per, "speedup_vs_dense": dense / ratios[i],
                                                  "images_per_s": b * 1000 / statistics.median(per)}  # fmt: skip
        out["load_average_stages"][f"cpu_b{b}"] = [load, os.getloadavg()]
        log.info("ORT thread CPU batch %d: %s", b, {k: out["variants"][k][f"ort_cpu_b{b}"] for k in names})
        save()


def measure_timing(models: dict[str, nn.Module], x: np.ndarray, files: dict[str, Path], out: dict[str, Any], *,
                   rounds: int, threads: int, batches: tuple[int, ...], save: Callable[[], None],
                   cpu_repeats: int = 0) -> None:  # fmt: skip
    """Interleaved ORT and eager throughput of every variant (``cpu_repeats``: also by thread CPU time,
    :func:`cpu_timing`), then the block view of the dense and merged files."""
    for b in batches:
        res = ds.interleave({k: str(p) for k, p in files.items()}, example_input=torch.from_numpy(x[:b]),
                            threads=threads, rounds=rounds, block=3)  # fmt: skip
        for k, r in res.items():
            out["variants"][k][f"ort_b{b}"] = {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms,
                                              "images_per_s": b * 1000 / r.median_ms}  # fmt: skip
        log.info("ORT batch %d: %s", b, {k: round(r.median_ms, 3) for k, r in res.items()})
        out["load_average_stages"][f"after_ort_b{b}"] = os.getloadavg()
        save()
    if cpu_repeats:
        cpu_timing(files, x, out, repeats=cpu_repeats, rounds=rounds, batches=batches, save=save)
    torch.set_num_threads(threads)
    for b in batches:
        eager = eager_throughput(models, torch.from_numpy(x[:b]), rounds=max(3, rounds // 2))
        for k, v in eager.items():
            out["variants"][k][f"eager_b{b}_images_per_s"] = v
        out["load_average_stages"][f"after_eager_b{b}"] = os.getloadavg()
        save()
    out["block_view"] = {}
    for k in (k for k in models if k == "dense" or k.startswith("tome")):
        for b in batches:
            out["block_view"][f"{k} b{b}"] = groups(files[k], b)
            save()
