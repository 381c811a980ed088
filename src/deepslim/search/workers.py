"""Search trials on many worker processes and machines sharing one Optuna study (issue 15).

The process that starts a search prepares everything once — the dense model's calibration, the feasibility check,
the study with its trial slots — and records in the study what a worker needs to judge trials exactly as it would
(:func:`describe_job`): the model's file (written to the output directory) and its SHA-256, the dataset's spec and
options, the space, the objectives, the absolute limits, the latency table's machine key and calibration, and the
search's settings. Layer and node latencies are shared through the study, keyed by the machine key, so workers of one
machine kind measure each layer once; a worker on another kind measures its own table, calibrates it as the search
did, and scales its predictions to the study's machine (the dense model's predicted latency as the yardstick).

:func:`run_worker` is one worker (``deepslim worker --storage URL --study NAME``, on any machine);
:func:`run_local_workers` starts N of them on this machine and waits. Data travels as a spec and the model as a file
(a loaded DataBundle or a model without a recorded architecture cannot reach another process), as for data-parallel
training.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from deepslim.errors import ConfigError, DeepSlimError
from deepslim.search import storage as st
from deepslim.search.latency import WINDOW_S, LatencyTable

log = logging.getLogger(__name__)

JOB_ATTR = "deepslim_search"  # the study's user attribute that describes the search for its workers
ENTRIES_ATTR = "deepslim_latency"  # prefix of the user attributes that hold measured layer latencies
MODEL_FILE = "search-model.pt"
STORAGE_ENV = "DEEPSLIM_STORAGE"  # how local workers get the storage URL (a password stays out of `ps`)


def check_travels(model: nn.Module, data: Any, table: LatencyTable, out_dir: Any, nodes: Any = None) -> None:
    """Refuse, before any work, a search whose model, data or latency timers (``nodes``: the node table it judges
    with) cannot reach worker processes."""
    from deepslim.models import ARCH_ATTR, FACTORY_ATTR

    if not isinstance(data, str | os.PathLike):
        raise ConfigError("with workers > 1 give the data as a dataset spec (e.g. 'digits', 'mnist:/data/mnist') and "
                          "data_options: every worker loads its own copy; a loaded DataBundle cannot reach them")
    if getattr(model, ARCH_ATTR, None) is None and getattr(model, FACTORY_ATTR, None) is None:
        raise ConfigError("with workers > 1 the model must record its architecture (load it with "
                          "deepslim.load_model from a zoo name, a checkpoint or file.py:factory): workers rebuild it "
                          "from a file")  # fmt: skip
    if out_dir is None:
        raise ConfigError("with workers > 1 give the search an out_dir: the model file the workers load lives there")
    for fn in (table.timer, table.model_timer):
        if table.key == "custom" and fn is not None:
            _reference(fn)
    if nodes is not None and nodes.custom:
        raise ConfigError("a node table with a custom splitter or timer cannot reach worker processes: search with "
                          "workers=1, or with the node table's own ONNX Runtime timers")  # fmt: skip


def _reference(fn: Callable[..., Any]) -> str:
    """``module:name`` of a module-level function, the form a custom timer reaches a worker in."""
    name, module = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", None)
    if not module or not name or "<" in name or module == "__main__":
        raise ConfigError(f"a latency table's custom timer reaches worker processes only as a module-level function "
                          f"of an importable module (module:name), got {fn!r}")  # fmt: skip
    return f"{module}:{name}"


def _import(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    try:
        fn = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import the latency timer {ref}: {exc}") from None
    return fn  # type: ignore[return-value]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_job(model: nn.Module, data: str, data_options: Mapping[str, Any], out_dir: Any, table: LatencyTable,
                 dense_predicted_ms: float, *, example_input: Any = None) -> dict[str, Any]:  # fmt: skip
    """Write the model to ``out_dir``; what a worker needs beyond the space, objectives, limits and settings."""
    from deepslim.models import FACTORY_ATTR, save_model

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = save_model(model, Path(out_dir) / MODEL_FILE, example_input=example_input)
    factory = getattr(model, FACTORY_ATTR, None)
    timers = {"timer": _reference(table.timer) if table.key == "custom" else None,
              "model_timer": (_reference(table.model_timer) if table.key == "custom" and table.model_timer else None)}
    return {"model": {"path": str(path.resolve()), "sha256": sha256_file(path),
                      "factory": factory.get("factory") if isinstance(factory, dict) else None},
            "data": {"spec": os.fspath(data), "options": dict(data_options)},
            "runtime": table.runtime, "threads": table.threads, **timers,
            "dense_predicted_ms": dense_predicted_ms}  # fmt: skip


def evaluator_settings(ev: Any) -> dict[str, Any]:
    """The evaluator's settings beyond the model, data, space and table (archive, fine-tuning, seed, ...), as plain
    JSON values: a worker builds its evaluator with the same."""
    import dataclasses
    import json

    settings = {f.name: getattr(ev, f.name) for f in dataclasses.fields(ev)
                if f.init and f.name not in ("model", "data", "space", "table", "nodes")}  # fmt: skip
    try:
        json.dumps(settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the search's settings must be plain JSON values to reach worker processes: {exc}") from None
    return settings


def publish_entries(study: Any, table: LatencyTable, known: set[str]) -> None:
    """Add the layer latencies ``table`` has and ``known`` lacks to the study, under its machine key (one attribute
    per call, so that workers writing at once never overwrite each other's)."""
    new = {k: v for k, v in table.entries.items() if k not in known}
    if not new:
        return
    name = f"{ENTRIES_ATTR}:{table.key}:{st.this_process()['pid']}:{time.time_ns()}"
    study.set_user_attr(name, new)
    known.update(new)


def shared_entries(study: Any, key: str) -> dict[str, float]:
    """The layer latencies workers of machine kind ``key`` published to the study."""
    found: dict[str, float] = {}
    for name, value in study.user_attrs.items():
        if name.startswith(f"{ENTRIES_ATTR}:{key}:") and isinstance(value, dict):
            found.update({str(k): float(v) for k, v in value.items()})
    return found


# ---- the parent: start workers on this machine and wait -----------------------------------------------------------


def run_local_workers(study: Any, url: str, count: int, *, threads: int, out_dir: Any, job: dict[str, Any],
                      on_trial: Callable[[Any], None] | None = None) -> None:  # fmt: skip
    """Start ``count`` ``deepslim worker`` processes on this study, report its completed trials to ``on_trial`` as
    they come, and wait. A worker that dies has its trial released and retried by the others; when no worker is
    left and trials are, this raises with the last worker's own error line. Interrupted (Ctrl-C, SIGTERM), the
    workers are stopped and the study stays resumable."""
    logs = Path(out_dir) / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STORAGE_ENV: url, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # fmt: skip
    cmd = [sys.executable, "-m", "deepslim", "worker", "--study", study.study_name, "--threads", str(threads)]
    if job["model"]["factory"]:  # code this process already ran, so its workers may run it too
        cmd += ["--arch", job["model"]["factory"]]
    if job.get("timer"):
        cmd += ["--timer", job["timer"]]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    reported: set[int] = set()
    try:
        for i in range(count):
            path = logs / f"worker-{i}.log"
            with open(path, "wb") as out:
                procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), path))
        log.info("started %d search workers (%d thread(s) each); logs in %s", count, threads, logs)
        while any(p.poll() is None for p, _ in procs):
            time.sleep(st.POLL_S)
            _report(study, reported, on_trial)
        _report(study, reported, on_trial)
    finally:
        _stop([p for p, _ in procs])
    _check_finished(study, procs)


def _report(study: Any, reported: set[int], on_trial: Callable[[Any], None] | None) -> None:
    if on_trial is None:
        return
    from deepslim.search.evaluate import Candidate

    optuna = st._optuna()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number not in reported and "candidate" in t.user_attrs:
            reported.add(t.number)
            on_trial(Candidate.from_dict(t.user_attrs["candidate"]))


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers still running (SIGTERM, then SIGKILL after 10 s); their trials stay running in the study,
    for the next search to release and retry."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _check_finished(study: Any, procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    optuna = st._optuna()
    st.release_dead_trials(study)
    left = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING))
    failed = [(p.returncode, path) for p, path in procs if p.returncode != 0]
    for code, path in failed:
        log.warning("search worker exited with status %s (log: %s): %s", code, path, _last_line(path))
    if left:
        code, path = failed[-1] if failed else (0, procs[-1][1])
        raise DeepSlimError(f"the search workers stopped with {len(left)} trial(s) left (worker exit status {code}: "
                            f"{_last_line(path)}; log: {path}); the same command resumes the study")  # fmt: skip


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# ---- one worker -----------------------------------------------------------------------------------------------------


def run_worker(url: str | None, name: str, *, threads: int = 1, model: str | None = None, arch: str | None = None,
               data: str | None = None, timer: str | None = None, cache_dir: str | None = None,
               wait_s: float = 0.0) -> int:  # fmt: skip
    """Join study ``name`` in storage ``url`` and run its queued trials until none is left; the number run here.

    ``model`` and ``data`` replace the recorded model file (which must have the same SHA-256) and dataset spec (a
    path on this machine); ``arch`` is the factory that rebuilds a model built from Python code (deepslim never runs
    code a file or a database names); ``timer`` is the custom latency timer the study records, given again here for
    the same reason. ``wait_s`` is how long to wait for the search to create the study and queue its trials (a
    worker started before ``deepslim search`` finished preparing). A study of another deepslim version or space is
    refused.
    """
    from deepslim.data import load_data
    from deepslim.models import load_model
    from deepslim.search import _study
    from deepslim.search.space import SearchSpace
    from deepslim.search.strategies import IGNORE_VALUES_OVER_BUDGET, make_sampler
    from deepslim.search.trials import trial_objective

    job = _wait_for_job(url, name, wait_s)
    space = SearchSpace.from_dict(job["space"])
    objectives = tuple(job["objectives"])
    study = st.join_study(url, name, space_fingerprint=_study.fingerprint(space, objectives))
    net = _load_model(job["model"], model, arch, load_model)
    bundle = load_data(data or job["data"]["spec"], **job["data"]["options"])
    table = _worker_table(job, study, timer, cache_dir)
    ev = worker_evaluator(net, bundle, space, table, job)
    salt = zlib.crc32(f"{st.this_process()}".encode())
    study.sampler = make_sampler(job["strategy"], job["seed"] + salt, space, job["trials"])
    known = set(table.entries)
    objective = trial_objective(ev, objectives, job["limits"], job["check_every"],
                                skip_over_budget=job["strategy"] in IGNORE_VALUES_OVER_BUDGET)  # fmt: skip

    def run(trial: Any) -> list[float]:
        try:
            return objective(trial)
        finally:
            publish_entries(study, table, known)

    done = st.run_queued_trials(study, run, recoverable=(DeepSlimError,))
    log.info("worker ran %d trial(s) of study %r", done, name)
    return done


def worker_evaluator(net: nn.Module, bundle: Any, space: Any, table: LatencyTable, job: dict[str, Any]) -> Any:
    """The evaluator a worker judges trials with: the search's settings (its latency model among them), a node table
    on this worker's table with the search's calibration when it judged with nodes (with the entries the search's
    calibration lowered, on the same machine kind), and this machine's own calibration scaled to the study's when the
    worker runs on another machine kind."""
    from deepslim.search.evaluate import Evaluator

    nodes = None
    if table.key != "custom" and job["evaluator"].get("latency_model", "layers") == "layers":
        from deepslim.search.node_table import NodeTable

        nodes = NodeTable(table)  # the checks' other column, as in the search's own process
    ev = Evaluator(net, bundle, space, table, nodes=nodes, **job["evaluator"])
    if ev.nodes is not None:  # the node table the search judged with: its calibration too
        ev.nodes.scale = float(job["table"].get("node_scale", 1.0))
        ev.nodes.offset = float(job["table"].get("node_offset_ms", 0.0))
        ev.nodes.weight_coef = float(job["table"].get("node_weight_coef", 0.0))
        ev.nodes.weight_knee = float(job["table"].get("node_weight_knee_mib", 0.0))  # MiB: _calibrate_here keeps it
    if table.key != job["table"]["machine"]:
        _calibrate_here(ev, job)
    elif ev.nodes is not None:  # the entries the search's calibration lowered (its study's own, not the cache's)
        ev.nodes.study_entries = {str(k): float(v) for k, v in job["table"].get("node_study_entries", {}).items()}
    return ev


def _wait_for_job(url: str | None, name: str, wait_s: float) -> dict[str, Any]:
    """The job the search recorded in study ``name``, waiting up to ``wait_s`` for it; a study of another deepslim
    version is refused at once."""
    optuna = st._optuna()
    storage = st.open_storage(url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = optuna.load_study(study_name=name, storage=storage)
            st.check_version(found, name)
            job = found.user_attrs.get(JOB_ATTR)
            if isinstance(job, dict) and "model" in job:
                return job
            problem: Exception = st.StorageError(f"study {name!r} was not created by deepslim search with workers: "
                                                 "nothing to run")  # fmt: skip
        except KeyError:
            names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
            problem = st.StorageError(f"no study {name!r} in this storage (it has: {names}): create it with deepslim "
                                      "search first, or give the worker --wait SECONDS")  # fmt: skip
        if time.monotonic() >= deadline:
            raise problem
        time.sleep(st.POLL_S)


def _load_model(record: dict[str, Any], given: str | None, arch: str | None, load: Callable[..., nn.Module]) -> Any:
    path = Path(given or record["path"])
    if not path.is_file():
        raise ConfigError(f"the study's model file {path} is not on this machine: copy it here and pass --model PATH")
    if sha256_file(path) != record["sha256"]:
        raise st.StorageError(f"{path} is not the study's model (sha256 differs from {record['sha256'][:12]}...): "
                              "pass the file the search wrote (OUT/search-model.pt)")  # fmt: skip
    return load(path, arch=arch).eval()


def _worker_table(job: dict[str, Any], study: Any, timer: str | None, cache_dir: str | None) -> LatencyTable:
    """The latency table this worker judges trials with: the study's entries and calibration when this machine is
    of the study's kind, else this machine's own table (calibrated later)."""
    recorded = job["table"]
    window_s = float(recorded.get("window_s", WINDOW_S))  # time as the study does (its cache key holds the window)
    model_window_s = float(recorded.get("model_window_s", 0.0))
    if job.get("timer"):
        if timer != job["timer"]:
            raise ConfigError(f"the study measures latency with the custom timer {job['timer']}: pass --timer "
                              f"{job['timer']} to run that code here")  # fmt: skip
        model_timer = _import(job["model_timer"]) if job.get("model_timer") else None
        table = LatencyTable(runtime=job["runtime"], threads=job["threads"], timer=_import(job["timer"]),
                             model_timer=model_timer, window_s=window_s, model_window_s=model_window_s)  # fmt: skip
    else:
        table = LatencyTable(runtime=job["runtime"], threads=job["threads"], cache_dir=cache_dir, window_s=window_s,
                             model_window_s=model_window_s)  # fmt: skip
    if table.key == recorded["machine"]:
        table.entries.update(shared_entries(study, table.key))  # layer and node entries alike
        table.scale, table.offset = recorded["scale"], recorded["offset_ms"]
        table.change_weight = recorded["conversion_weight"]
    else:
        log.warning("this machine's latency table (%s) is not the study's (%s): measuring this machine's own layer "
                    "latencies, scaled to the study's machine by the dense model's prediction", table.key,
                    recorded["machine"])  # fmt: skip
        table.entries.update(shared_entries(study, table.key))
    return table


def _calibrate_here(ev: Any, job: dict[str, Any]) -> None:
    """Calibrate this machine's table as the search calibrated its own, then scale it so that the dense model's
    prediction is the study's: trials from every machine are judged in the study machine's milliseconds."""
    from deepslim.search.engine import calibrate_table

    dense = calibrate_table(ev)
    here = float(dense.measurement.extra.get("predicted_latency_ms", dense.latency_ms))
    ratio = job["dense_predicted_ms"] / here if here > 0 else 1.0
    scaled = ev.nodes if ev.latency_model == "nodes" and ev.nodes is not None else ev.table
    scaled.scale, scaled.offset = scaled.scale * ratio, scaled.offset * ratio
    if scaled is ev.nodes:
        ev.nodes.weight_coef *= ratio
    log.warning("latency predictions here scaled by %.3f to the study machine's", ratio)
