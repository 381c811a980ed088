"""The finals' verdict on one re-measured model and the rule for a model read over and timed once more
(:func:`verdict`, :func:`reread`; split off :mod:`deepslim.search.finals`, whose docstring gives the protocol). A
verdict recomputes from its own record, the JSON's too: a run not measured (NaN, written as null) counts as no run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from deepslim.search.budget import Budget

VERDICTS = ("meets", "within noise", "over")
DENSE_STEADY = 1.1  # a re-reading whose dense model read slower than this times the first's passes no model


def verdict(reps: Sequence[float], dense: Sequence[float], budget: Budget | None,
            limit: float | None) -> dict[str, Any] | None:  # fmt: skip
    """The re-measurement of one finalist: its measured latency (the minimum over runs), the noise band (minimum and
    maximum), the budget in milliseconds (relative budgets: of the dense model in the same run) and the verdict
    (module docstring); None when no run measured it."""
    reps, dense = _runs(reps), _runs(dense)
    pairs = _pairs(reps, dense)
    if not pairs:
        return None
    measured = [r for r, _ in pairs]
    timed = [d for d in dense if d == d]
    doc: dict[str, Any] = {"measured_ms": min(measured), "band_ms": [min(measured), max(measured)],
                           "repeats_ms": reps, "dense_repeats_ms": dense,
                           "dense_measured_ms": min(timed) if timed else None}  # fmt: skip
    if budget is None or limit is None:
        return {**doc, "budget_ms": None, "budget_band_ms": None, "verdict": "meets", "within_budget": True}
    per = _run_budgets(pairs, budget, limit)
    within = [r <= b * (1 + 1e-9) for (r, _), b in zip(pairs, per, strict=True)]
    result = VERDICTS[0] if all(within) else VERDICTS[1] if any(within) else VERDICTS[2]
    return {**doc, "budget_ms": min(per) if budget.relative else limit, "budget_band_ms": [min(per), max(per)],
            "verdict": result, "within_budget": result != "over"}  # fmt: skip


def reread(first: dict[str, Any], second: dict[str, Any], budget: Budget | None,
           limit: float | None) -> dict[str, Any]:  # fmt: skip
    """A model read ``over`` (``first``) and timed once more (``second``): ``within noise`` (kept) only when
    ``second`` measured and met its budget in every run (each against its own run's dense model) and, for a relative
    budget, the dense model's median in ``second`` is at most :data:`DENSE_STEADY` times its median in ``first``;
    else ``over``. Its time, the dense model's and the budget are ``second``'s (the minimum of its runs, the same
    estimator as every other model's); ``repeats_ms``/``dense_repeats_ms`` hold both readings' runs, ``readings``
    each reading, ``median_of_budget`` the median of all the runs' shares of their budgets, ``reread_max_of_budget``
    the re-reading's largest share and ``dense_change`` the dense medians' ratio (the last three for the notes). Why
    not the median of both readings (session 18's first rule): a load that moved the models' runs through the first
    reading passed over a model not well inside its budget (session 17, run 2: policies at 0.43-0.48x dense against
    0.5x read ~0.55x), and a dense model loaded through the whole
    re-reading lowered every share of it alike and passed a model truly over. Under run noise alone this rule keeps a
    model truly over its budget as often as the median did (review R2 18's simulation, docs/search.md)."""
    if budget is None or limit is None:
        return second
    reps = _runs(first["repeats_ms"]) + _runs(second["repeats_ms"])
    dense = _dense_runs(first) + _dense_runs(second)
    pairs = _pairs(reps, dense)
    per = _run_budgets(pairs, budget, limit)
    share = statistics.median(r / b for (r, _), b in zip(pairs, per, strict=True))
    change = _dense_change(first, second)
    again = _pairs(_runs(second["repeats_ms"]), _dense_runs(second))
    worst = max((r / b for (r, _), b in zip(again, _run_budgets(again, budget, limit), strict=True)), default=None)
    complete = len(again) == len(second["repeats_ms"])  # a run not measured is not a run within
    steady = not budget.relative or change is None or change <= DENSE_STEADY * (1 + 1e-9)
    result = VERDICTS[1] if second["verdict"] == VERDICTS[0] and complete and steady else VERDICTS[2]
    return {**second, "repeats_ms": reps, "dense_repeats_ms": dense, "median_of_budget": share,
            "reread_max_of_budget": worst, "dense_change": change, "verdict": result,
            "within_budget": result != VERDICTS[2], "readings": [first, second]}  # fmt: skip


def rejected(first: dict[str, Any], second: dict[str, Any], budget: Budget, limit: float) -> list[str]:
    """Why :func:`reread` judges ``second`` (a model read over in ``first``, timed again) ``over``: each of its
    runs not measured, each run over its own run's budget, and the dense model's change past :data:`DENSE_STEADY`
    (relative budgets); empty when it keeps the model."""
    reps, dense = _runs(second["repeats_ms"]), _dense_runs(second)
    why = []
    for run, (r, d) in enumerate(zip(reps, dense, strict=True), 1):
        if r != r:
            why.append(f"run {run} not measured")
        elif r > (b := _run_budgets([(r, d)], budget, limit)[0]) * (1 + 1e-9):
            why.append(f"run {run} at {r / b:.3g}x its budget")
    change = _dense_change(first, second)
    if budget.relative and change is not None and change > DENSE_STEADY * (1 + 1e-9):
        why.append(f"the dense model at {change:.3g}x its median in the first reading, over {DENSE_STEADY:.3g}x")
    return why


def _dense_change(first: dict[str, Any], second: dict[str, Any]) -> float | None:
    """The dense model's median in ``second`` over its median in ``first`` (None when either has no dense run)."""
    medians = [[d for d in _dense_runs(doc) if d == d] for doc in (first, second)]
    if not all(medians):
        return None
    return statistics.median(medians[1]) / statistics.median(medians[0])


def _dense_runs(doc: dict[str, Any]) -> list[float]:
    return _runs(doc.get("dense_repeats_ms") or [float("nan")] * len(doc["repeats_ms"]))


def _runs(times: Sequence[float | None]) -> list[float]:
    """Run times as floats, a run not measured as NaN: the search writes NaN as null in its JSON (review R2 18 L5:
    a failed dense run, null there, stopped a verdict being recomputed from its own record)."""
    return [float("nan") if t is None else float(t) for t in times]


def _pairs(reps: Sequence[float], dense: Sequence[float]) -> list[tuple[float, float]]:
    """Each measured run's (model, dense) times; NaN dense where the run had none."""
    return [(r, d) for r, d in zip(reps, dense or [float("nan")] * len(reps), strict=True) if r == r]


def _run_budgets(pairs: Sequence[tuple[float, float]], budget: Budget, limit: float) -> list[float]:
    """Each run's budget in ms: of the dense model in that run (relative budgets), else the limit itself."""
    per = [budget.value * d if budget.relative else limit for _, d in pairs]
    return [b if b == b else limit for b in per]  # a run without the dense model: the search's own limit
