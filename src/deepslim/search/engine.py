"""``search``: per-layer pruning and precision under a measured budget (AMC, HAQ and NetAdapt's question, asked of
the runtime itself rather than of a MAC count).

AMC: He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018; HAQ: Wang et al.,
"HAQ: Hardware-Aware Automated Quantization with Mixed Precision", CVPR 2019; NetAdapt: Yang et al., ECCV 2018.
Optuna is the engine (Akiba et al., KDD 2019: TPE, NSGA-II, random, grid samplers). The study lives in an Optuna
storage (:mod:`deepslim.search.storage`; a journal file in the output directory by default), a trial is a policy in
and a :class:`Measurement` out, and the search queues exactly ``trials`` trial slots — so an interrupted search
resumes with the same call, without repeating a finished trial.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deepslim.errors import ConfigError, DeepSlimError
from deepslim.search import _judging, _study
from deepslim.search import frame as _frame
from deepslim.search import storage as st
from deepslim.search import workers as wk
from deepslim.search.budget import (
    OBJECTIVES,
    Budget,
    as_budgets,
    check_device,
    check_objectives,
    pareto,
    uses,
)
from deepslim.search.calibration import FLOOR_LEVELS as FLOOR_LEVELS  # re-exported
from deepslim.search.calibration import calibrate_table
from deepslim.search.calibration import calibration_set as calibration_set  # re-exported
from deepslim.search.evaluate import Candidate, Evaluator, resolve_latency_model
from deepslim.search.finals import best_or_uniform, final_round, search_table_report
from deepslim.search.finals import feasible as _feasible
from deepslim.search.finals import finite as _finite
from deepslim.search.finals import rank as _rank
from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import NodeTable
from deepslim.search.space import ALL_KINDS, DEFAULT_KEEP_RATIOS, KINDS, SearchSpace
from deepslim.search.strategies import IGNORE_VALUES_OVER_BUDGET, STRATEGIES, make_sampler
from deepslim.search.trials import REPEAT_ATTR as REPEAT_ATTR  # re-exported
from deepslim.search.trials import UNRECOVERED_ATTR as UNRECOVERED_ATTR  # re-exported
from deepslim.search.trials import JudgedModels as JudgedModels  # re-exported
from deepslim.search.trials import model_key as model_key  # re-exported
from deepslim.search.trials import trial_objective

log = logging.getLogger(__name__)

WATTS_PER_CORE = 15.0  # assumed power of one busy CPU core, for the search's energy estimate (not measured)
STUDY = "deepslim-search"


@dataclass(frozen=True)
class SearchResult:
    """What a search found and what it cost (see ``to_dict`` for the JSON the CLI writes)."""

    space: SearchSpace
    objectives: tuple[str, ...]
    budgets: tuple[Budget, ...]
    limits: dict[str, float]  # budget metric -> absolute limit (ms, bytes)
    dense: Candidate
    best: Candidate | None  # the chosen policy, fine-tuned and re-measured
    uniform: Candidate | None  # the best uniform policy within budget, recovered and re-measured alike
    pareto: tuple[Candidate, ...]  # the feasible trials' front (:func:`_reported_front`), pool entries re-measured
    trials: tuple[Candidate, ...]
    uniform_family: tuple[Candidate, ...]
    latency_table: dict[str, Any]
    cost: dict[str, float]
    study: dict[str, Any] = field(default_factory=dict)
    finalists: tuple[Candidate, ...] = ()  # every re-measured finalist (searched, then uniform), see finals.py
    notes: tuple[str, ...] = ()  # finalists passed over (over budget when re-measured), uniform returned as best
    finals_pool: tuple[Candidate, ...] = ()  # one objective: what the finals chose from, re-measured (:func:`_front`)
    finals_choice: dict[str, Any] | None = None  # how the searched finalist was chosen (_verdicts.FINALS_RULE)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON. Each candidate's ``policy`` is the model it builds (:meth:`SearchSpace.canonical`:
        choices inside a dropped block at the dense values); where the trial sampled other values there, they are
        kept as ``policy_sampled``. ``cost``'s trial counts cover the whole (maybe resumed) study, its ``cpu_s`` and
        ``wall_s`` this call."""

        def cand(c: Candidate | None) -> dict[str, Any] | None:
            if c is None:
                return None
            doc = c.to_dict()
            built = self.space.canonical(c.policy)
            if built != c.policy:
                doc["policy"], doc["policy_sampled"] = built.to_dict(), doc["policy"]
            return doc

        def cands(cs: Sequence[Candidate]) -> list[dict[str, Any] | None]:
            return [cand(c) for c in cs]

        return {"objectives": list(self.objectives), "budget": [b.to_dict() for b in self.budgets],
                "limits": dict(self.limits), "dense": cand(self.dense), "uniform": cand(self.uniform),
                "best": cand(self.best), "pareto": cands(self.pareto), "trials": cands(self.trials),
                "uniform_family": cands(self.uniform_family),
                "latency_table": self.latency_table, "cost": dict(self.cost), "study": dict(self.study),
                "finalists": cands(self.finalists), "finals_pool": cands(self.finals_pool), "notes": list(self.notes),
                "finals_choice": self.finals_choice,
                "space": self.space.to_dict()}  # fmt: skip


def search(model: nn.Module, data: Any, space: SearchSpace | Sequence[str] = KINDS,
           objectives: Sequence[str] = ("accuracy", "latency"),
           budget: Budget | str | Sequence[Budget | str] | None = None,
           *, trials: int = 50, strategy: str = "tpe", storage: str | None = None, seed: int = 0,
           out_dir: str | os.PathLike[str] | None = None, study_name: str = STUDY, runtime: str = "onnxruntime",
           latency_table: LatencyTable | None = None, finetune_epochs: int = 1, lr: float = 1e-3, top_k: int = 3,
           check_every: int = 10, uniform_ratios: Sequence[float] | None = None,
           on_trial: Callable[[Candidate], None] | None = None, workers: int = 1, threads: int = 1,
           data_options: Mapping[str, Any] | None = None, device: str | None = None,
           latency_model: str | None = None, node_table: NodeTable | None = None,
           remeasure_repeats: int = 3, accept_low_fidelity: bool = False, proxy_steps: int = 0,
           temperature: float | None = None, priors: bool = True, proxy_lr: float | None = None,
           measure_repeats: int = 5, calibration_policies: int = 0, select: Any = None,
           repair: bool = False) -> SearchResult:  # fmt: skip
    """Search per-layer channel counts and precisions of ``model`` on ``data`` (a DataBundle) for ``objectives``
    under ``budget`` with ``trials`` Optuna trials of ``strategy`` (tpe, nsga2, random, grid, tpe-multivariate,
    evolution, greedy).

    ``space``: a :class:`SearchSpace` or the kinds to build one from ("prune", "int8", "hpo", and for a size
    objective or budget "sparsity", "kmeans"). Trials are judged after
    batch-norm re-estimation, on the validation split, with latency predicted by ``latency_model``: "nodes" (the
    default on ONNX Runtime: the node-level table's prediction of the trial's exported graph, ``node_table`` or one
    built on ``latency_table``) or "layers" (the per-layer table; the default for a table with custom timers),
    measured on ``runtime`` and checked end to end every ``check_every`` trials. The tables are calibrated on up to 7
    policies measured end to end, plus ``calibration_policies`` random ones: with 10 or more, the node table is fitted
    in its sum and the model's weight bytes (:meth:`NodeTable.calibrate_weights`), else anchored to the dense model.
    Relative budgets, the feasibility
    check and the uniform family are judged in the same frame. The Pareto front (with one objective, a focused
    search such as ``("accuracy",)`` under a latency budget: the finals' pool, the best ``2 × top_k`` feasible
    models, :func:`_front`, reported as ``finals_pool``, while ``pareto`` is the feasible trials' accuracy–latency
    front) is then re-measured end to end with
    the dense model (a front policy over its budget there is not made a finalist), and the ``top_k`` best remaining
    candidates and the best uniform policy are fine-tuned for ``finetune_epochs`` (as the written recipe does; with
    zero epochs, their batch norms are re-estimated instead, as the recipe's ``recalibrate`` stage does) and
    re-measured end to end with the dense model, interleaved, ``remeasure_repeats`` times
    (:mod:`deepslim.search.finals`): ``best`` is the best of them that meets the budget within the noise band (a
    finalist over it is passed over, and ``notes`` says so), or the uniform policy when it ranks better. ``device``
    names the device profile whose cost model estimates energy (the ``energy`` objective and budget, in µJ; default
    ``host`` when energy is searched). The study lives in ``storage`` (default: ``out_dir/study.journal``): the same
    call resumes it.

    ``workers`` > 1 runs the trials on that many ``deepslim worker`` processes of ``threads`` intra-op threads each
    (:mod:`deepslim.search.workers`), after everything above is prepared here once; ``data`` is then a dataset spec
    (loaded with ``data_options`` here and in every worker) and the model must record its architecture. Other
    machines join with ``deepslim worker --storage URL --study NAME``. ``workers=1`` runs the trials in this process.
    ``accept_low_fidelity`` lets trials, finalists and checks quantize a model whose int8 outputs disagree with its
    float ones (quantization's fidelity check then warns instead of refusing): for a speed-only search on random
    weights, where the near-flat logits make agreement meaningless; the written recipe says the same.
    ``proxy_steps`` > 0 judges each trial after that many fine-tuning steps distilled from the dense model instead of
    batch-norm re-estimation alone (which ranked pruned MobileNetV2 policies unlike their recovered accuracy);
    ``temperature`` makes the finalists' fine-tune (and the recipe's) a distillation from the dense model;
    ``proxy_lr`` is the proxy's peak learning rate (default ``lr``). With ``latency_model="measured"`` a trial whose
    first end-to-end run meets the latency budget (or misses it by at most 15%) is run ``measure_repeats`` times in
    all, judged by the median ratio to dense (its runs are in the candidate's ``measured_runs``). A study records
    how its trials are judged (``proxy_steps``, ``proxy_lr``, ``temperature``, ``latency_model``) and its budget, and
    refuses to be resumed with other values: its trials would be compared on two scales (or, under another budget,
    called feasible without having been scored); it also records the latency frame (the
    tables' calibration, the floor check and its pin: :func:`frame.table_state`), which a resumed search puts back
    instead of measuring again (workers on another machine kind calibrate their own table, unpinned). ``priors``:
    where the space has groups of two or more roles (expansion, bottleneck, plain) and a latency budget, a new study
    first tries role-structured policies — each role kept wide in turn, the others at the widest ratio that meets the
    budget (:func:`frame.structured_priors`); not for ``strategy="grid"``, which tries every policy anyway.
    ``select``: a loader of held-out images (prepared as ``data``'s validation split, none of them in it): the
    recovered finalists, searched and uniform, are scored there and chosen by that score (their ``val_accuracy`` on
    the trials' images kept beside it) — more images than the trials are judged on, and none that chose a
    recovery's best epoch. The dense model keeps its accuracy on the validation split.
    ``repair`` (one process, a strategy that leaves trials over a latency budget unscored, not ``grid``): a sampled
    policy over the latency budget is repaired — the lightest change within budget: its channel counts as sampled,
    then notched down, at each notch the mixes of its float precision units turned int8; the steps the layer table's
    estimate puts within are judged by the search's latency model, the least slack first, and one is kept only at
    least :data:`trials.REPAIR_HEADROOM` (3 %) under the limit (:func:`trials.repaired`) — and the repaired policy
    takes the study's next empty trial slot (never a failed trial's waiting retry), told to the sampler as that
    trial's choices (``repair_of`` names the trial it repairs, ``repair_rule`` the rule that made it; the slots still
    number ``trials``).
    An infeasible budget, an unknown objective, strategy or runtime is a ConfigError before any trial runs; so,
    before anything is timed, are a missing Optuna, a space with nothing to choose (one policy: the model's own),
    ``grid`` on a space of more than :data:`_study.GRID_MAX_POLICIES` policies (it lists them all) and a study resumed
    under another budget.
    """
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    _check_select(select)
    objectives, budgets, device = _check_arguments(
        objectives, budget, strategy=strategy, trials=trials, device=device, space=space, proxy_steps=proxy_steps,
        finetune_epochs=finetune_epochs, workers=workers, threads=threads)  # fmt: skip
    _check_repair(repair, strategy, workers)
    st.require_optuna()  # a missing Optuna is said now, not after the calibration
    table = latency_table or LatencyTable(runtime=runtime)
    model_name, nodes = _latency_model(model, data, table, latency_model, node_table, workers=workers,
                                       out_dir=out_dir, storage=storage)  # fmt: skip
    spec, bundle = _data(data, data_options)
    space = _space(model, bundle.example_input, space, objectives, budgets)
    _study.check_grid(space, strategy)
    ev = Evaluator(model, bundle, space, table, archive=uses("size", objectives, budgets),
                   memory=uses("memory", objectives, budgets),
                   finetune_epochs=finetune_epochs, lr=lr, seed=seed, device=device, latency_model=model_name,
                   nodes=nodes, accept_low_fidelity=accept_low_fidelity, proxy_steps=proxy_steps,
                   temperature=temperature, proxy_lr=proxy_lr, measure_repeats=measure_repeats,
                   calibration_policies=calibration_policies)  # fmt: skip
    _check_repair_applies(repair, ev, budgets)
    recorded = _study.recorded(storage, out_dir, study_name, space, objectives)
    _study.check_budget(recorded, budgets, study_name)
    dense, limits, family = _judging_frame(ev, budgets, uniform_ratios, recorded.get(_frame.FRAME_ATTR))
    study = _study.open_study(space, objectives, storage, out_dir, study_name, _judging.settings(ev))
    if recorded.get(_frame.FRAME_ATTR) is None:
        study.set_user_attr(_frame.FRAME_ATTR, _frame.table_state(ev))
    job: dict[str, Any] = {"strategy": strategy, "seed": seed, "trials": trials, "check_every": check_every,
                           "repair": repair, "evaluator": wk.evaluator_settings(ev),
                           _study.BUDGET_KEY: [b.to_dict() for b in budgets]}  # fmt: skip
    if workers > 1:
        job.update(wk.describe_job(model, spec or "", data_options or {}, out_dir, table, _frame.base(dense, "latency"),
                                   example_input=bundle.example_input))  # fmt: skip
        wk.publish_entries(study, table, set())
    fresh = priors and strategy != "grid" and not study.get_trials(deepcopy=False)
    seeds = _frame.structured_priors(ev, limits, DEFAULT_KEEP_RATIOS) if fresh else ()
    counted = _study.queue_trials(study, ev.space, objectives, trials, strategy, seed, family, seeds)
    _study.record_context(study, space, objectives, limits, ev, job)  # last: a waiting worker starts on it
    _run_trials(study, ev, objectives, limits, job, counted=counted, on_trial=on_trial, workers=workers,
                threads=threads, storage=storage, out_dir=out_dir)  # fmt: skip
    done = _study.completed(study, limits)
    front = _front(done, objectives, space, top_k)
    finals = final_round(ev, front, family, objectives, budgets, limits, top_k=top_k,
                         repeats=remeasure_repeats, front=front, select=select)  # fmt: skip
    best, notes = best_or_uniform(finals, objectives)
    pareto, pool = _reported_front(done, objectives, space, finals.pareto)
    cost = _cost(len(done), started, cpu0, repeated=sum(REPEAT_ATTR in c.measurement.extra for c in done),
                 unrecovered=sum(c.recovery == "none" and REPEAT_ATTR not in c.measurement.extra for c in done))
    where = storage or f"journal:{Path(out_dir or '.') / st.DEFAULT_JOURNAL}"
    return SearchResult(space=space, objectives=objectives, budgets=budgets, limits=limits, dense=dense, best=best,
                        uniform=finals.uniform, pareto=pareto, trials=tuple(done), uniform_family=family,
                        latency_table=search_table_report(ev, dense, done, family, finals), cost=cost,
                        finalists=finals.finalists, notes=tuple(notes), finals_pool=pool, finals_choice=finals.choice,
                        study={"name": study_name, "strategy": strategy, "seed": seed, "workers": workers,
                               "threads": threads, "storage": st.redact(where), "device": device,
                               "latency_model": model_name})  # fmt: skip


def _check_arguments(objectives: Sequence[str], budget: Budget | str | Sequence[Budget | str] | None, *,
                     strategy: str, trials: int, device: str | None, space: SearchSpace | Sequence[str],
                     proxy_steps: int, finetune_epochs: int, workers: int,
                     threads: int) -> tuple[tuple[str, ...], tuple[Budget, ...], str | None]:  # fmt: skip
    """The checked objectives, budgets and device of a search (ConfigError before anything runs); warns when the
    trials' proxy promises more than the finalists' recovery gives."""
    objectives = check_objectives(objectives)
    budgets = as_budgets(budget)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    device = check_device(device, objectives, budgets)
    if proxy_steps and finetune_epochs == 0 and not (isinstance(space, SearchSpace) and space.recovery):
        log.warning("proxy_steps=%s with finetune_epochs=0: trials are judged after %s fine-tune steps, but the "
                    "finalists and the written recipe get batch-norm re-estimation alone, so they score below what "
                    "the trials promised; give finetune_epochs >= 1", proxy_steps, proxy_steps)  # fmt: skip
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
    return objectives, budgets, device


def _check_repair(repair: bool, strategy: str, workers: int) -> None:
    """``repair`` needs a strategy that leaves trials over budget unscored (the repair is made where such a trial is
    found), not ``grid`` (its slots all hold their policies: no empty one for a repair) and one process (a repair is
    written onto a queued slot, which another worker may be claiming)."""
    if repair and strategy not in IGNORE_VALUES_OVER_BUDGET:
        raise ConfigError(f"repair needs a strategy that leaves trials over a latency budget unscored "
                          f"({', '.join(IGNORE_VALUES_OVER_BUDGET)}), got {strategy!r}")  # fmt: skip
    if repair and strategy == "grid":
        raise ConfigError("repair needs a sampled strategy: 'grid' queues every slot with its policy, so no empty "
                          "slot is left to take a repair")  # fmt: skip
    if repair and workers > 1:
        raise ConfigError("repair runs in one process (a repaired policy is written onto a queued trial slot that "
                          "another worker may be claiming): use workers=1")  # fmt: skip


def _check_repair_applies(repair: bool, ev: Evaluator, budgets: Sequence[Budget]) -> None:
    """``repair`` acts on trials left unrecovered over a latency-only budget (:func:`trials._unrecovered_over_budget`):
    with batch-norm recovery only (no ``proxy_steps``, no hpo space) or a budget beside latency no trial is, and a
    repair would silently never happen."""
    metrics = sorted({b.metric for b in budgets})
    if repair and (ev.trial_recovery == "bn" or metrics != ["latency"]):
        raise ConfigError("repair acts on trials left unrecovered over a latency-only budget: it needs a trial "
                          "recovery to skip (proxy_steps > 0, or the hpo space) and latency as the only budget; got "
                          f"recovery {ev.trial_recovery!r} and budgets {', '.join(metrics) or 'none'}")  # fmt: skip


def _check_select(select: Any) -> None:
    """``select`` is None or a loader: a bundle would be scored on its test split, which must stay unseen."""
    from deepslim.data import DataBundle

    if isinstance(select, DataBundle | str | os.PathLike) or (select is not None and not hasattr(select, "__iter__")):
        raise ConfigError(f"select takes a loader of held-out images (e.g. a DataLoader over validation images the "
                          f"search does not judge on), got {type(select).__name__}")  # fmt: skip


def _latency_model(model: nn.Module, data: Any, table: LatencyTable, name: str | None, node_table: NodeTable | None,
                   *, workers: int, out_dir: Any, storage: str | None) -> tuple[str, NodeTable | None]:  # fmt: skip
    """The latency model's name and node table, refused where the workers could not judge alike (the measured
    model's frame stays in this process; a custom table or model cannot travel); a storage that cannot be opened
    fails now, not after the preparation."""
    model_name, nodes = resolve_latency_model(name, table, node_table)
    if workers > 1 and model_name == "measured":  # each worker would time the dense model in its own scale
        raise ConfigError("latency_model='measured' runs in one process (each worker would judge its trials against "
                          "its own dense timing): use workers=1, or the 'nodes' or 'layers' table with workers")
    if workers > 1:
        wk.check_travels(model, data, table, out_dir, nodes if model_name == "nodes" else None)
    if storage is not None:  # a wrong host, port or password fails now, not after the preparation
        st.open_storage(storage)
    return model_name, nodes


def _space(model: nn.Module, x: Any, space: SearchSpace | Sequence[str], objectives: tuple[str, ...],
           budgets: tuple[Budget, ...]) -> SearchSpace:  # fmt: skip
    """``space``, or the space of those kinds built from ``model``; a space of one policy (nothing to choose) is
    refused, and weight-only choices need a size objective."""
    if not isinstance(space, SearchSpace):
        space = SearchSpace.from_model(model, x, kinds=tuple(space))
    lacking = space.lacking()
    if lacking is not None:
        others = [k + (" (with a size objective)" if k in ("sparsity", "kmeans") else "") for k in ALL_KINDS
                  if k not in space.kinds]  # fmt: skip
        raise ConfigError(f"nothing to search: the space holds one policy, the model's own; the model has {lacking}: "
                          f"add other kinds to the space ({', '.join(others)}) or search another model")  # fmt: skip
    if (space.sparse_layers or space.kmeans_layers) and not uses("size", objectives, budgets):
        raise ConfigError("the space's unstructured sparsity / k-means choices only make the archive smaller (they "
                          "cost accuracy and no latency): add the size objective or a size budget (--objective size, "
                          "--budget size=...), or leave them out of the space")  # fmt: skip
    return space


def _judging_frame(ev: Evaluator, budgets: tuple[Budget, ...], ratios: Sequence[float] | None,
                   recorded: dict[str, Any] | None = None) -> tuple[Candidate, dict[str, float], tuple[Candidate, ...]]:
    """The frame every trial is judged in: the dense candidate (the table calibrated on it, or, resuming a study,
    the calibration and floor check it recorded: ``recorded``), the budgets' absolute limits (an infeasible budget
    refused here, before any trial) and the uniform family judged in it."""
    # the measured model's frame: a median of paired readings, not one start-up reading; a resumed study's own
    ev.settle_reference(recorded=_frame.recorded_reference(ev, recorded))
    dense = calibrate_table(ev, recorded)
    limits = {b.metric: b.limit(_frame.base(dense, b.metric)) for b in budgets}
    ev.latency_limit = limits.get("latency")  # the measured model repeats the runs of policies near it
    _frame.check_feasible(ev, budgets, limits, dense)
    dense = _feasible(dense, limits)
    return dense, limits, _frame.uniform_family(ev, ratios or DEFAULT_KEEP_RATIOS, limits)


def _run_trials(study: Any, ev: Evaluator, objectives: tuple[str, ...], limits: dict[str, float],
                job: dict[str, Any], *, counted: int, on_trial: Callable[[Candidate], None] | None, workers: int,
                threads: int, storage: str | None, out_dir: Any) -> None:  # fmt: skip
    """The queued trials, run here (the strategy's sampler on the study) or on ``workers`` local worker processes."""
    if workers == 1:
        study.sampler = make_sampler(job["strategy"], job["seed"], ev.space, job["trials"], offset=counted)
        objective = trial_objective(ev, objectives, limits, job["check_every"], on_trial,
                                    skip_over_budget=job["strategy"] in IGNORE_VALUES_OVER_BUDGET,
                                    repair=bool(job.get("repair")))  # fmt: skip
        st.run_queued_trials(study, objective, recoverable=(DeepSlimError,))
    else:
        url = storage or f"journal:{(Path(out_dir or '.') / st.DEFAULT_JOURNAL).resolve()}"
        wk.run_local_workers(study, url, workers, threads=threads, out_dir=out_dir, job=job, on_trial=on_trial)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cost(n: int, started: float, cpu0: float, repeated: int = 0, unrecovered: int = 0) -> dict[str, float]:
    """What the search cost: ``trials`` completed, of which ``trials_repeated`` re-used an earlier trial's judgement
    (the same model: :class:`JudgedModels`) and ``trials_evaluated`` were judged, ``trials_unrecovered`` of those
    without the trials' recovery (over the latency budget: :func:`trials._unrecovered_over_budget`) — counted over the
    whole study, a resumed one's earlier calls included; wall and CPU seconds and energy of this call alone."""
    cpu = _cpu_seconds() - cpu0
    return {"trials": n, "trials_evaluated": n - repeated, "trials_repeated": repeated,
            "trials_unrecovered": unrecovered,
            "wall_s": time.perf_counter() - started, "cpu_s": cpu,
            "energy_kwh": cpu * WATTS_PER_CORE / 3.6e6, "watts_per_core_assumed": WATTS_PER_CORE}  # fmt: skip


def _data(data: Any, options: Mapping[str, Any] | None) -> tuple[str | None, Any]:
    """(the dataset spec or None, the DataBundle) of ``data``: a DataBundle, or a spec loaded with ``options``."""
    if isinstance(data, str | os.PathLike):
        from deepslim.data import load_data

        return os.fspath(data), load_data(data, **(options or {}))
    if options:
        raise ConfigError("data_options apply to a dataset spec; the data given is already loaded")
    return None, data


def _front(done: Sequence[Candidate], objectives: tuple[str, ...], space: SearchSpace,
           top_k: int = 1) -> tuple[Candidate, ...]:  # fmt: skip
    """The feasible candidates the finals choose from, best first, each model once: the Pareto front; with a single
    objective the best ``2 × top_k`` models (the front of one objective is its best point alone, which would leave
    the finals one finalist; twice ``top_k`` lets them pass over one found over budget when re-measured). Equal
    ranks go to the lower latency."""
    feasible = [c for c in done if c.feasible]
    if len(objectives) > 1:
        points = [[_finite(c.value(o), o) for o in objectives] for c in feasible]
        feasible = [feasible[i] for i in pareto(points, [OBJECTIVES[o][0] for o in objectives])]
    unique: dict[str, Candidate] = {}
    for c in sorted(feasible, key=lambda c: (_rank(c, objectives), _finite(c.latency_ms, "latency"))):
        unique.setdefault(model_key(space, c.policy), c)  # one model once
    ranked = tuple(unique.values())
    return ranked if len(objectives) > 1 else ranked[: max(1, 2 * top_k)]


def _reported_front(done: Sequence[Candidate], objectives: tuple[str, ...], space: SearchSpace,
                    pool: Sequence[Candidate]) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...]]:  # fmt: skip
    """The result's ``pareto`` and ``finals_pool`` from the finals' re-measured pool. With two or more objectives
    the pool is the front (no separate pool). With one, the pool (the best ``2 × top_k``) is no front: a more
    accurate model in it may be slower than a less accurate one; ``pareto`` is then the feasible trials' front in
    that objective and the other of accuracy and latency (accuracy up, latency down), its pool entries
    re-measured."""
    if len(objectives) > 1:
        return tuple(pool), ()
    axes = (objectives[0], "latency" if objectives[0] == "accuracy" else "accuracy")
    again = {c.trial: c for c in pool}
    return tuple(again.get(c.trial, c) for c in _front(done, axes, space)), tuple(pool)
