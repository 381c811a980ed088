"""Data-parallel training on several processes through ``torchrun`` (gloo on CPU): ``fit_ddp`` and ``distill_ddp``.

The parent writes the model (a ``.pt`` checkpoint, :func:`deepslim.models.save_model`) and a JSON job description
(dataset spec and options, training options, seed, global batch) to a private temporary directory and launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m deepslim.train._ddp_worker JOB``. Every rank
builds the same dataset from its spec, reads its shard of each global batch (:func:`sharded_loader`), and trains
with :class:`torch.nn.parallel.DistributedDataParallel`; rank 0 alone writes the trained weights and the history,
atomically, and the parent loads them back into the model in place. The result is the :class:`FitResult` that
one-process :func:`~deepslim.train.fit` returns.

Same global batch, same seed, same global sample order: a global batch of ``G`` is ``G / N`` samples on each of
``N`` ranks, and the order of samples is the one :func:`sharded_loader` gives a single process, so one process fed
that loader computes the same updates up to float summation order (see tests/train/test_ddp.py). Data travels as a
spec (``"digits"``, ``"mnist:/data/mnist"``) because each rank loads its own copy: an in-memory bundle is refused,
never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import deepslim.errors as errors
from deepslim._threads import check_threads
from deepslim.data import LOADER_PREPROCESSING_ATTR, LOADER_TASK_ATTR, DataBundle
from deepslim.errors import ConfigError, DeepSlimError
from deepslim.tasks import Task, get_task
from deepslim.train.distill import KDConfig
from deepslim.train.loop import FitResult, Optimizer

log = logging.getLogger(__name__)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")

JOB_FILE = "job.json"
STATE_FILE = "trained.pt"
RESULT_FILE = "result.json"
HISTORY_FILE = "history.jsonl"  # one JSON line per epoch, appended by rank 0 as training goes (progress)


class _EpochSampler(DistributedSampler):
    """A DistributedSampler that moves to the next epoch's permutation by itself on every pass.

    The training loop does not call ``set_epoch``; without this every epoch would repeat the first one's order.
    """

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._next_epoch = 0

    def __iter__(self) -> Iterator[int]:
        self.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return super().__iter__()


def sharded_loader(loader: DataLoader, *, num_replicas: int, rank: int, seed: int, batch_size: int) -> DataLoader:
    """``rank``'s share of a shuffled training loader: ``batch_size`` samples per step out of each global batch.

    Epoch ``e`` permutes the dataset with ``seed + e`` (as :class:`DistributedSampler` does); rank ``r`` takes every
    ``num_replicas``-th index from ``r``, so step ``j`` of all ranks together covers global positions
    ``[j·G, (j+1)·G)`` with ``G = batch_size · num_replicas``. With ``num_replicas=1`` this is the single-process
    reference with the same global order. When the set's size is not a multiple of ``num_replicas``, the sampler
    repeats up to ``num_replicas - 1`` samples per epoch so every rank takes as many steps.
    """
    sampler = _EpochSampler(loader.dataset, num_replicas=num_replicas, rank=rank, seed=seed)
    out = DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler, collate_fn=loader.collate_fn)
    for attr in (LOADER_PREPROCESSING_ATTR, LOADER_TASK_ATTR):
        setattr(out, attr, getattr(loader, attr, None))
    return out


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters (names and exact bytes): equal digests mean bit-identical parameters."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fit_ddp(model: nn.Module, data: str, *, nproc: int, epochs: int, data_options: Mapping[str, Any] | None = None,
            lr: float = 1e-3, optimizer: str | Optimizer = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
            seed: int = 0, cosine: bool = True, restore_best: bool = True,
            checkpoint: str | os.PathLike[str] | None = None,
            on_epoch: Callable[[dict[str, float]], None] | None = None, task: Task | str | None = None,
            threads: int = 1) -> FitResult:  # fmt: skip
    """:func:`~deepslim.train.fit` on ``nproc`` processes (DDP, gloo); ``model`` receives the trained weights.

    ``data`` is a dataset spec for :func:`deepslim.data.load_data` and ``data_options`` its options; its
    ``batch_size`` (the loader's default if not given) is the global batch, split evenly over the ranks.
    ``threads`` is each rank's intra-op thread count. ``on_epoch`` is called in this process as rank 0 reports each
    epoch. Step hooks are not available here: they are objects of this process.
    """
    job = _base_job("fit", data, data_options, nproc, epochs=epochs, lr=lr, optimizer=optimizer,
                    weight_decay=weight_decay, momentum=momentum, seed=seed, cosine=cosine,
                    restore_best=restore_best, checkpoint=checkpoint, task=task)  # fmt: skip
    return _run(model, job, nproc=nproc, threads=threads, on_epoch=on_epoch)


def distill_ddp(student: nn.Module, teacher: nn.Module, data: str, config: KDConfig | None = None, *, nproc: int,
                epochs: int, data_options: Mapping[str, Any] | None = None, lr: float = 1e-3,
                optimizer: str | Optimizer = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
                seed: int = 0, cosine: bool = True, restore_best: bool = True,
                checkpoint: str | os.PathLike[str] | None = None,
                on_epoch: Callable[[dict[str, float]], None] | None = None, task: Task | str | None = None,
                threads: int = 1) -> FitResult:  # fmt: skip
    """:func:`~deepslim.train.distill` on ``nproc`` processes; options as :func:`fit_ddp`. The teacher is copied to
    every rank and not changed; hint regressors start from ``torch.manual_seed(seed)`` on every rank, train with
    gradients averaged over the ranks, and are discarded as in one process."""
    config = config or KDConfig()
    job = _base_job("distill", data, data_options, nproc, epochs=epochs, lr=lr, optimizer=optimizer,
                    weight_decay=weight_decay, momentum=momentum, seed=seed, cosine=cosine,
                    restore_best=restore_best, checkpoint=checkpoint, task=task)  # fmt: skip
    job["kd"] = {"temperature": config.temperature, "alpha": config.alpha, "hints": [list(h) for h in config.hints],
                 "hint_weight": config.hint_weight}  # fmt: skip
    return _run(student, job, nproc=nproc, threads=threads, on_epoch=on_epoch, teacher=teacher)


def _base_job(kind: str, data: Any, data_options: Mapping[str, Any] | None, nproc: int, *, epochs: int, lr: float,
              optimizer: str | Optimizer, checkpoint: str | os.PathLike[str] | None, task: Task | str | None,
              **options: Any) -> dict[str, Any]:  # fmt: skip
    """The JSON job every rank reads; every check that can fail before launching fails here."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc must be a positive number of processes, got {nproc!r}")
    if isinstance(data, DataBundle):
        raise ConfigError("data-parallel training needs the dataset's spec (e.g. 'digits' or 'mnist:/data/mnist') "
                          "and its options, not a loaded bundle: each process loads its own copy")  # fmt: skip
    if not isinstance(data, (str, os.PathLike)):
        raise ConfigError(f"data must be a dataset spec string, got {type(data).__name__}")
    if epochs < 0 or not lr > 0:
        raise ConfigError(f"epochs must be >= 0 and lr positive, got epochs={epochs}, lr={lr}")
    opt = optimizer.value if isinstance(optimizer, Optimizer) else str(optimizer)
    if opt not in {o.value for o in Optimizer}:
        raise ConfigError(f"optimizer must be one of {[o.value for o in Optimizer]}, got {optimizer!r}")
    data_options = dict(data_options or {})
    global_batch = _global_batch(os.fspath(data), data_options)
    if global_batch % nproc:
        raise ConfigError(f"the global batch size {global_batch} does not split evenly over {nproc} processes: "
                          f"choose a batch_size that is a multiple of {nproc}")  # fmt: skip
    try:
        json.dumps(data_options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data options must be plain JSON values to reach the worker processes: {exc}") from exc
    return {"kind": kind, "data": {"spec": os.fspath(data), "options": data_options}, "global_batch": global_batch,
            "nproc": nproc, "task": _task_name(task),
            "checkpoint": os.path.abspath(checkpoint) if checkpoint is not None else None,
            "options": {"epochs": epochs, "lr": lr, "optimizer": opt, **options}}  # fmt: skip


def _global_batch(spec: str, options: dict[str, Any]) -> int:
    """The dataset's training batch size: the ``batch_size`` option, else the loader's default."""
    from deepslim.data import loader_default

    batch = options.get("batch_size")
    if batch is None:
        batch = loader_default(spec, "batch_size")
        if not isinstance(batch, int) or isinstance(batch, bool):
            raise ConfigError(f"give the global batch size as the data option batch_size for dataset {spec!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch!r}")
    return batch


def _task_name(task: Task | str | None) -> str | None:
    """Tasks travel by name: a configured Task instance that its name does not rebuild is refused."""
    if task is None or isinstance(task, str):
        return get_task(task).name if task is not None else None
    rebuilt = get_task(task.name)
    if type(rebuilt) is not type(task) or vars(rebuilt) != vars(task):
        raise ConfigError(f"task {task.name!r} has settings that cannot reach worker processes: pass its name")
    return task.name


def _run(model: nn.Module, job: dict[str, Any], *, nproc: int, threads: int,
         on_epoch: Callable[[dict[str, float]], None] | None,
         teacher: nn.Module | None = None) -> FitResult:  # fmt: skip
    check_threads(threads)
    from deepslim.models import save_model

    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="deepslim-ddp-"))
    try:
        job["model"] = str(save_model(model, workdir / "model.pt"))
        if teacher is not None:
            job["teacher"] = str(save_model(teacher, workdir / "teacher.pt"))
        (workdir / JOB_FILE).write_text(json.dumps(job))
        _launch(workdir, nproc=nproc, threads=threads, on_epoch=on_epoch)
        result = _collect(model, workdir, nproc)
        log.info("data-parallel run: %.1f s in all, %.1f s training", time.perf_counter() - start, result.seconds)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _launch(workdir: Path, *, nproc: int, threads: int, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """Run torchrun until it exits, passing rank 0's epochs to ``on_epoch``; a failed rank raises here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "deepslim.train._ddp_worker", str(workdir / JOB_FILE)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log.info("launching %d data-parallel processes: %s", nproc, " ".join(cmd))
    seen = 0
    with open(workdir / "launcher.log", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                seen = _report_epochs(workdir, seen, on_epoch)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:  # interrupted here: do not leave the ranks running
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    _report_epochs(workdir, seen, on_epoch)
    if proc.returncode != 0 or not (workdir / RESULT_FILE).is_file():
        raise _failure(workdir, proc.returncode)


def _report_epochs(workdir: Path, seen: int, on_epoch: Callable[[dict[str, float]], None] | None) -> int:
    path = workdir / HISTORY_FILE
    if on_epoch is None or not path.is_file():
        return seen
    lines = path.read_text().split("\n")[:-1]  # the last piece may be a line still being written
    for line in lines[seen:]:
        on_epoch(json.loads(line))
    return max(seen, len(lines))


def _failure(workdir: Path, returncode: int) -> DeepSlimError:
    """One clear error for a failed run: the first rank's own error (its class, when it is deepslim's), else the
    launcher's last line."""
    records = [json.loads(p.read_text()) for p in workdir.glob("error-rank*.json")]
    for record in sorted(records, key=lambda r: (r["collective"], r["time"])):
        cls = getattr(errors, record.get("type", ""), None)
        cls = cls if isinstance(cls, type) and issubclass(cls, DeepSlimError) else DeepSlimError
        return cls(f"data-parallel training failed on rank {record['rank']}: {record['message']}")
    lines = [ln.strip() for ln in (workdir / "launcher.log").read_text(errors="replace").splitlines() if ln.strip()]
    # a rank that died before its own handler ran (an import error, a signal): its traceback's last line, else
    # torchrun's summary ("exitcode : -9 (pid: ...)"), else whatever came last
    raised = [ln for ln in lines if _EXCEPTION_LINE.match(ln) and "ChildFailedError" not in ln]
    codes = [ln for ln in lines if ln.startswith("exitcode")]
    last = (raised or codes or lines or ["no output"])[-1]
    return DeepSlimError(f"data-parallel training failed (torchrun exit status {returncode}): {last}")


def _collect(model: nn.Module, workdir: Path, nproc: int) -> FitResult:
    """Check that every rank ended with the same parameters, load rank 0's into ``model``, and build the result."""
    digests = [json.loads((workdir / f"digest-rank{r}.json").read_text())["params"] for r in range(nproc)]
    log.info("rank parameter digests: %s", digests)
    if len(set(digests)) != 1:
        raise DeepSlimError(f"data-parallel ranks ended with different parameters ({len(set(digests))} distinct): "
                            "the run is not trustworthy; rerun with --nproc 1 and report this")  # fmt: skip
    state = torch.load(workdir / STATE_FILE, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DeepSlimError(f"the trained weights do not fit the model they came from: {exc}") from exc
    model.eval()
    return FitResult(**json.loads((workdir / RESULT_FILE).read_text()))
