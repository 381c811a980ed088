"""One rank of a data-parallel run (:mod:`deepslim.train.distributed`), started by ``torchrun``:
``python -m deepslim.train._ddp_worker JOB.json``.

Every rank loads the same model file and dataset spec, trains its shard of each global batch through
DistributedDataParallel (gloo), validates on the whole validation set (so every rank takes the same best-epoch
decision), and reports a digest of its parameters; rank 0 alone writes the weights, the history and the result.
A rank that fails writes its error as one line for the parent to raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_pre_hook

from deepslim._io import atomic_path
from deepslim.data import DataBundle, load_data
from deepslim.errors import ConfigError, DeepSlimError
from deepslim.tasks import Inputs, Task, get_task
from deepslim.train.distributed import HISTORY_FILE, RESULT_FILE, STATE_FILE, sharded_loader, state_digest


def main(job_path: str) -> None:
    workdir = Path(job_path).parent
    rank = int(os.environ.get("RANK", "0"))
    try:
        _train(json.loads(Path(job_path).read_text()), workdir, rank)
    except BaseException as exc:
        _write_error(workdir, rank, exc)
        raise


def _train(job: dict[str, Any], workdir: Path, rank: int) -> None:
    from deepslim.models import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    try:
        world = dist.get_world_size()
        model = load_model(job["model"])
        data = _sharded_data(job, rank, world)
        task = get_task(job["task"], data.task)
        ddp = DistributedDataParallel(model)
        epochs = _EpochLog(workdir if rank == 0 else None, task)
        if job["kind"] == "distill":
            result = _distill(job, ddp, data, task, epochs)
        else:
            result = _fit(job, ddp, data, task, epochs)
        digest = state_digest(model)
        (workdir / f"digest-rank{rank}.json").write_text(json.dumps({"rank": rank, "params": digest}))
        if rank == 0:
            _write_outputs(workdir, model, dataclasses.replace(result, history=epochs.history))
        dist.barrier()  # no rank tears down its connections while another still uses them (gloo aborts then)
    finally:
        dist.destroy_process_group()


def _sharded_data(job: dict[str, Any], rank: int, world: int) -> DataBundle:
    spec = job["data"]
    data = load_data(spec["spec"], **spec["options"])
    if data.train.batch_size != job["global_batch"]:
        raise ConfigError(f"dataset {spec['spec']!r} gave batch size {data.train.batch_size}, expected "
                          f"{job['global_batch']}")  # fmt: skip
    loader = sharded_loader(data.train, num_replicas=world, rank=rank, seed=job["options"]["seed"],
                            batch_size=job["global_batch"] // world)  # fmt: skip
    return dataclasses.replace(data, train=loader)


def _sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics), so all ranks validate the same model."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


class _EpochLog:
    """Each epoch's metrics with training metrics averaged over the ranks (each rank saw only its shard; shards
    are equal in size, so the mean is exact for loss and accuracy); rank 0 appends them to the history file."""

    def __init__(self, workdir: Path | None, task: Task):
        self.path = workdir / HISTORY_FILE if workdir is not None else None
        self.task = task
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf

    def __call__(self, metrics: dict[str, float]) -> None:
        merged = dict(metrics)
        keys = sorted(k for k in metrics if k.startswith("train_"))
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        merged.update({k: v / dist.get_world_size() for k, v in zip(keys, values.tolist(), strict=True)})
        self.history.append(merged)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(merged) + "\n")

    def improved(self) -> bool:
        """Whether the last epoch beats the earlier ones by the rule :func:`~deepslim.train.loop.train_loop` uses."""
        last = self.history[-1]
        val = {k[4:]: v for k, v in last.items() if k.startswith("val_")}
        score = self.task.score(val)
        score = -math.inf if math.isnan(score) else score
        better = score > self.best_score or len(self.history) == 1
        self.best_score = max(self.best_score, score)
        return better


def _options(job: dict[str, Any]) -> dict[str, Any]:
    o = job["options"]
    return {k: o[k] for k in ("epochs", "lr", "optimizer", "weight_decay", "momentum", "seed", "cosine",
                              "restore_best")}  # fmt: skip


def _fit(job: dict[str, Any], ddp: DistributedDataParallel, data: DataBundle, task: Task, epochs: _EpochLog) -> Any:
    from deepslim.train.loop import evaluate, train_loop

    model = ddp.module

    def loss(inputs: Inputs, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = task.forward(ddp, inputs)  # through the wrapper: its backward averages the gradients over the ranks
        return task.loss(out, target), out

    def validate() -> Any:
        _sync_buffers(model)
        return evaluate(model, data, split="val", task=task)

    checkpoint = job["checkpoint"] if dist.get_rank() == 0 else None
    return train_loop(model, data, loss, hooks=(), on_epoch=epochs, checkpoint=checkpoint, task=task,
                      validate=validate, **_options(job))  # fmt: skip


def _distill(job: dict[str, Any], ddp: DistributedDataParallel, data: DataBundle, task: Task,
             epochs: _EpochLog) -> Any:  # fmt: skip
    """distill() with the wrapper as the student, so that its forward (and backward) goes through DDP."""
    from deepslim.models import PREPROCESSING_ATTR, load_model, save_model
    from deepslim.train.distill import KDConfig, distill

    model = ddp.module
    if hasattr(model, PREPROCESSING_ATTR):
        setattr(ddp, PREPROCESSING_ATTR, getattr(model, PREPROCESSING_ATTR))
    kd = job["kd"]
    config = KDConfig(temperature=kd["temperature"], alpha=kd["alpha"], hint_weight=kd["hint_weight"],
                      hints={f"module.{s}": t for s, t in kd["hints"]})  # fmt: skip
    checkpoint = job["checkpoint"] if dist.get_rank() == 0 else None

    def on_epoch(metrics: dict[str, float]) -> None:
        epochs(metrics)
        if epochs.improved() and checkpoint is not None:
            save_model(model, checkpoint, example_input=data.example_input)

    teacher = load_model(job["teacher"])
    torch.manual_seed(job["options"]["seed"])  # hint regressors start equal on every rank (seeded just before)
    handle = register_optimizer_step_pre_hook(_averaging_hook(model))
    try:
        return distill(ddp, teacher, data, config, on_epoch=on_epoch, task=task, **_options(job))
    finally:
        handle.remove()


def _averaging_hook(model: nn.Module) -> Any:
    """An optimizer pre-step hook averaging, over the ranks, the gradients of parameters DDP does not own
    (distillation's hint regressors, created inside distill), so they, too, train as in one process."""
    owned = {id(p) for p in model.parameters()}

    def hook(opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in owned and p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()

    return hook


def _write_outputs(workdir: Path, model: nn.Module, result: Any) -> None:
    with atomic_path(workdir / STATE_FILE) as tmp:
        torch.save(model.state_dict(), tmp)
    fields = {"history": result.history, "best_epoch": result.best_epoch,
              "best_val_accuracy": result.best_val_accuracy, "seconds": result.seconds,
              "best_val_metric": result.best_val_metric}  # fmt: skip
    with atomic_path(workdir / RESULT_FILE) as tmp:
        tmp.write_text(json.dumps(fields))


def _write_error(workdir: Path, rank: int, exc: BaseException) -> None:
    """The rank's error as one line (the parent raises the first rank's; deepslim errors keep their class).
    Errors of the collective layer are usually a consequence of another rank's failure, so they sort last."""
    own = isinstance(exc, DeepSlimError)
    message = str(exc) if own else traceback.format_exception_only(type(exc), exc)[-1]
    line = next((ln.strip() for ln in reversed(message.splitlines()) if ln.strip()), type(exc).__name__)
    collective = isinstance(exc, (dist.DistError, ConnectionError)) or "gloo" in line.lower()
    record = {"rank": rank, "type": type(exc).__name__, "message": line, "collective": collective,
              "time": time.time()}  # fmt: skip
    with contextlib.suppress(OSError):
        (workdir / f"error-rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
    # the outputs are on disk: leave without running C++ destructors at interpreter exit, where gloo's connection
    # threads occasionally abort the process ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
