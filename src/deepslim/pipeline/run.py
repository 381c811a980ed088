"""Running a recipe: each stage transforms the model, then the model is measured and saved.

The run directory holds ``recipe.yaml`` (the recipe as given), ``metrics.json`` (rewritten after every stage: a list
of stage rows, each a :class:`~deepslim.analysis.measurement.Measurement` (accuracy, parameters, nonzeros, MACs,
bytes on disk, estimated latency and energy on the recipe's device, measured latency after an export stage, machine
load) with the stage's name, index, model file and per-layer rows), ``stages/NN-kind.dsz`` (the model after each
stage; ``.pt2`` when its layer tree is no longer the zoo's), ``model.dsz`` (encode stage), ``model.onnx`` (export
stage), ``preprocessing.json`` (how the data's inputs were standardised: what a deployed model must be fed) and
``report.html`` (at the end). The directory is built beside ``out`` and moved into place when the run completes, so
it never mixes files of two runs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from deepslim._io import atomic_dir, atomic_path
from deepslim.analysis import get_device
from deepslim.analysis.measurement import Measurement
from deepslim.compress.coding import encode
from deepslim.compress.lowrank import SVDConfig, TuckerConfig, factorize_
from deepslim.compress.prune import (
    ChannelPruneConfig,
    GradualPruner,
    MagnitudePruneConfig,
    NMPruneConfig,
    prune_,
)
from deepslim.compress.quantize import (
    BinaryConfig,
    Float16Config,
    KMeansConfig,
    LinearQuantConfig,
    PowerOfTwoConfig,
    TernaryConfig,
    cluster_,
    quantize_,
)
from deepslim.data import load_data
from deepslim.errors import ConfigError
from deepslim.export import benchmark, export_onnx
from deepslim.models import load_model, save_model
from deepslim.pipeline.measurement import measure, with_latency
from deepslim.pipeline.recipe import (
    ClusterStage,
    DistillStage,
    EncodeStage,
    ExportStage,
    FactorizeStage,
    PruneStage,
    QuantizeStage,
    Recipe,
    StageSpec,
    TrainStage,
    bits_overrides,
)
from deepslim.train import KDConfig, distill

# 2: each stage row is a Measurement's row (Measurement.to_row: version 1's keys plus metric, device, runtime,
# threads, peak memory, load average); readers of version 1 read version 2 unchanged, and back.
METRICS_VERSION = 2
STAGE_KEYS = ("stage", "index", "model_file")  # what a stage row holds beside its Measurement

Event = Callable[[str, dict[str, Any]], None]  # (event, payload): "stage_start", "stage_end", "epoch"


def stage_config(spec: StageSpec) -> Any:
    """The technique config a stage runs with (None for stages that take none)."""
    p = spec.params
    if isinstance(p, PruneStage):
        if p.method == "channel":
            return ChannelPruneConfig(ratio=p.ratio, importance=p.importance, ignore=tuple(p.ignore),
                                         round_to=p.round_to, overrides=p.overrides)  # fmt: skip
        if p.method == "nm":
            return NMPruneConfig(n=p.n, m=p.m, overrides=p.overrides)
        return MagnitudePruneConfig(sparsity=p.sparsity, scope=p.scope, overrides=p.overrides)
    if isinstance(p, ClusterStage):
        bits, overrides = bits_overrides(p.bits)
        return KMeansConfig(bits=bits, init=p.init, share_bias=p.share_bias, overrides=overrides)
    if isinstance(p, QuantizeStage):
        bits, overrides = bits_overrides(p.bits)
        if p.type == "linear":
            return LinearQuantConfig(bits=bits, per_channel=p.per_channel, symmetric=p.symmetric,
                                        activation_bits=p.activation_bits, calibration=p.calibration,
                                        qat=p.epochs > 0, overrides=overrides)  # fmt: skip
        if p.type in ("fp16", "bf16"):
            return Float16Config(dtype=p.type)
        if p.type == "pow2":
            return PowerOfTwoConfig(bits=bits if bits != 8 else 4, overrides=overrides)
        return BinaryConfig() if p.type == "binary" else TernaryConfig()
    if isinstance(p, FactorizeStage):
        cls = SVDConfig if p.method == "svd" else TuckerConfig
        return cls(rank_ratio=p.rank_ratio, energy=p.energy, mac_ratio=p.mac_ratio, overrides=p.overrides)
    if isinstance(p, DistillStage):
        return KDConfig(temperature=p.temperature, alpha=p.alpha, hints=p.hints)
    return None


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

    def fit(self, epochs: int, lr: float, *, hooks: tuple = (), index: int, **options: Any) -> None:
        from deepslim.train import fit

        if epochs <= 0:
            return
        fit(self.model, self.data, epochs=epochs, lr=lr, seed=self.recipe.seed + index, hooks=hooks,
            on_epoch=lambda m: self.on_event("epoch", {"stage": index, **m}), **options)  # fmt: skip


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


def _run_train(ctx: RunContext, spec: StageSpec) -> None:
    p: TrainStage = spec.params
    ctx.fit(p.epochs, p.lr, index=spec.index, optimizer=p.optimizer, weight_decay=p.weight_decay)
    if spec.kind == "train":
        ctx.teacher = copy.deepcopy(ctx.model)


def _run_prune(ctx: RunContext, spec: StageSpec) -> None:
    from deepslim.compress.prune.schedule import iterative_sparsities, scale_sparsity

    p: PruneStage = spec.params
    config = stage_config(spec)
    if p.method == "magnitude" and p.schedule == "gradual":
        if p.epochs == 0:
            raise ConfigError(f"{spec.label}: a gradual schedule needs epochs > 0")
        steps = p.epochs * len(ctx.data.train)  # sparsity rises over the first 3/4 of the steps, then holds
        pruner = GradualPruner(config, end=max(1, int(0.75 * steps)), every=max(1, steps // 100))
        ctx.fit(p.epochs, p.lr, hooks=(pruner,), index=spec.index)
        return
    if p.method == "magnitude" and p.schedule == "iterative":
        targets = iterative_sparsities(p.sparsity, p.rounds)
        for r, target in enumerate(targets):
            prune_(ctx.model, scale_sparsity(config, target / p.sparsity if p.sparsity else 0.0))
            ctx.fit(p.epochs // p.rounds + (1 if r < p.epochs % p.rounds else 0), p.lr, index=spec.index)
        return
    prune_(ctx.model, config, example_input=ctx.data.example_input, calib_data=ctx.data.calib)
    ctx.fit(p.epochs, p.lr, index=spec.index)


def _run_cluster(ctx: RunContext, spec: StageSpec) -> None:
    p: ClusterStage = spec.params
    cluster_(ctx.model, stage_config(spec))
    ctx.fit(p.epochs, p.lr, index=spec.index)


def _run_quantize(ctx: RunContext, spec: StageSpec) -> None:
    p: QuantizeStage = spec.params
    quantize_(ctx.model, stage_config(spec), calib_data=ctx.data.calib)
    ctx.fit(p.epochs, p.lr, index=spec.index)


def _run_factorize(ctx: RunContext, spec: StageSpec) -> None:
    p: FactorizeStage = spec.params
    factorize_(ctx.model, stage_config(spec), example_input=ctx.data.example_input)
    ctx.fit(p.epochs, p.lr, index=spec.index)


def _run_distill(ctx: RunContext, spec: StageSpec) -> None:
    p: DistillStage = spec.params
    teacher = ctx.teacher if p.teacher == "trained" else load_model(p.teacher)
    distill(ctx.model, teacher, ctx.data, stage_config(spec), epochs=p.epochs, lr=p.lr,
               seed=ctx.recipe.seed + spec.index,
               on_epoch=lambda m: ctx.on_event("epoch", {"stage": spec.index, **m}))  # fmt: skip


def _run_encode(ctx: RunContext, spec: StageSpec) -> None:
    p: EncodeStage = spec.params
    blob = encode(ctx.model, huffman=p.huffman)
    with atomic_path(ctx.work / "model.dsz") as tmp:
        tmp.write_bytes(blob)
    ctx.artifacts["archive"] = str(ctx.out / "model.dsz")


def _run_export(ctx: RunContext, spec: StageSpec) -> None:
    p: ExportStage = spec.params
    dest = ctx.work / "model.onnx"
    result = export_onnx(ctx.model, dest, example_input=ctx.data.example_input, calib_data=ctx.data.calib)
    ctx.artifacts["onnx"] = str(ctx.out / "model.onnx")
    ctx.artifacts["onnx_max_abs_error"] = f"{result.max_abs_error:.3g}"
    if p.benchmark:
        bench = benchmark(dest, runtime="onnxruntime", example_input=ctx.data.example_input, threads=p.threads)
        ctx.artifacts["latency_ms"] = f"{bench.median_ms:.4f}"


_RUNNERS: dict[str, Callable[[RunContext, StageSpec], None]] = {
    "train": _run_train, "finetune": _run_train, "prune": _run_prune, "cluster": _run_cluster,
    "quantize": _run_quantize, "factorize": _run_factorize, "distill": _run_distill, "encode": _run_encode,
    "export": _run_export,
}  # fmt: skip


def _save_stage(ctx: RunContext, spec: StageSpec | None) -> str:
    rel = Path("stages") / (f"{spec.index:02d}-{spec.kind}" if spec else "00-input")
    try:
        blob = encode(ctx.model)
    except ConfigError:
        save_model(ctx.model, ctx.work / rel.with_suffix(".pt2"), example_input=ctx.data.example_input)
        return str(ctx.out / rel.with_suffix(".pt2"))
    with atomic_path(ctx.work / rel.with_suffix(".dsz")) as tmp:
        tmp.write_bytes(blob)
    return str(ctx.out / rel.with_suffix(".dsz"))


def _write_metrics(ctx: RunContext) -> None:
    dev = get_device(ctx.recipe.device)
    device = {"name": dev.name, "peak_macs_per_s": dict(dev.peak_macs_per_s),
              "mem_bandwidth_bytes_per_s": dev.mem_bandwidth_bytes_per_s}  # fmt: skip
    doc = {"format": "deepslim-run", "version": METRICS_VERSION, "status": ctx.status, "model": ctx.model_name,
           "data": ctx.data_name, "preprocessing": ctx.preprocessing, "device": ctx.recipe.device,
           "device_profile": device, "seed": ctx.recipe.seed, "stages": ctx.metrics,
           "artifacts": ctx.artifacts}  # fmt: skip
    with atomic_path(ctx.work / "metrics.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def check_run_dir(out: str | Path, *, overwrite: bool) -> Path:
    """Refuse an ``out`` that a run may not (re)place; ``--overwrite`` replaces only an earlier run directory."""
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
        if is_run and not overwrite:
            raise ConfigError(f"{out} already holds a run (metrics.json); choose another --out or pass --overwrite")
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


def _recipe_as_run(recipe: Recipe, chosen: dict[str, Any], preprocessing: dict[str, Any] | None) -> dict[str, Any]:
    """recipe.yaml: the recipe as given, with what the command line chose filled in, and the run's context."""
    doc = dict(recipe.to_dict())
    doc.update({k: os.fspath(v) for k, v in chosen.items() if isinstance(v, (str, os.PathLike))})
    if chosen.get("model_options"):
        doc["model_options"] = dict(chosen["model_options"])
    doc["device"], doc["seed"] = recipe.device, recipe.seed
    doc["context"] = {"preprocessing": preprocessing}
    doc["stages"] = doc.pop("stages", [])  # stages last: the settings read first
    return doc


def _stage_row(ctx: RunContext, spec: StageSpec | None, seconds: float) -> dict[str, Any]:
    """Measure the model after a stage (a :class:`Measurement` whose ``seconds`` are the stage's), save it, and
    record both as the stage's row of metrics.json."""
    m = replace(measure(ctx.model, ctx.data, device=ctx.recipe.device, layers=True), seconds=seconds)
    if spec is not None and spec.kind == "export" and "latency_ms" in ctx.artifacts:
        m = with_latency(m, float(ctx.artifacts["latency_ms"]), runtime="onnxruntime", threads=spec.params.threads)
    row = m.to_row(stage=spec.kind if spec else "input", index=spec.index if spec else 0)
    row["model_file"] = _save_stage(ctx, spec)
    ctx.metrics.append(row)
    _write_metrics(ctx)
    ctx.on_event("stage_end", row)
    return row


def _run_stages(ctx: RunContext, recipe_doc: dict[str, Any]) -> None:
    from deepslim.pipeline._pairing import write_preprocessing
    from deepslim.report import write_report

    with atomic_path(ctx.work / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(recipe_doc, sort_keys=False))
    write_preprocessing(ctx.work, ctx.preprocessing)
    _stage_row(ctx, None, 0.0)
    for spec in ctx.recipe.stages:
        ctx.on_event("stage_start", {"stage": spec.kind, "index": spec.index,
                                     "epochs": getattr(spec.params, "epochs", 0)})  # fmt: skip
        start = time.perf_counter()
        _RUNNERS[spec.kind](ctx, spec)
        _stage_row(ctx, spec, time.perf_counter() - start)
    title = f"{ctx.model_name} on {ctx.data_name}"
    write_report([ctx.work], ctx.work / "report.html", title=title)
    ctx.artifacts["report"] = str(ctx.out / "report.html")
    ctx.status = "complete"
    _write_metrics(ctx)


def run_recipe(recipe: Recipe, out: str | Path, *, model: str | nn.Module | None = None, data: Any = None,
               weights: str | None = None, arch: str | None = None, model_options: dict[str, Any] | None = None,
               overwrite: bool = False, on_event: Event | None = None) -> RunResult:  # fmt: skip
    """Run ``recipe`` on ``model`` and ``data`` (or the recipe's own), writing the run directory ``out``.

    ``weights``, ``arch`` and ``model_options`` say how to load a model spec; they win over the recipe's, which apply
    only to the recipe's own model. The run
    is built in a hidden sibling of ``out`` and moved there when it completes, replacing an earlier run (with
    ``overwrite``) as a whole. A failed run leaves an earlier run untouched; with none, the stages it completed are
    kept in ``out`` (metrics.json says ``status: failed``).
    """
    from deepslim.pipeline._pairing import attach_preprocessing, load_for_data

    out = check_run_dir(out, overwrite=overwrite)
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
    chosen = {"model": model_spec, "weights": weights, "arch": arch, "model_options": options, "data": data_spec}
    recipe_doc = _recipe_as_run(recipe, chosen, preprocessing)
    with atomic_dir(out, keep_partial=True) as work:
        ctx = RunContext(model=net, data=bundle, recipe=recipe, out=out, work=work,
                         on_event=on_event or (lambda _event, _payload: None), teacher=copy.deepcopy(net),
                         model_name=model_name, data_name=getattr(bundle, "name", str(data_spec)),
                         preprocessing=preprocessing)  # fmt: skip
        try:
            _run_stages(ctx, recipe_doc)
        except BaseException as exc:
            if ctx.metrics:  # what completed is recorded as such (kept only where no earlier run is replaced)
                ctx.status, ctx.artifacts["error"] = "failed", f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    _write_metrics(ctx)
            raise
    return RunResult(out=out, metrics=ctx.metrics, model=net, artifacts=ctx.artifacts)
