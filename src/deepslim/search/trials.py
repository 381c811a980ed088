"""One trial of a search, as the search and every worker run it: the sampled policy judged — once per model
(:class:`JudgedModels`: a policy that builds the model of an earlier trial re-uses its judgement, recorded as a
repeat), without the trials' recovery and its accuracy unjudged when it is over a latency budget that no recovery
can change (:func:`_unrecovered_over_budget`) — and its candidate, budget excesses and objective values recorded on
the trial.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from deepslim.errors import DeepSlimError
from deepslim.search import _depth
from deepslim.search.evaluate import Candidate, Evaluator
from deepslim.search.finals import feasible as _feasible
from deepslim.search.finals import finite as _finite
from deepslim.search.latency import layer_keys
from deepslim.search.space import Policy, SearchSpace

REPAIR_ATTR = "repair_of"  # a trial's user attr: the trial over the latency budget whose repaired policy it judges
REPAIRED_ATTR = "repaired_into"  # a trial's user attr: the queued slot its repaired policy was written onto
REPAIR_MARGIN = 0.05  # a repair step is judged once the layer table's estimate puts it this far under the limit
REPAIR_CHECKS = 3  # repair steps judged over the limit before a repair is given up
REPAIR_HEADROOM = 0.03  # a repair step is kept when judged this far under the limit (the finals re-measure it)
REPAIR_MIXES = 64  # a repair tries every mix of a policy's float precision units when they make at most this many
REPAIR_RULE_ATTR = "repair_rule"  # a repaired trial's user attr (and its candidate's extra): the rule that made it
REPAIR_RULE = (f"lightest change: per notch the mixes of float precision units (every one up to {REPAIR_MIXES}), "
               f"an all-int8 policy's groups notched one at a time first (on {REPAIR_CHECKS} checks of their own), "
               f"least slack first; margin {REPAIR_MARGIN}, headroom {REPAIR_HEADROOM}, checks {REPAIR_CHECKS}")
# not "every layer int8 first": session 19's own runs queued lightest-change repairs before the record (review R2 19 L2)
REPAIR_RULE_UNRECORDED = "unrecorded: queued before session 19 recorded each repair's rule"
REPEAT_ATTR = "repeat_of"  # a trial's user attr (and its measurement's extra): the earlier trial it repeats
UNRECOVERED_ATTR = "unrecovered"  # a trial's user attr: judged without recovery, over the latency budget


def trial_objective(ev: Evaluator, objectives: tuple[str, ...], limits: dict[str, float], check_every: int,
                    on_trial: Callable[[Candidate], None] | None = None, *,
                    skip_over_budget: bool = False, repair: bool = False) -> Callable[[Any], list[float]]:  # fmt: skip
    """One trial, as every worker runs it: the sampled policy judged (measured end to end every ``check_every``
    trials), its candidate and budget excesses recorded on the trial; the objective values. ``skip_over_budget``
    (a strategy that never reads the values of a trial over budget): a policy over the latency budget is judged
    without the trials' recovery (:func:`_unrecovered_over_budget`); with ``repair`` also, its repaired policy
    (:func:`repaired`) is written onto the study's next empty trial slot (:func:`queue_repair`), where it is judged
    as every trial is — unless this trial is itself a repair."""
    choices = ev.space.choices()
    judged = JudgedModels(ev.space)
    learnt: list[float] = []  # the repairs' judged / estimated latencies so far (:func:`repaired`)

    def objective(trial: Any) -> list[float]:
        policy = ev.space.policy({k: trial.suggest_categorical(k, v) for k, v in choices.items()})
        first = judged.first(trial.study, policy)
        if first is not None:  # the same model as an earlier trial: its judgement, recorded as a repeat of it
            trial.set_user_attr(REPEAT_ATTR, first.trial)
            # not measured end to end itself: the first trial's measurement is one point of the table's check
            m = replace(first.measurement, measured_latency_ms=None, runtime=None,
                        extra={**first.measurement.extra, REPEAT_ATTR: first.trial})  # fmt: skip
            cand = _feasible(replace(first, policy=policy, measurement=m, trial=trial.number), limits)
        else:
            over = _unrecovered_over_budget(ev, policy, limits, trial.number) if skip_over_budget else None
            if over is not None:
                trial.set_user_attr(UNRECOVERED_ATTR, "over the latency budget: judged without the trials' recovery")
                cand = over
                if repair and REPAIR_ATTR not in trial.user_attrs:
                    fixed = repaired(ev, policy, float(over.measurement.extra["predicted_latency_ms"]),
                                     limits["latency"], learnt=learnt)  # fmt: skip
                    slot = queue_repair(trial.study, trial.number, fixed, choices) if fixed is not None else None
                    if slot is not None:
                        trial.set_user_attr(REPAIRED_ATTR, slot)
            else:
                measure = (check_every > 0 and ev.table.end_to_end and trial.number % check_every == 0
                           and ev.latency_model != "measured")  # measured trials are their own end-to-end check
                cand = ev.evaluate(policy, measure=measure, trial=trial.number)
            # every trial is judged by the prediction (one frame for all); a measurement is the table's check
            cand = _feasible(replace(cand, latency_ms=float(cand.measurement.extra["predicted_latency_ms"])), limits)
        if REPAIR_ATTR in trial.user_attrs:  # the repaired policy of an earlier trial: said in its candidate
            rule = trial.user_attrs.get(REPAIR_RULE_ATTR, REPAIR_RULE_UNRECORDED)  # a resumed study mixes rules
            extra = {**cand.measurement.extra, REPAIR_ATTR: trial.user_attrs[REPAIR_ATTR], REPAIR_RULE_ATTR: rule}
            cand = replace(cand, measurement=replace(cand.measurement, extra=extra))
        trial.set_user_attr("candidate", cand.to_dict())
        violations = {m: cand.value(m) - lim for m, lim in limits.items()}
        trial.set_user_attr("constraints", list(violations.values()) or [0.0])
        if hasattr(trial, "set_constraint"):
            for metric, excess in violations.items():
                trial.set_constraint(metric, excess)
        if on_trial is not None:
            on_trial(cand)
        return [_finite(cand.value(o), o) for o in objectives]

    return objective


def _unrecovered_over_budget(ev: Evaluator, policy: Policy, limits: dict[str, float],
                             number: int) -> Candidate | None:  # fmt: skip
    """The policy judged without the trials' recovery (``recovery="none"``) and without its accuracy (None: not
    judged) when it is over a latency-only budget, else None (judged as usual). Sound because no recovery can bring
    it within: every latency model predicts from the graph alone (its layers, channels and precisions; the measured
    model caches its timing per graph), never from the weights a recovery changes; and the strategies that ask for
    this never read the accuracy of a trial over budget. Optuna is told the worst value (-inf accuracy, through
    :func:`~deepslim.search.finals.finite`) beside the positive budget excess: constrained TPE splits infeasible
    trials by their excess alone and NSGA-II ranks every feasible trial above them, so the value is never read.
    Costs one build without recovery per trial; saves the proxy's fine-tune steps (ResNet-20 at 0.5×, session 14:
    23 of 40 focused trials, ~12 s each) and the evaluation on the validation split."""
    if ev.trial_recovery in ("none", "bn") or set(limits) != {"latency"}:
        return None
    started = time.perf_counter()
    net, keys = ev.model_and_keys(policy, "none")
    if ev.predictions(policy, net, keys)[ev.latency_model] <= limits["latency"]:
        return None
    return ev.candidate(policy, net, keys, recovery="none", trial=number, score=False, started=started)


def repaired(ev: Evaluator, policy: Policy, latency_ms: float, limit: float, margin: float = REPAIR_MARGIN,
             checks: int = REPAIR_CHECKS, headroom: float = REPAIR_HEADROOM,
             learnt: list[float] | None = None) -> Policy | None:  # fmt: skip
    """A policy near ``policy`` (judged at ``latency_ms``, over ``limit``) that the search's latency model puts within
    it, or None. The steps, lightest first: the groups' channel counts as sampled, then one option down their grids
    (:meth:`SearchSpace.narrower`), two, three notches...; at each notch every mix of the policy's float precision
    units turned int8 (:func:`precision_steps`: a unit is a layer, or a tied group of them). At one notch the steps
    estimated at most ``limit`` × (1 − ``margin``) are judged by the search's latency model itself (unrecovered:
    latency follows the graph; the measured model caches it, so the repaired trial re-uses that run) in the order of
    their estimates, the highest (the least slack) first, and the first judged at most ``limit`` × (1 − ``headroom``)
    is returned; after ``checks`` judged over that, None. The shapes of an all-int8 policy with one group alone
    narrower (:func:`notch_shapes`) are judged on ``checks`` of their own, never the every-group shapes' (review R20
    M1: they are the steps nearest the limit, the likeliest judged over, and three of them spent every check before
    the every-group notch that session 19's rule returned was judged); once theirs are spent they are skipped. The
    headroom: a repair lies near the limit, where the
    finals' re-measurement passes a policy over (session 16, run 1: the best trial, a repair, re-measured 2 % over the
    limit). The estimate is ``latency_ms`` scaled by the layer table's ratio of the two policies' predictions: it
    needs only the pruned model's layer shapes (no recovery, no quantization, no run). The blocks a policy drops stay
    as sampled. Why repair: in the focused ResNet-20 searches 20-27 of 40 trials landed over the 0.5x budget,
    unscored, and the sampler learned only that they were over; a repaired neighbour within it is a scored trial where
    the sampler was looking. Why the least slack first (session 19): the first step was every layer int8, which took
    every over-budget sample of session 18's seed-5 run from 1.03-1.20x the limit to 0.56-0.70x; such a repair keeps
    the sample's channels and blocks at a fraction of the time, leads the pool on its proxy and leaves the budget
    unspent (that run's winner, trial 36 at 1.10x repaired to 0.69x, ended +0.12 pp over uniform).

    ``learnt`` (the search keeps one per process): each judged step's judged / estimated latency is appended, and the
    estimate is scaled by their median so far. The layer table's ratio of two policies errs one way for a while:
    with the measured model it put all-int8 steps at few channels too fast (session 16, run 2: 5 sampled policies
    over the budget, every step it put within judged over, no repair), so the same three checks went on the steps
    it misjudged again.

    Each notch's channels are pruned once and each model's estimate is made once: the mixes at one notch differ
    only in ``int8``, which pruning never reads (review R19 L3: a rebuild per mix took an unsuccessful repair on the
    tiny tied ResNet from 4 prunings to 64)."""
    from deepslim.search.space import prune_policy  # looked up per repair (tests count its calls on the module)

    x = ev.data.example_input
    # the current notch's pruned model, or the toolkit's refusal of it: its precision mixes differ only in ``int8``;
    # one notch's at a time (review R2 19 L4: every notch's model was held to the end, and a refusal pruned again
    # for each mix)
    pruned: dict[str, Any] = {}
    estimates: dict[str, float] = {}  # model key -> the table's prediction (a unit alone is ordered, then judged)

    def predicted(p: Policy) -> float:
        key = model_key(ev.space, p)
        if key not in estimates:
            shape = str(sorted(replace(p, int8={}).params().items()))  # pruning reads no int8 choice
            if shape not in pruned:
                pruned.clear()
                try:
                    pruned[shape] = prune_policy(ev.model, ev.space, p, example_input=x)
                except DeepSlimError as refused:
                    pruned[shape] = refused
            if isinstance(net := pruned[shape], DeepSlimError):
                raise net
            estimates[key] = float(ev.table.predict_keys(list(layer_keys(net, x, p.int8).values())))
        return estimates[key]

    own = predicted(policy)
    if not own > 0:
        return None
    seen = {model_key(ev.space, policy)}
    alone_checks = checks  # the one-group-alone shapes' own checks (review R20 M1)
    for notches in range(1 + max((len(g.keep) for g in ev.space.groups), default=0)):
        steps: list[tuple[float, bool, Policy]] = []  # (estimate, a one-group-alone shape, the step)
        shapes = notch_shapes(ev.space, policy, notches)
        for i, shape in enumerate(shapes):
            for step in precision_steps(ev.space, shape, predicted):
                key = model_key(ev.space, step)
                if key in seen:
                    continue
                seen.add(key)
                with contextlib.suppress(DeepSlimError):  # refused by the toolkit (its export, say), as a trial is
                    steps.append((latency_ms * predicted(step) / own, i < len(shapes) - 1, step))
        for estimate, alone, step in sorted(steps, key=lambda s: -s[0]):  # the least slack first
            if estimate * (statistics.median(learnt) if learnt else 1.0) > limit * (1 - margin):
                continue
            if alone and alone_checks <= 0:
                continue
            try:
                judged = ev.build(step, "none")[1]
                if learnt is not None and estimate > 0:
                    learnt.append(judged / estimate)
                if judged <= limit * (1 - headroom):
                    return step
            except DeepSlimError:
                pass
            if alone:
                alone_checks -= 1
                continue
            checks -= 1
            if checks <= 0:
                return None
    return None


def notch_shapes(space: SearchSpace, policy: Policy, notches: int) -> list[Policy]:
    """The channel counts a repair tries at ``notches``: every group that many options down its grid
    (:meth:`SearchSpace.narrower`); for a policy with no float precision unit alive (every live layer int8: no
    precision step left), first each group alone one notch further than ``notches - 1``. Why (session 19): a repair
    of an all-int8 sample notched every group at once, 248 -> 120 and 224 -> 120 channels (176 -> 112), far under
    the limit where one group a notch narrower may have been enough."""
    base = space.narrower(policy, notches)
    if notches == 0 or _float_units(space, policy):
        return [base]
    before = space.narrower(policy, notches - 1)
    alone = [replace(before, keep={**before.keep, g.name: base.keep[g.name]}) for g in space.groups
             if base.keep[g.name] != before.keep[g.name]]  # fmt: skip
    if len(alone) < 2:  # one group left to narrow: "alone" is every group (review R2-20: judged on the main checks)
        return [base]
    return [*alone, base]


def _float_units(space: SearchSpace, policy: Policy) -> list[list[str]]:
    """``policy``'s float precision units alive: each an int8 layer with the layers tied to it
    (:meth:`SearchSpace.followers`), alive while one of them is, float where its leader is."""
    leaders = space.followers()
    alive = _depth.alive(policy.int8, policy.drop)
    units: dict[str, list[str]] = {}
    for name in space.int8_layers:
        units.setdefault(leaders.get(name, name), []).append(name)
    return [members for lead, members in units.items()  # a tied unit lives while any of its layers does
            if any(n in alive for n in members) and not policy.int8[lead]]  # fmt: skip


def precision_steps(space: SearchSpace, policy: Policy, predicted: Callable[[Policy], float],
                    most: int = REPAIR_MIXES) -> list[Policy]:  # fmt: skip
    """``policy`` with mixes of its float precision units turned int8 (a unit: an int8 layer with the layers tied
    to it, :meth:`SearchSpace.followers`, while one of them is alive in ``policy``), the policy itself first: every
    mix when there are at most ``most`` of them; else the policy, each unit alone, and the units added one at a time
    in the order of what each saves alone (``predicted``; a unit whose prediction the toolkit refuses, last:
    :func:`repaired` skips its step as it skips every refused step), ending at every layer int8."""
    floats = _float_units(space, policy)

    def turned(chosen: Sequence[list[str]]) -> Policy:
        return replace(policy, int8={**policy.int8, **{n: True for members in chosen for n in members}})

    if 2 ** len(floats) <= most:
        return [turned(mix) for k in range(len(floats) + 1) for mix in itertools.combinations(floats, k)]

    def saves(p: Policy) -> float:  # a unit whose step the toolkit refuses goes last (its step is skipped later)
        try:
            return predicted(p)
        except DeepSlimError:
            return math.inf

    alone = [turned([u]) for u in floats]
    order = [u for _, u in sorted(zip((saves(p) for p in alone), range(len(floats)), strict=True))]
    return [policy, *alone, *(turned([floats[i] for i in order[:k]]) for k in range(2, len(floats) + 1))]


def queue_repair(study: Any, number: int, policy: Policy, choices: Mapping[str, Any] | None = None) -> int | None:
    """Write ``policy`` onto the study's first queued empty trial slot (its fixed parameters: the sampler is told
    the repaired policy as that trial's choices, and the slot stays one of the search's ``trials``), marked as the
    repair of trial ``number``; the slot's number, or None when no empty slot is left or a trial already holds
    these choices (a retried trial repairs again to the same policy: it is judged once). The slot also records
    :data:`REPAIR_RULE` (``repair_rule``), which its candidate carries into the search's JSON: a study resumed
    across a change of the repair tells the recorded rule's repairs from older ones (one queued before the rule was
    recorded reads :data:`REPAIR_RULE_UNRECORDED`, which names no rule: both the all-int8-first rule and session
    19's first lightest-change runs queued such slots). ``choices``: the space's
    (:meth:`SearchSpace.choices`); the parameters written are those a trial suggests — a tied layer's follower is
    none, and a completed trial's parameters, compared here, never hold it."""
    from optuna.trial import TrialState

    storage, params = study._storage, policy.params()
    if choices is not None:
        params = {k: v for k, v in params.items() if k in choices}
    states = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    trials = storage.get_all_trials(study._study_id, deepcopy=False, states=states)
    if any(t.params == params or t.system_attrs.get("fixed_params") == params for t in trials):
        return None
    for t in sorted(trials, key=lambda t: t.number):
        if _empty_slot(t):
            storage.set_trial_system_attr(t._trial_id, "fixed_params", params)
            storage.set_trial_user_attr(t._trial_id, REPAIR_ATTR, number)
            storage.set_trial_user_attr(t._trial_id, REPAIR_RULE_ATTR, REPAIR_RULE)  # review R19 L8
            return int(t.number)
    return None


def _empty_slot(t: Any) -> bool:
    """Whether queued trial ``t`` is an empty slot (its choices still to come from the sampler): waiting, without
    parameters or fixed parameters, and not the retry of a failed trial (which holds that trial's parameters:
    Optuna answers its suggestions from them, so a repair written there would never run, review R16 M1)."""
    from optuna.trial import TrialState

    return (t.state == TrialState.WAITING and not t.params and not t.system_attrs.get("fixed_params")
            and "failed_trial" not in t.system_attrs)  # fmt: skip


class JudgedModels:
    """The study's completed trials that were judged themselves (not repeats), indexed by the model each builds
    (:func:`model_key`: the canonical form of its policy, :meth:`SearchSpace.canonical` — policies that differ only
    inside dropped blocks, or not at all, build one model). Each trial's policy is canonicalized once, when the
    index first reads it; the lookup this replaces canonicalized every completed trial again on each new trial.
    Trials completed since the last look (by this process, by workers sharing the storage, or by the earlier calls of
    a resumed search) join the index at the next :meth:`first`. Why: the latency cache already took such policies for
    one model, but the accuracy proxy fine-tuned each again (~11 CPU-s a trial on ResNet-20)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._first: dict[str, tuple[int, dict[str, Any]]] = {}  # model key -> (trial number, candidate doc)
        self._read: set[int] = set()

    def first(self, study: Any, policy: Policy) -> Candidate | None:
        """The candidate of the earliest completed trial of ``study`` (not a repeat) that builds ``policy``'s
        model; None when there is none."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number in self._read:
                continue
            self._read.add(t.number)
            doc = t.user_attrs.get("candidate")
            if doc is None or REPEAT_ATTR in t.user_attrs:
                continue
            key = model_key(self.space, Policy.from_dict(doc["policy"]))
            if key not in self._first or self._first[key][0] > t.number:
                self._first[key] = (t.number, doc)
        found = self._first.get(model_key(self.space, policy))
        return Candidate.from_dict(found[1]) if found is not None else None


def model_key(space: SearchSpace, policy: Policy) -> str:
    """The key of the model ``policy`` builds: its canonical form's choices, sorted."""
    return str(sorted(space.canonical(policy).params().items()))
