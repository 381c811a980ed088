"""The search's Optuna study (:mod:`deepslim.search.engine`): opened with the space's fingerprint and how its trials
are judged, its trial slots queued (a new study starts with the best uniform policies and the structured priors;
``grid`` queues every untried policy, so it is refused on a space of more than :data:`GRID_MAX_POLICIES`), the context
a worker needs recorded on it (a resume under another budget refused), and its completed trials read back as
candidates. Split out of the engine so that its ``search`` reads as the steps it takes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepslim.errors import ConfigError
from deepslim.search import _judging
from deepslim.search import storage as st
from deepslim.search import workers as wk
from deepslim.search.budget import OBJECTIVES, Budget
from deepslim.search.evaluate import Candidate, Evaluator
from deepslim.search.finals import feasible as _feasible
from deepslim.search.finals import rank as _rank
from deepslim.search.space import Policy, SearchSpace

# ``grid`` lists every policy of the space (:func:`queue_grid`) whatever the trials: a bound on that list's memory.
# ResNet-20's prune+int8 space (1.8e11 policies) grew past 3 GB in 4 minutes (session 21 audit, M1); 10,000 small
# dicts are a few MB, and exhaustive search is meant for small spaces.
GRID_MAX_POLICIES = 10_000
BUDGET_KEY = "budget"  # the job's record (:data:`workers.JOB_ATTR`) of the budgets a study's trials were judged under


def open_study(space: SearchSpace, objectives: tuple[str, ...], url: str | None, out_dir: Any, name: str,
               settings: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """The study at ``url`` (default: the journal in ``out_dir``), created once with the space's fingerprint and how
    its trials are judged (``settings``); a study judged otherwise is refused (:func:`_judging.check`)."""
    if url is None and out_dir is None:
        raise ConfigError("give the search an out_dir (its study journal lives there) or a storage URL")
    directions = [OBJECTIVES[o][0] for o in objectives]
    metadata: dict[str, Any] = {"space_fingerprint": fingerprint(space, objectives)}
    if settings is not None:
        metadata[_judging.ATTR] = settings
    study = st.create_study_once(url, name, directions, metadata=metadata, out_dir=out_dir)
    if settings is not None:
        _judging.check(study, name, settings)
    return study


def check_grid(space: SearchSpace, strategy: str) -> None:
    """``grid`` on a space of more than :data:`GRID_MAX_POLICIES` policies is refused (before anything is timed):
    :func:`queue_grid` lists them all."""
    if strategy == "grid" and space.size > GRID_MAX_POLICIES:
        raise ConfigError(f"strategy 'grid' lists every policy of the space, and this one holds {space.size:,} "
                          f"(grid's cap: {GRID_MAX_POLICIES:,}): use a sampled strategy (tpe, random, evolution) "
                          "or a smaller space (fewer kinds or keep ratios, a larger round_to)")  # fmt: skip


def recorded(url: str | None, out_dir: Any, name: str, space: SearchSpace,
             objectives: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """The user attributes of study ``name`` of this space (its latency frame,
    :func:`deepslim.search.frame.table_state`, and its job, :func:`record_context`), empty where there is none: read
    before the study is opened, so that a refused budget creates no study."""
    if url is None and (out_dir is None or not (Path(out_dir) / st.DEFAULT_JOURNAL).is_file()):
        return {}
    try:
        study = st._optuna().load_study(study_name=name, storage=st.open_storage(url, out_dir=out_dir))
    except KeyError:
        return {}
    attrs = study.user_attrs
    if attrs.get(st.SPACE_ATTR) != fingerprint(space, objectives):
        return {}  # another space: opening the study refuses it
    return dict(attrs)


def check_budget(attrs: dict[str, Any], budgets: Sequence[Budget], name: str) -> None:
    """Refuse to resume a study (its user attributes: :func:`recorded`) under budgets other than those it recorded:
    the budget decided which trials were recovered and scored (one over a tighter limit is left unscored) and which
    are feasible, so a looser one would call trials feasible that were never judged. A study that recorded no budget
    (written before session 21) is not checked."""
    job = attrs.get(wk.JOB_ATTR)
    if not isinstance(job, dict) or BUDGET_KEY not in job:
        return
    before, now = job[BUDGET_KEY], [b.to_dict() for b in budgets]
    if _budget_key(before) != _budget_key(now):
        raise ConfigError(f"study {name!r} was searched under the budget {_budget_text(before)}; this search has "
                          f"{_budget_text(now)}: resume it with the same budget (its trials were scored or left "
                          "unscored against the first), or start a new study (another out_dir or study "
                          "name)")  # fmt: skip


def _budget_key(budgets: Sequence[dict[str, Any]]) -> list[tuple[str, float, bool]]:
    return sorted((str(b["metric"]), float(b["value"]), bool(b["relative"])) for b in budgets)


def _budget_text(budgets: Sequence[dict[str, Any]]) -> str:
    return ", ".join(str(b.get("text", b["metric"])) for b in sorted(budgets, key=lambda b: b["metric"])) or "no budget"


def fingerprint(space: SearchSpace, objectives: Sequence[str]) -> str:
    """The study's fingerprint of what it searches: a worker must compute the same to join it."""
    return st.space_fingerprint({"space": space.to_dict(), "objectives": list(objectives)})


def record_context(study: Any, space: SearchSpace, objectives: tuple[str, ...], limits: dict[str, float],
                   ev: Evaluator, job: dict[str, Any]) -> None:  # fmt: skip
    """What a worker joining the study needs to judge trials alike (issue 15): the space, the objectives, the
    absolute limits (the budgets they come from are in ``job``: a resume under others is refused,
    :func:`check_budget`), the latency tables' machine key, timing windows and calibration (the layer table's, and the
    node table's scale, offset, weight term, its knee and the entries its calibration lowered), and the search's
    settings (``job``: the evaluator's, with its latency model; with workers, also the model file and the data spec,
    :func:`deepslim.search.workers.describe_job`)."""
    table, nodes = ev.table, ev.nodes
    study.set_user_attr(wk.JOB_ATTR, {**job, "space": space.to_dict(), "objectives": list(objectives),
                                      "limits": dict(limits), "table": {"machine": table.key,
                                      "window_s": table.window_s, "model_window_s": table.model_window_s,
                                      "scale": table.scale, "offset_ms": table.offset,
                                      "conversion_weight": table.change_weight,
                                      "node_scale": nodes.scale if nodes else 1.0,
                                      "node_offset_ms": nodes.offset if nodes else 0.0,
                                      "node_weight_coef": nodes.weight_coef if nodes else 0.0,
                                      "node_weight_knee_mib": nodes.weight_knee if nodes else 0.0,
                                      "node_study_entries": dict(nodes.study_entries) if nodes else {}}})  # fmt: skip


def queue_trials(study: Any, space: SearchSpace, objectives: tuple[str, ...], trials: int, strategy: str, seed: int,
                 warm: Sequence[Candidate] = (), priors: Sequence[Policy] = ()) -> int:  # fmt: skip
    """Queue the trial slots still missing (trials left running by a process that is gone are failed and
    retried); the number of trials already counted before this call. A new study starts with the best uniform
    policies within budget (``warm``, at most 3) and the structured ``priors`` (policies, at most a third of the
    trials)."""
    optuna = st._optuna()
    state = optuna.trial.TrialState
    st.release_dead_trials(study, mark="interrupted")
    counted = [t for t in study.get_trials(deepcopy=False)
               if t.state in (state.COMPLETE, state.WAITING, state.RUNNING) or "error" in t.user_attrs]  # fmt: skip
    missing = max(0, trials - len(counted))
    choices = space.choices()
    if strategy == "grid":  # every policy once, in a seeded order: the slots are the policies not yet tried
        queue_grid(study, space, counted, missing, seed)
        missing = 0
    elif not study.get_trials(deepcopy=False):  # a new study starts from the best uniform policies within budget
        queued: set[str] = set()
        for c in sorted((c for c in warm if c.feasible), key=lambda c: _rank(c, objectives))[: min(3, missing // 4)]:
            study.enqueue_trial(suggested(c.policy, choices), skip_if_exists=False)
            queued.add(str(sorted(suggested(c.policy, choices).items())))
            missing -= 1
        for params in [q for q in (suggested(p, choices) for p in priors)
                       if str(sorted(q.items())) not in queued][: max(0, trials // 3)]:  # fmt: skip
            if missing > 0:
                study.enqueue_trial(params, skip_if_exists=False)
                missing -= 1
    st.add_trial_slots(study, missing)
    return len(counted)


def queue_grid(study: Any, space: SearchSpace, counted: Sequence[Any], missing: int, seed: int) -> None:
    """Enqueue up to ``missing`` policies of the whole grid not yet tried, in an order seeded by ``seed``."""
    import random

    tried = {str(sorted(t.params.items())) for t in counted if t.params}
    tried |= {str(sorted(t.system_attrs.get("fixed_params", {}).items())) for t in counted}
    choices = space.choices()
    grid = [suggested(p, choices) for p in space.all_policies()]
    random.Random(seed).shuffle(grid)
    for params in [p for p in grid if str(sorted(p.items())) not in tried][:missing]:
        study.enqueue_trial(params, skip_if_exists=False)


def suggested(policy: Policy, choices: dict[str, Any]) -> dict[str, Any]:
    """``policy``'s parameters that a trial suggests (``choices``: :meth:`SearchSpace.choices`): a tied int8 layer's
    follower left out, as in a sampled trial's parameters and a repair's fixed ones
    (:func:`deepslim.search.trials.queue_repair`), so that a queued policy compares equal to either (review R17 L1:
    enqueued with its followers, a warm start still waiting was queued again by a repair to the same policy)."""
    return {k: v for k, v in policy.params().items() if k in choices}


def completed(study: Any, limits: dict[str, float]) -> list[Candidate]:
    """The study's completed trials as candidates, marked feasible against ``limits``."""
    optuna = st._optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [_feasible(Candidate.from_dict(t.user_attrs["candidate"]), limits) for t in done
            if "candidate" in t.user_attrs]  # fmt: skip
