"""The latency frame's calibration (:func:`deepslim.search.search`'s first step): the dense model, the space's
smallest policies and a few more measured end to end, the layer table fitted to them and the node table calibrated
(fitted in its sum and the model's weight bytes, or anchored to the dense model) — so that every trial, the budget and
the uniform family are predicted in measured milliseconds. Split out of the engine: what it measures and fits is one
concern, read apart from the search's steps."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from torch import nn

from deepslim.search import frame as _frame
from deepslim.search.evaluate import Candidate, Evaluator
from deepslim.search.node_table import MIN_WEIGHT_POINTS, weight_mb
from deepslim.search.space import Policy, SearchSpace

log = logging.getLogger(__name__)

FLOOR_LEVELS = 0.1  # calibration levels (0: fewest channels, 1: all) measured in float, as the floor is


def calibrate_table(ev: Evaluator, recorded: dict[str, Any] | None = None) -> Candidate:
    """Measure the dense model, the smallest policies, a few random mixed ones and ``ev.calibration_policies`` more
    (random, crowded toward the fewest channels: :func:`calibration_set`; then also every policy the feasibility
    check may take for the floor, :func:`frame.floor_policies`) end to end, fit the layer table to them and
    calibrate the node table (:func:`_calibrate_nodes`); the dense candidate (measured end to end, predicted by the
    evaluator's latency model and, where there is one, by the other table too). ``recorded``: a study's
    :func:`frame.table_state`, put back instead of measuring (a resumed study judges with its first run's table)."""
    space, x = ev.space, ev.data.example_input
    if recorded is not None:
        _frame.restore_tables(ev, recorded)
        return ev.evaluate(space.dense(), recovery="none", measure=ev.table.end_to_end)
    if ev.nodes is not None:  # a new study's own lowered entries start empty (a node table may serve one before)
        ev.nodes.study_entries = {}
    policies = calibration_set(space, ev.calibration_policies)
    if ev.calibration_policies:  # the floor the feasibility check judges is a point of the fit, not extrapolated
        known = {str(p.to_dict()) for p in policies}
        policies += [p for p in _frame.floor_policies(ev) if str(p.to_dict()) not in known]
    if ev.table.end_to_end:
        pairs, parts = [], []
        for p in policies:
            net, keys = ev.model_and_keys(p, "none")
            parts.append(ev.table.parts(keys))
            pairs.append((net, x))
        measured = ev.table.measure(pairs) or []
        ev.table.calibrate_parts(list(zip(parts, measured, strict=True)))
        if ev.nodes is not None and measured:
            _calibrate_nodes(ev, policies, [n for n, _ in pairs], measured)
    return ev.evaluate(space.dense(), recovery="none", measure=ev.table.end_to_end)


def _calibrate_nodes(ev: Evaluator, policies: list[Policy], nets: list[nn.Module], measured: list[float]) -> None:
    """With at least :data:`~deepslim.search.node_table.MIN_WEIGHT_POINTS` models measured, fit the node table as
    ``a·sum + b·max(0, weight MiB − knee) + c`` through the dense model's point (``policies[0]``;
    :meth:`NodeTable.calibrate_weights`: on MobileNetV2 the sums' error followed the weights' bytes beyond a knee
    that the fit chooses on these points, by the least worst error of each point left out of the fit since session
    16 — session 14, 69 policies in three fresh runs: 94 / 84 / 72 % within ±10 % with the knee against 78 / 72 /
    68 % without — and through dense a relative budget keeps its meaning); when
    that fit fails, a line in the sum through dense (:meth:`NodeTable.calibrate_sum`: a prune-only space, where the
    bytes follow the sums); with fewer points, or when both fail, anchor its scale to the dense model's measurement
    (:meth:`NodeTable.anchor`: predictions in measured milliseconds, ratios unchanged — a line in the sum alone,
    fitted through the 7 default points, predicted worse than the plain sums). The anchor's error band is its
    largest relative error on every point measured (the floor among them: a floor it over-predicts is measured by
    the feasibility check, not refused on the prediction), at least 10 %.

    Before the fit, the entries the calibration's canaries read faster than by more than the tolerance are lowered
    (:meth:`NodeTable.lower_entries`) and the models re-summed (:meth:`Evaluator.resum_nodes`): the first batch, the
    dense model's on a fresh cache, has no canaries of its own, and a slow stretch over both of its twins moved the
    whole frame (session 16's first run: dense summed 213 µs against 104–115 µs). Lowered for this study only
    (:attr:`NodeTable.study_entries`, recorded in its frame): the shared cache, from which other studies re-sum
    their dense models on resume, is not written (review R17 M1)."""
    if ev.nodes is None:
        return
    raws = [ev.node_raw(p, net) for p, net in zip(policies, nets, strict=True)]
    lowered = ev.nodes.lower_entries()  # canaries read earlier entries slow: applied, in this study, before the fit
    if lowered:
        log.info("the node table lowered %d entries its canaries read faster; %d calibration sums moved", lowered,
                 ev.resum_nodes())  # fmt: skip
        raws = [ev.node_raw(p, net) for p, net in zip(policies, nets, strict=True)]
    triples = [(r, weight_mb(net), m) for r, net, m in zip(raws, nets, measured, strict=True) if r is not None]
    dense_ok = raws[0] is not None and measured[0] == measured[0]
    if sum(1 for m in measured if m == m) >= MIN_WEIGHT_POINTS:
        if ev.nodes.calibrate_weights(triples, through=triples[0] if dense_ok else None, knee=True):
            return
        if dense_ok and ev.nodes.calibrate_sum([(r, m) for r, _, m in triples], through=(triples[0][0], triples[0][2])):
            log.warning("the node table's weight-bytes fit failed on %d points: a line in the node sum through the "
                        "dense model instead", len(triples))  # fmt: skip
            return
        log.warning("the node table's weight-bytes fit failed on %d points: anchored to the dense model instead",
                    len(triples))  # fmt: skip
    if raws[0] is not None:
        ev.nodes.anchor(raws[0], measured[0])
        ev.nodes.points = [(r, m) for r, _, m in triples]
        ev.nodes.error_band = ev.nodes.sum_band()



def calibration_set(space: SearchSpace, extra: int) -> list[Policy]:
    """The policies :func:`calibrate_table` measures: the dense model first, the fewest channels (float; with int8
    layers also all int8, uniform 0.5 in int8 and three random policies), then ``extra`` random policies
    (:meth:`SearchSpace.sample_at`) at levels ``(i / (extra - 1))²``: level 0 (the floor's neighbours) included and
    a third of them within the lowest tenth of the levels, those in float like the fewest-channel policy. Why
    crowded there: a budget near the space's floor is where a fit decides feasibility, and evenly spread levels with
    random precisions left it extrapolated below the policies it was fitted on (session 11: the smallest MobileNetV2
    policy predicted at 0.31x of dense, such policies measured at 0.25-0.30x)."""
    import random

    policies = [space.dense(), space.smallest(False)]
    if space.int8_layers:
        rng = random.Random("calibration")  # not the stream check_table(seed=0) samples from
        policies += [space.smallest(True), space.uniform(0.5, True)] + [space.sample(rng) for _ in range(3)]
    spread = random.Random("calibration-spread")
    for i in range(extra):
        level = (i / max(extra - 1, 1)) ** 2
        p = space.sample_at(spread, level)
        policies.append(replace(p, int8=dict.fromkeys(p.int8, False)) if level <= FLOOR_LEVELS else p)
    return policies
