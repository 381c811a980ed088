"""Running a recipe: each stage transforms the model, then the model is measured and saved.

The run directory holds ``recipe.yaml`` (the recipe as given), ``metrics.json`` (rewritten after every stage: a list
of stage rows, each a :class:`~deepslim.analysis.measurement.Measurement` (accuracy, parameters, nonzeros, MACs,
bytes on disk, estimated latency and energy on the recipe's device, measured latency after an export stage, machine
load) with the stage's name, index, model file and per-layer rows), ``stages/NN-kind.dsz`` (the model after each
stage; ``.pt2`` when its layer tree is no longer the zoo's), ``model.dsz`` (encode stage), ``model.onnx`` (export
stage), ``preprocessing.json`` (how the data's inputs were standardised: what a deployed model must be fed) and
``report.html`` (at the end, written by the report package through :func:`register_run_file`). The directory is
built beside ``out`` and moved into place when the run completes, so it never mixes files of two runs.

A recipe's ``nproc`` above 1 runs its train, finetune and distill stages data-parallel (:mod:`deepslim.train.
distributed`); a technique stage's own fine-tuning stays in this process (a schedule's step hooks live here).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepslim._io import atomic_dir, atomic_path
from deepslim.analysis import get_device
from deepslim.analysis.measurement import Measurement
from deepslim.compress.coding import encode
from deepslim.compress.prune.schedule import Schedule, gradual_prune_, iterative_prune_
from deepslim.data import load_data
from deepslim.errors import ConfigError
from deepslim.export import benchmark, export_onnx
from deepslim.models import save_model
from deepslim.pipeline.checks import check_recipe
from deepslim.pipeline.measurement import measure, with_latency
from deepslim.pipeline.recipe import Recipe
from deepslim.pipeline.stages import (
    DistillStage,
    EncodeStage,
    ExportStage,
    Stage,
    TechniqueStage,
    TrainStage,
)
from deepslim.train import distill, distill_ddp

# 2: each stage row is a Measurement's row (Measurement.to_row: version 1's keys plus metric, device, runtime,
# threads, peak memory, load average); readers of version 1 read version 2 unchanged, and back.
METRICS_VERSION = 2
STAGE_KEYS = ("stage", "index", "model_file")  # what a stage row holds beside its Measurement

Event = Callable[[str, dict[str, Any]], None]  # (event, payload): "stage_start", "stage_end", "epoch"
RunFileWriter = Callable[[Path, Path, str], object]  # (run directory, file to write, title)
_RUN_FILES: dict[str, tuple[str, RunFileWriter]] = {}  # artifact key -> (file name, writer)


def register_run_file(key: str, filename: str, writer: RunFileWriter) -> None:
    """Have every run write ``filename`` at its end with ``writer(run_dir, dest, title)``, recorded in the run's
    artifacts as ``key``. Layers above the pipeline add their files this way (the report package registers
    ``report.html`` when it is imported, as ``import deepslim`` does), so the pipeline never imports them."""
    _RUN_FILES[key] = (filename, writer)


@dataclass
class RunContext:
    model: nn.Module
    data: Any  # DataBundle
    recipe: Recipe
    out: Path  # the run directory, as recorded in metrics.json
    work: Path  # where the files are written until the run completes (then moved to ``out``)
    on_event: Event
    teacher: nn.Module  # the model after the last train stage (the input model before one)
    model_name: str = ""
    data_name: str = ""
    preprocessing: dict[str, Any] | None = None
    status: str = "running"
    metrics: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    teachers: dict[int, nn.Module] = field(default_factory=dict)  # distill stages' own teachers, loaded early
    fingerprint: str = ""

    data_spec: str | None = None  # the data as a spec, which data-parallel ranks load for themselves

    def fit(self, epochs: int, lr: float, *, hooks: Sequence[Any] = (), index: int, parallel: bool = False,
            **options: Any) -> None:  # fmt: skip
        """Train the model for a stage; ``parallel`` stages run on the recipe's ``nproc`` processes."""
        from deepslim.train import fit, fit_ddp

        if epochs <= 0:
            return
        common: dict[str, Any] = {"epochs": epochs, "lr": lr, "seed": self.recipe.seed + index,
                  "on_epoch": lambda m: self.on_event("epoch", {"stage": index, **m}), **options}  # fmt: skip
        if parallel and self.recipe.nproc > 1:
            fit_ddp(self.model, self._spec(), nproc=self.recipe.nproc, data_options=self.data_options(), **common)
        else:
            fit(self.model, self.data, hooks=tuple(hooks), **common)

    def _spec(self) -> str:
        if self.data_spec is None:
            raise ConfigError("nproc > 1 needs the data as a spec (e.g. 'digits'): each process loads its own copy")
        return self.data_spec

    def data_options(self) -> dict[str, Any]:
        """What the ranks pass to load_data to build the run's own data: its seed (and the loader's batch)."""
        return {"seed": self.recipe.seed, "batch_size": self.data.train.batch_size}


@dataclass(frozen=True)
class RunResult:
    out: Path
    metrics: list[dict[str, Any]]
    model: nn.Module
    artifacts: dict[str, str]

    def measurements(self) -> list[Measurement]:
        """Each stage's row of metrics.json as a Measurement (per-layer rows and archive parts in ``extra``)."""
        return [Measurement.from_row(row, stage_keys=STAGE_KEYS) for row in self.metrics]

    def stage(self, kind: str) -> dict[str, Any]:
        """The metrics of the last stage of this kind."""
        found = [m for m in self.metrics if m["stage"] == kind]
        if not found:
            raise KeyError(kind)
        return found[-1]


def _run_train(ctx: RunContext, stage: TrainStage, index: int) -> None:
    ctx.fit(stage.epochs, stage.lr, index=index, parallel=True, optimizer=stage.optimizer,
            weight_decay=stage.weight_decay)  # fmt: skip
    if stage.kind == "train":
        ctx.teacher = copy.deepcopy(ctx.model)


def apply_technique(ctx: RunContext, stage: TechniqueStage, index: int) -> None:
    """The stage's technique (through its schedule when it prunes while training), then its fine-tuning."""
    config: Any = stage.config

    def fit(epochs: int, hooks: Sequence[Any]) -> None:
        ctx.fit(epochs, float(stage.lr or 0.0), hooks=hooks, index=index)

    if stage.schedule is Schedule.GRADUAL:
        gradual_prune_(ctx.model, config, epochs=stage.epochs, steps_per_epoch=len(ctx.data.train), fit=fit)
        return
    if stage.schedule is Schedule.ITERATIVE:
        iterative_prune_(ctx.model, config, rounds=stage.rounds, epochs=stage.epochs, fit=fit)
        return
    stage.spec.apply(ctx.model, config, example_input=ctx.data.example_input, calib_data=ctx.data.calib,
                     data=ctx.data)  # fmt: skip
    fit(stage.epochs, ())


def _run_distill(ctx: RunContext, stage: DistillStage, index: int) -> None:
    teacher = ctx.teachers.get(index, ctx.teacher)
    common: dict[str, Any] = {"epochs": stage.epochs, "lr": stage.lr, "seed": ctx.recipe.seed + index,
              "on_epoch": lambda m: ctx.on_event("epoch", {"stage": index, **m})}  # fmt: skip
    if ctx.recipe.nproc > 1 and stage.epochs > 0:
        distill_ddp(ctx.model, teacher, ctx._spec(), stage.kd, nproc=ctx.recipe.nproc,
                    data_options=ctx.data_options(), **common)  # fmt: skip
    else:
        distill(ctx.model, teacher, ctx.data, stage.kd, **common)


def _run_encode(ctx: RunContext, stage: EncodeStage, index: int) -> None:
    blob = encode(ctx.model, huffman=stage.huffman)
    with atomic_path(ctx.work / "model.dsz") as tmp:
        tmp.write_bytes(blob)
    ctx.artifacts["archive"] = str(ctx.out / "model.dsz")


def _run_export(ctx: RunContext, stage: ExportStage, index: int) -> None:
    dest = ctx.work / "model.onnx"
    result = export_onnx(ctx.model, dest, example_input=ctx.data.example_input, calib_data=ctx.data.calib)
    ctx.artifacts["onnx"] = str(ctx.out / "model.onnx")
    ctx.artifacts["onnx_max_abs_error"] = f"{result.max_abs_error:.3g}"
    if stage.benchmark:
        bench = benchmark(dest, runtime="onnxruntime", example_input=ctx.data.example_input, threads=stage.threads)
        ctx.artifacts["latency_ms"] = f"{bench.median_ms:.4f}"


def run_stage(ctx: RunContext, stage: Stage, index: int) -> None:
    """Run one stage (``index``: its 1-based position, which seeds its training)."""
    if isinstance(stage, TechniqueStage):
        apply_technique(ctx, stage, index)
    elif isinstance(stage, TrainStage):
        _run_train(ctx, stage, index)
    elif isinstance(stage, DistillStage):
        _run_distill(ctx, stage, index)
    elif isinstance(stage, EncodeStage):
        _run_encode(ctx, stage, index)
    elif isinstance(stage, ExportStage):
        _run_export(ctx, stage, index)
    else:
        raise ConfigError(f"stage {index}: {type(stage).__name__} is not a recipe stage")


def _save_stage(ctx: RunContext, stem: str) -> str:
    rel = Path("stages") / stem
    try:
        blob = encode(ctx.model)
    except ConfigError:
        save_model(ctx.model, ctx.work / rel.with_suffix(".pt2"), example_input=ctx.data.example_input)
        return str(ctx.out / rel.with_suffix(".pt2"))
    with atomic_path(ctx.work / rel.with_suffix(".dsz")) as tmp:
        tmp.write_bytes(blob)
    return str(ctx.out / rel.with_suffix(".dsz"))


def write_metrics(ctx: RunContext) -> None:
    dev = get_device(ctx.recipe.device)
    device = {"name": dev.name, "peak_macs_per_s": dict(dev.peak_macs_per_s),
              "mem_bandwidth_bytes_per_s": dev.mem_bandwidth_bytes_per_s}  # fmt: skip
    doc = {"format": "deepslim-run", "version": METRICS_VERSION, "status": ctx.status, "model": ctx.model_name,
           "data": ctx.data_name, "preprocessing": ctx.preprocessing, "device": ctx.recipe.device,
           "device_profile": device, "seed": ctx.recipe.seed, "fingerprint": ctx.fingerprint, "stages": ctx.metrics,
           "artifacts": ctx.artifacts}  # fmt: skip
    with atomic_path(ctx.work / "metrics.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def check_run_dir(out: str | Path, *, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an ``out`` that a run may not (re)place; ``--overwrite`` replaces only an earlier run directory,
    ``--resume`` continues an unfinished one."""
    out = Path(out)
    if out.is_symlink() or (out.is_dir() and os.path.ismount(out)):
        raise ConfigError(f"{out} is a symbolic link or a mount point, which a run cannot replace as a whole: give "
                          "a directory inside it as --out")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; a run writes a directory: choose another --out")
    if out.is_dir():
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"{out} holds the current directory, which a run cannot replace: choose another --out")
        is_run = _is_run_dir(out)
        if is_run and not (overwrite or resume):
            raise ConfigError(f"{out} already holds a run (metrics.json); choose another --out, pass --overwrite, "
                              "or --resume an unfinished run")  # fmt: skip
        if not is_run and any(out.iterdir()):
            raise ConfigError(f"{out} holds files but no deepslim run (a metrics.json written by deepslim); a run "
                              "replaces its whole --out directory, so choose a new or empty one")  # fmt: skip
    return out


def _is_run_dir(out: Path) -> bool:
    """Whether ``out`` is a run directory deepslim wrote: its metrics.json says so (another tool's does not)."""
    try:
        doc = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "deepslim-run"


def _stage_row(ctx: RunContext, stage: Stage | None, index: int, seconds: float) -> dict[str, Any]:
    """Measure the model after a stage (a :class:`Measurement` whose ``seconds`` are the stage's), save it, and
    record both as the stage's row of metrics.json; then checkpoint the run (for ``resume``)."""
    from deepslim.pipeline.resume import save_checkpoint

    m = replace(measure(ctx.model, ctx.data, device=ctx.recipe.device, layers=True), seconds=seconds)
    if isinstance(stage, ExportStage) and "latency_ms" in ctx.artifacts:
        m = with_latency(m, float(ctx.artifacts["latency_ms"]), runtime="onnxruntime", threads=stage.threads)
    kind = stage.kind if stage is not None else "input"
    row = m.to_row(stage=kind, index=index)
    row["model_file"] = _save_stage(ctx, f"{index:02d}-{kind}")
    ctx.metrics.append(row)
    write_metrics(ctx)
    save_checkpoint(ctx, index, kind)
    ctx.on_event("stage_end", row)
    return row


def _run_stages(ctx: RunContext, recipe_yaml: str, first: int) -> None:
    from deepslim.pipeline._pairing import write_preprocessing
    from deepslim.pipeline.resume import drop_checkpoints

    with atomic_path(ctx.work / "recipe.yaml") as tmp:
        tmp.write_text(recipe_yaml)
    write_preprocessing(ctx.work, ctx.preprocessing)
    if first == 1:
        _stage_row(ctx, None, 0, 0.0)
    for index, stage in enumerate(ctx.recipe.stages, start=1):
        if index < first:  # finished before the run was interrupted (resume)
            continue
        ctx.on_event("stage_start", {"stage": stage.kind, "index": index, "epochs": getattr(stage, "epochs", 0)})
        start = time.perf_counter()
        run_stage(ctx, stage, index)
        _stage_row(ctx, stage, index, time.perf_counter() - start)
    title = f"{ctx.model_name} on {ctx.data_name}"
    for key, (filename, writer) in _RUN_FILES.items():  # report.html, registered by deepslim.report
        writer(ctx.work, ctx.work / filename, title)
        ctx.artifacts[key] = str(ctx.out / filename)
    ctx.status = "complete"
    drop_checkpoints(ctx.work)
    write_metrics(ctx)


def _check_parallel(recipe: Recipe, data: Any, bundle: Any) -> None:
    """``nproc > 1`` needs a data spec that every process can load and a batch that splits evenly over them."""
    if recipe.nproc == 1:
        return
    if not isinstance(data, (str, os.PathLike)):
        raise ConfigError(f"nproc {recipe.nproc} runs training on separate processes, which load the data from its "
                          "spec (e.g. 'digits'), not from a loaded bundle: give the data as a spec or use nproc 1")
    batch = bundle.train.batch_size
    if batch % recipe.nproc:
        raise ConfigError(f"the training batch of {batch} does not split evenly over nproc {recipe.nproc}: choose "
                          "a number of processes that divides it")  # fmt: skip


def as_run(recipe: Recipe, *, model: Any, data: Any, weights: str | None, arch: str | None,
           options: dict[str, Any]) -> Recipe:  # fmt: skip
    """The recipe as run: the model spec, weights, architecture, options and data actually used (where they are
    specs, not objects), so that running the result again reproduces the run."""
    changes: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        changes.update(model=os.fspath(model), weights=weights, arch=arch, model_options=dict(options))
    if isinstance(data, (str, os.PathLike)):
        changes["data"] = os.fspath(data)
    return replace(recipe, **changes)


def run_recipe(recipe: Recipe, out: str | Path, *, model: str | nn.Module | None = None, data: Any = None,
               weights: str | None = None, arch: str | None = None, model_options: dict[str, Any] | None = None,
               overwrite: bool = False, resume: bool = False, on_event: Event | None = None) -> RunResult:  # fmt: skip
    """Run ``recipe`` on ``model`` and ``data`` (or the recipe's own), writing the run directory ``out``.

    ``weights``, ``arch`` and ``model_options`` say how to load a model spec; they win over the recipe's, which apply
    only to the recipe's own model. Every stage is checked against the model before the first one runs. The run
    is built in a hidden sibling of ``out`` and moved there when it completes, replacing an earlier run (with
    ``overwrite``) as a whole. A failed run leaves an earlier run untouched; with none, the stages it completed are
    kept in ``out`` (metrics.json says ``status: failed``) with a checkpoint after each, and ``resume=True`` with the
    same recipe and settings continues it from the last finished stage (the earlier ones are not run again).
    """
    from deepslim.pipeline._pairing import attach_preprocessing, load_for_data
    from deepslim.pipeline.resume import restore, salvage

    out = check_run_dir(out, overwrite=overwrite, resume=resume)
    model_spec = model if model is not None else recipe.model
    data_spec = data if data is not None else recipe.data
    if model_spec is None or data_spec is None:
        raise ConfigError("the recipe names no " + ("model" if model_spec is None else "data") +
                          ": give it in the recipe or on the command line")  # fmt: skip
    get_device(recipe.device)  # an unknown device fails before any work
    if model is None or model == recipe.model:  # the recipe's model settings describe the recipe's model only
        weights = weights if weights is not None else recipe.weights
        arch = arch if arch is not None else recipe.arch
        model_options = {**recipe.model_options, **(model_options or {})}
    options = dict(model_options or {})
    bundle = load_data(data_spec, seed=recipe.seed) if isinstance(data_spec, str) else data_spec
    torch.manual_seed(recipe.seed)
    if isinstance(model_spec, nn.Module):
        if weights is not None or arch is not None or options:
            raise ConfigError("weights, arch and model options describe a model spec, not a module: load the module "
                              "yourself")  # fmt: skip
        net, model_name = model_spec, type(model_spec).__name__
        preprocessing = attach_preprocessing(net, bundle)
    else:
        net = load_for_data(str(model_spec), bundle, weights=weights, arch=arch, options=options)
        model_name, preprocessing = str(model_spec), attach_preprocessing(net, bundle)  # the model's own, if any
    teachers = check_recipe(recipe.stages, net)  # mistakes fail now, not after hours of training
    _check_parallel(recipe, data_spec, bundle)
    ran = as_run(recipe, model=model_spec, data=data_spec, weights=weights, arch=arch, options=options)
    with atomic_dir(out, keep_partial=True) as work:
        ctx = RunContext(model=net, data=bundle, recipe=recipe, out=out, work=work,
                         on_event=on_event or (lambda _event, _payload: None), teacher=copy.deepcopy(net),
                         model_name=model_name, data_name=getattr(bundle, "name", str(data_spec)),
                         preprocessing=preprocessing, teachers=teachers, fingerprint=ran.fingerprint(),
                         data_spec=os.fspath(data_spec) if isinstance(data_spec, (str, os.PathLike)) else None)
        first = restore(ctx, out) if resume else 1
        try:
            _run_stages(ctx, ran.to_yaml({"preprocessing": preprocessing}), first)
        except BaseException as exc:
            if ctx.metrics:  # what completed is recorded as such (kept only where no earlier run is replaced)
                ctx.status, ctx.artifacts["error"] = "failed", f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    write_metrics(ctx)
                if resume:  # the stages finished in this session join the unfinished run in ``out``
                    salvage(work, out)
            raise
    return RunResult(out=out, metrics=ctx.metrics, model=ctx.model, artifacts=ctx.artifacts)
