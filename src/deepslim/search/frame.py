"""The frame a search judges latency in: the dense model's value that relative budgets scale, the smallest policy
a budget may ask for (refused before any trial when tighter), and the uniform family judged as trials are — all in
the prediction of the search's latency model (the node table by default, :mod:`deepslim.search.node_table`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from deepslim.errors import ConfigError, DeepSlimError
from deepslim.search import _depth
from deepslim.search._timing import PairTimer, describe
from deepslim.search.budget import UNIT_NAMES, Budget
from deepslim.search.evaluate import Candidate, Evaluator
from deepslim.search.finals import feasible
from deepslim.search.latency import layer_keys
from deepslim.search.node_table import weight_mb
from deepslim.search.space import Policy, SearchSpace, prune_policy

log = logging.getLogger(__name__)


def base(dense: Candidate, metric: str) -> float:
    """The dense model's value that relative budgets scale: for latency the prediction of the search's latency model,
    the frame in which trials are judged (the dense model's end-to-end measurement is reported beside it)."""
    if metric == "latency":
        return float(dense.measurement.extra.get("predicted_latency_ms", dense.latency_ms))
    return dense.value(metric)


def floor_policies(ev: Evaluator) -> list[Policy]:
    """The policies that may be the fastest of the space: the fewest channels with, per layer, the precision the
    layer table times faster (per tied group, :attr:`SearchSpace.tied`, the precision its layers' summed times
    favour: the space chooses it once, review R17 L4), and every layer int8 or float alike (conversions between
    precisions make the per-layer choice not always the best); duplicates dropped."""
    space, x = ev.space, ev.data.example_input
    least = space.smallest(False)
    net = prune_policy(ev.model, space, least, example_input=x)
    lead = space.followers()
    gain: dict[str, float] = {}  # per choice (a tied group's first layer): float's time less int8's
    for name, key in layer_keys(net, x, {}).items():
        if name in least.int8:
            saved = ev.table.layer_ms([key])[0] - ev.table.layer_ms([replace(key, int8=True)])[0]
            gain[lead.get(name, name)] = gain.get(lead.get(name, name), 0.0) + saved
    int8 = {n: gain[lead.get(n, n)] > 0 for n in least.int8 if lead.get(n, n) in gain}
    options = (replace(least, int8={**least.int8, **int8}), least, space.smallest(True))
    return list({str(p.to_dict()): p for p in options}.values())


def _smallest(ev: Evaluator, budgets: tuple[Budget, ...]) -> dict[str, tuple[float, Policy]]:
    """The least latency, size and energy any policy reaches, and a policy that reaches it: for latency the least
    prediction of the search's latency model over :func:`floor_policies`."""
    found: dict[str, tuple[float, Policy]] = {}
    if any(b.metric == "latency" for b in budgets):
        found["latency"] = min(_predicted(ev, floor_policies(ev)), key=lambda t: t[0])
    for metric in ("size", "energy", "memory"):
        if any(b.metric == metric for b in budgets):
            found[metric] = ev.least(metric)
    return found


def _predicted(ev: Evaluator, policies: Sequence[Policy]) -> list[tuple[float, Policy]]:
    """Each policy's predicted latency, leaving out those the toolkit refuses (their export, say); if it refuses
    them all, its error."""
    found, error = [], None
    for p in policies:
        try:
            found.append((ev.build(p, "none")[1], p))
        except DeepSlimError as exc:
            error = exc
    if not found and error is not None:
        raise error
    return found


def check_feasible(ev: Evaluator, budgets: tuple[Budget, ...], limits: dict[str, float], dense: Candidate) -> None:
    """Refuse (ConfigError, before any trial) a budget tighter than the space's smallest value, named in the message.
    A latency table's floor predicted over the limit by no more than the table's error band (its largest relative
    error on the calibration's points, at least 10 %) is measured end to end first (:func:`measure_floor`) and the
    measurement decides; when it meets the limit the table is pinned through it (:func:`_pin`), else no policy
    near the floor could be judged feasible."""
    for metric, (value, policy) in _smallest(ev, budgets).items():
        limit, base_value = limits[metric], base(dense, metric)
        frame = "" if metric != "latency" else (", measured end to end" if ev.latency_model == "measured" else
                                                f", as the {ev.latency_model[:-1]} table predicts it")
        if metric == "latency" and limit < value <= limit * (1 + _model(ev).error_band):
            model, recorded = _model(ev), _model(ev).floor  # recorded: restored from the study on resume
            fresh = recorded is None or recorded.get("policy") != policy.to_dict()
            measured = measure_floor(ev, policy, base_value) if fresh else float(recorded["measured_ms"])
            if measured == measured:
                if fresh:
                    model.floor = {"policy": policy.to_dict(), "predicted_ms": value, "measured_ms": measured,
                                   "limit_ms": limit, "error_band": model.error_band, "pinned": False}  # fmt: skip
                note = (f", measured end to end against dense, the median of {ev.measure_repeats} runs; the "
                        f"{ev.latency_model[:-1]} table predicted {value / base_value:.2f}x")
                value, frame = measured, note
                if measured <= limit:
                    if fresh:
                        model.floor["pinned"] = _pin(ev, policy, dense, measured)
                    continue
        if value > limit:
            unit, times = UNIT_NAMES[metric], value / base_value
            raise ConfigError(f"the {metric} budget {limit:.4g} {unit} is tighter than the smallest policy in this "
                              f"space allows ({value:.4g} {unit}, {times:.2f}x of dense{frame}: "
                              f"{_describe(ev.space, policy)}): loosen it to at least {times:.2f}x or widen the "
                              "space")  # fmt: skip


FRAME_ATTR = "latency_frame"  # the study's user attribute: the tables' calibration and the floor check's result
_FIELDS = {"layers": ("scale", "offset", "change_weight", "error_band", "points"),
           "nodes": ("scale", "offset", "weight_coef", "weight_knee", "error_band", "points", "triples",
                     "study_entries")}  # fmt: skip
MEASURED_FIELD = "measured_dense_ms"  # the measured model's frame in table_state (Evaluator.reference)
# fields recorded since a later version: a frame without one had the default (study_entries: the node entries the
# calibration lowered for this study alone, NodeTable.lower_entries; review R17 M1)
_ADDED: dict[str, Any] = {"weight_knee": 0.0, "study_entries": {}}


def table_state(ev: Evaluator) -> dict[str, Any]:
    """What rebuilds the search's latency frame: both tables' calibration (after the floor check's pin, if any)
    and the floor check's result (:func:`check_feasible`); recorded in the study once, when it is created."""
    tables = {"layers": ev.table, "nodes": ev.nodes}
    state: dict[str, Any] = {key: {f: getattr(t, f) for f in _FIELDS[key]} for key, t in tables.items() if t}
    if ev.reference() is not None:  # the measured model's frame: the dense model's settled milliseconds
        state[MEASURED_FIELD] = ev.reference()
    return {**state, "floor": _model(ev).floor}


def recorded_reference(ev: Evaluator, state: dict[str, Any] | None) -> float | None:
    """The measured model's frame a resumed study recorded (:func:`table_state`), for
    :meth:`Evaluator.settle_reference` to keep; None for a new study or another latency model, and for a study
    recorded without it (an older deepslim), with a warning: its frame is measured again, under today's load, so its
    earlier trials' milliseconds may be judged against a limit in another frame."""
    if state is None or ev.latency_model != "measured":
        return None
    if MEASURED_FIELD not in state:
        log.warning("this study recorded no dense reference for the measured latency model (an older deepslim): its "
                    "frame is measured again, so the limit in ms moves with the load since its first run and its "
                    "earlier trials are judged against it")  # fmt: skip
        return None
    return float(state[MEASURED_FIELD])


def restore_tables(ev: Evaluator, state: dict[str, Any]) -> None:
    """Put back a recorded :func:`table_state`: a resumed study judges with the table its first run judged with,
    and the floor check reuses the recorded measurement instead of measuring again (a noisy re-measurement just
    over the limit would refuse a study that already ran trials, or pin it on another scale)."""
    for key, table in (("layers", ev.table), ("nodes", ev.nodes)):
        if table is not None and key in state:
            for f in _FIELDS[key]:
                v = state[key].get(f, _ADDED[f]) if f in _ADDED else state[key][f]
                setattr(table, f, [tuple(p) for p in v] if f in ("points", "triples") else
                        {str(k): float(t) for k, t in v.items()} if f == "study_entries" else float(v))
    _model(ev).floor = state.get("floor")


def _model(ev: Evaluator) -> Any:
    """The table the search's latency model predicts with (the node table or the layer table)."""
    return ev.nodes if ev.latency_model == "nodes" and ev.nodes is not None else ev.table


def measure_floor(ev: Evaluator, policy: Policy, base_ms: float) -> float:
    """``policy`` (unrecovered: latency follows the graph, not the weights) timed end to end against the dense model
    as the measured latency model times a trial — interleaved pairs, ``ev.measure_repeats`` processes, the median
    ratio — in the search's frame: ``base_ms`` × that ratio. NaN when the table cannot time whole models or the model
    cannot be measured (the prediction then decides, as before)."""
    if ev.latency_model == "measured" or not ev.table.end_to_end:
        return float("nan")
    net, _ = ev.model_and_keys(policy, "none")
    try:
        runs = describe(PairTimer(ev.table, ev.model, ev.data.example_input).runs(net, ev.measure_repeats))
    except DeepSlimError as exc:
        log.warning("the space's smallest policy could not be measured end to end: %s", exc)
        return float("nan")
    log.info("the space's smallest policy measured at %.3fx of dense (runs %s)", runs["median"],
             ", ".join(f"{r:.3f}" for r in runs["ratios"]))  # fmt: skip
    return base_ms * float(runs["median"])


def _pin(ev: Evaluator, policy: Policy, dense: Candidate, measured: float) -> bool:
    """Pin the search's latency table through the dense model (at its prediction: relative limits keep their meaning)
    and the floor measured end to end, so that trials near the floor are judged by what the runtime does; a warning
    when the table cannot be pinned (a line through both would not rise with the sums)."""
    at = base(dense, "latency")
    net, keys = ev.model_and_keys(policy, "none")
    if ev.latency_model == "nodes" and ev.nodes is not None:
        raw_d, raw_f = ev.node_raw(ev.space.dense(), ev.model), ev.node_raw(policy, net)
        ok = raw_d is not None and raw_f is not None and ev.nodes.pin(
            (raw_d, weight_mb(ev.model), at), (raw_f, weight_mb(net), measured))  # fmt: skip
    else:
        dense_keys = ev.model_and_keys(ev.space.dense(), "none")[1]
        ok = ev.table.pin((_layer_raw(ev, dense_keys), at), (_layer_raw(ev, keys), measured))
    if not ok:
        log.warning("the latency table could not be pinned through the measured floor: trials near it are judged "
                    "by the table's prediction")  # fmt: skip
    return bool(ok)


def _layer_raw(ev: Evaluator, keys: list[Any]) -> float:
    layers, changes = ev.table.parts(keys)
    return layers + ev.table.change_weight * changes


def _describe(space: SearchSpace, policy: Policy) -> str:
    """A policy in words: where the space has depth choices the residual blocks dropped, then its channels kept,
    layers in int8 and, where the space has them, sparse and k-means layers — counting only the groups and layers
    outside the dropped blocks (those inside are gone with them)."""
    drop = policy.drop
    widths = _depth.alive({g.name: g.width for g in space.groups}, drop)
    int8_layers = _depth.alive(dict.fromkeys(space.int8_layers), drop)
    kept = sum(_depth.alive(policy.keep, drop).values())
    q = sum(1 for v in _depth.alive(policy.int8, drop).values() if v)
    words = f"{kept} of {sum(widths.values())} channels kept, {q} of {len(int8_layers)} layers int8"
    if space.blocks:
        words = f"{len(_depth.dropped(drop))} of {len(space.blocks)} residual blocks dropped, " + words
    sparse = [s for s in _depth.alive(policy.sparsity, drop).values() if s > 0]
    if space.sparse_layers:
        words += f", {len(sparse)} of {len(_depth.alive(dict.fromkeys(space.sparse_layers), drop))} layers sparse" + (
            f" (up to {max(sparse):g})" if sparse else "")  # fmt: skip
    live = _depth.alive(policy.kmeans, drop)
    shared = [b for n, b in live.items() if b > 0 and not policy.int8.get(n, False)]
    if space.kmeans_layers:
        words += f", {len(shared)} of {len(_depth.alive(dict.fromkeys(space.kmeans_layers), drop))} layers k-means" + (
            f" ({min(shared)} bits or more)" if shared else "")  # fmt: skip
    return words


PRIOR_OUTER = (1.0, 0.75)  # keep ratios of the role a structured prior keeps wide


def structured_priors(ev: Evaluator, limits: dict[str, float], ratios: Sequence[float]) -> tuple[Policy, ...]:
    """The role-structured family a study starts from besides uniform: for each keep ratio ``outer`` of
    :data:`PRIOR_OUTER` and each group role the space has (:attr:`GroupChoice.role`: residual bottlenecks, depthwise
    expansions, plain groups such as MobileNetV2's 1280-wide last layer), that role kept at ``outer`` and every other
    role at the widest ratio among ``ratios`` below it whose latency meets the budget — judged by the search's
    latency model, unrecovered (latency depends on the graph, not on the weights), found by bisection (latency falls
    as the ratio does: ~3 judgements each). The first member, bottlenecks whole and expansions pruned, is the
    "hidden-heavy" policy of AMC and NetAdapt's MobileNets. Why: a search otherwise starts from uniform pruning only,
    and on MobileNetV2 (24 groups) a few dozen trials do not find the structure by chance; which role to keep wide
    depends on the network (on the Fashion-MNIST MobileNetV2 it was the expansions, BENCHMARKS.md session 8). Empty
    without a latency budget or with a single role; a policy the toolkit refuses is skipped."""
    limit = limits.get("latency")
    present = [r for r in ("residual", "depthwise", "plain") if any(g.role == r for g in ev.space.groups)]
    if limit is None or len(present) < 2:
        return ()
    found: dict[str, Policy] = {}
    for outer in PRIOR_OUTER:
        for kept in present:
            options = [ev.space.by_role({role: outer if role == kept else r for role in present})
                       for r in sorted((r for r in ratios if r < outer), reverse=True)]  # widest first
            lo, hi = 0, len(options)  # the first that fits lies in [lo, hi]; hi: none does
            while lo < hi:
                mid = (lo + hi) // 2
                if _fits(ev, options[mid], limit):
                    hi = mid
                else:
                    lo = mid + 1
            if lo < len(options):
                found.setdefault(str(options[lo].to_dict()), options[lo])
    return tuple(found.values())


def _fits(ev: Evaluator, policy: Policy, limit: float) -> bool:
    """Whether ``policy``'s latency (the search's model, unrecovered) is within ``limit``; a refused one is not."""
    try:
        return ev.build(policy, "none")[1] <= limit * (1 + 1e-9)
    except DeepSlimError as exc:
        log.warning("structured prior not judged: %s", exc)
        return False


def uniform_family(ev: Evaluator, ratios: Sequence[float], limits: dict[str, float]) -> tuple[Candidate, ...]:
    """Uniform policies (one keep ratio everywhere; float, and all-int8 if the space has int8), judged as trials; one
    the toolkit refuses (its export, say) is left out with a warning, as a refused trial is."""
    precisions = [False, True] if ev.space.int8_layers else [False]
    family = []
    for r in ratios:
        for q in precisions:
            try:
                family.append(feasible(ev.evaluate(ev.space.uniform(r, q)), limits))
            except DeepSlimError as exc:
                log.warning("uniform policy keep %g%s not judged: %s", r, " + int8" if q else "", exc)
    return tuple(family)
