"""How good a latency table is: random policies of a search space measured end to end beside the table's predictions
(:func:`check_table`), reported as relative error (p50, p90, share within ±10 %) and Kendall's rank correlation —
the table's, the node table's and the MAC count's (the proxy other tools optimise), so that a table that ranks
policies no better than MACs shows it (:class:`TableCheck`). The policies are timed in chunks, each with the dense
model as its reference, and a chunk whose reference reads slow against the others is timed again
(:func:`steady_chunks`): a slow stretch of the machine moves a whole chunk's times, not by one factor for all.
With ``passes=2`` every chunk is timed a second time, in reverse order, and each policy's measurement is the lower
of its two ratios to its chunk's reference, or the median of three where the two disagree
(:func:`agreed_ratios`): one policy alone reads 16–34 % slow in one timing beside a steady reference. That truth
mixes two estimators, and "the lower of two" is biased low by about half the two readings' spread (their noise band
was 2.9–3.2 % at p50 in session 20's floor runs, so ~1.5 %); the median of three is not. It is kept as it is: runs are
being judged with it (review R20 L3). Each row keeps its first pass's reading beside it (``measured_first_pass_ms``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from deepslim.errors import ConfigError
from deepslim.search._ort_timing import ExportedOnce

if TYPE_CHECKING:
    from deepslim.search.latency import LatencyTable

CHUNK_TOLERANCE = 0.08  # how far above the chunks' lower median a chunk's reference may read before it is re-timed
AGREE_TOLERANCE = 0.06  # how far apart a policy's ratio readings may be before its chunk is timed once more


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's rank correlation (tau-a: ties count as neither concordant nor discordant)."""
    n = len(a)
    if n < 2 or len(b) != n:
        return float("nan")
    score = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            score += float(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return score / (n * (n - 1) / 2)


@dataclass(frozen=True)
class TableCheck:
    """Predicted vs measured end-to-end latency over some policies: relative error (p50, p90, share within ±10%)
    and Kendall's tau of the table and of the MAC count against the measurements."""

    # {"predicted_ms", "measured_ms", "macs", optional "node_/layer_predicted_ms"; with passes=2 also
    # "measured_first_pass_ms" (the first pass's reading, what passes=1 reports) and "ratio_readings"}
    rows: tuple[dict[str, Any], ...]

    @property
    def errors(self) -> list[float]:
        return [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        meas = [r["measured_ms"] for r in self.rows]
        macs = [float(r["macs"]) for r in self.rows]
        layers = _accuracy([r["predicted_ms"] for r in self.rows], meas)
        mac_tau = kendall_tau(macs, meas) if len(meas) >= 2 else None
        doc: dict[str, Any] = {"points": len(self.rows), **layers, "mac_proxy_kendall_tau": mac_tau}
        for name in ("layer", "node"):  # each table's own accuracy, where it predicted every row
            if self.rows and all(f"{name}_predicted_ms" in r for r in self.rows):
                doc[f"{name}_table"] = _accuracy([r[f"{name}_predicted_ms"] for r in self.rows], meas)
        return {**doc, "rows": list(self.rows)}


def _accuracy(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float | None]:
    """Relative error (p50, p90, share within ±10%) and Kendall's tau of predictions against measurements."""
    errs = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    if not errs:
        return {"error_p50": None, "error_p90": None, "within_10pct": None, "kendall_tau": None}
    return {"error_p50": float(np.percentile(errs, 50)), "error_p90": float(np.percentile(errs, 90)),
            "within_10pct": float(np.mean([e <= 0.10 for e in errs])),
            "kendall_tau": kendall_tau(pred, meas) if len(errs) >= 2 else None}  # fmt: skip


def steady_chunks(chunks: list[list[float]], retime: Callable[[int], list[float]], *,
                  tolerance: float = CHUNK_TOLERANCE, retries: int = 2, tries: list[int] | None = None,
                  eligible: Sequence[int] | None = None) -> list[int]:  # fmt: skip
    """Re-time the chunks whose reference reads slow, in place: ``chunks[i]`` holds chunk ``i``'s times, the
    reference model's (the same model in every chunk) first. While a chunk's reference reads more than
    ``tolerance`` above the lower median of the chunks' references (of an even count, the lower middle one: with
    two chunks the faster, with four of which two read slow the faster pair's slower — the plain median, their
    mean, let a chunk read 17 % slow beside one other go unchecked: review R15 L5; more than half the chunks slow
    still set the frame), the slowest such chunk is timed again
    (``retime(i)``), ``retries`` times at most each, and keeps the timing whose reference read fastest. ``tries``
    (each chunk's timings so far, updated) and ``eligible`` (the chunks that may be re-timed; all by default) let a
    caller judge the chunks as they come. Returns ``tries``. Why: on the shared 2-core machine a chunk timed in a
    slow stretch read its dense reference 15–55 % slow and moved its five policies' ratios together (session 14,
    run 2: 7 of the table's 8 misses in two chunks whose dense read 15–17 % slow)."""
    tries = tries if tries is not None else [1] * len(chunks)
    tries += [1] * (len(chunks) - len(tries))
    allowed = set(range(len(chunks)) if eligible is None else eligible)
    while True:
        refs = [c[0] for c in chunks if c and c[0] == c[0]]
        if not refs:
            return tries
        ref = float(np.percentile(refs, 50, method="lower"))
        slow = [i for i in allowed if chunks[i] and chunks[i][0] > (1 + tolerance) * ref and tries[i] <= retries]
        if not slow:
            return tries
        i = max(slow, key=lambda j: chunks[j][0])
        again = retime(i)
        tries[i] += 1
        if again and again[0] < chunks[i][0]:
            chunks[i] = list(again)


def chunk_ratios(timing: Sequence[float]) -> list[float]:
    """Each policy's time over its chunk's reference (the timing's first)."""
    return [t / timing[0] for t in timing[1:]]


def reading_spread(ratios: Sequence[float]) -> float:
    """How far apart one policy's ratio readings are: the largest over the least, less 1."""
    return max(ratios) / min(ratios) - 1.0


def agreed_ratios(readings: list[list[list[float]]], retime: Callable[[int], list[float]], *,
                  band: float = AGREE_TOLERANCE, extra: int = 1) -> list[list[float]]:  # fmt: skip
    """Each policy's ratio to its chunk's reference from repeated timings of the chunk. ``readings[i]`` holds chunk
    ``i``'s timings so far (each the reference first, then its policies), updated in place: a chunk where some
    policy's ratios spread more than ``band`` (:func:`reading_spread`) is timed again (``retime(i)``, the last
    chunk first), ``extra`` times at most. A policy's ratio is the lower median of its readings: the lower of two,
    the median of three — so where the two agree the ratio is biased low by about half their spread (at most
    ``band / 2``), where they disagree it is not (review R20 L3: documented, not changed). Why: timed once, a
    policy read 16–34 % above its median over 13 runs while its chunk's reference read steady (sessions 17–18, 7 of
    11 misses of two runs); a slow reading only ever reads slow."""
    for i in reversed(range(len(readings))):
        for _ in range(extra):
            ratios = list(zip(*(chunk_ratios(t) for t in readings[i]), strict=True))
            if not ratios or max(reading_spread(r) for r in ratios) <= band:
                break
            readings[i].append(list(retime(i)))
    return [[float(np.percentile(r, 50, method="lower")) for r in zip(*(chunk_ratios(t) for t in chunk),
                                                                      strict=True)] for chunk in readings]  # fmt: skip


def check_table(model: nn.Module, space: Any, table: LatencyTable, *, example_input: Any, calib_data: Any,
                policies: int = 50, seed: int = 0, nodes: Any = None, spread: bool = False, chunk: int = 5,
                retries: int = 2, passes: int = 1) -> TableCheck:  # fmt: skip
    """Measure ``policies`` random policies of ``space`` end to end (interleaved) beside the table's predictions
    (and, with ``nodes``, a :class:`~deepslim.search.node_table.NodeTable`, beside the node-level ones).
    ``spread``: policies drawn at levels evenly spread from the fewest channels to all
    (:meth:`~deepslim.search.space.SearchSpace.sample_at`), so they span the space's latencies.

    Timed ``chunk`` policies at a time beside ``model`` (the reference); a chunk whose reference reads slow is
    timed again (:func:`steady_chunks`, ``retries``), and a policy's measured time is its ratio to its chunk's
    reference times the median reference. ``passes=2``: every chunk timed a second time, the chunks and their
    policies in reverse order, a second-pass reference that reads slow against both passes' references re-timed
    (as the floor check's ``_search_floor15.second_pass`` does), each policy's ratio the lower of its two (biased
    low by about half their spread) or, where they disagree, the median of three (:func:`agreed_ratios`), framed
    by the median reference of both passes; the row's ``measured_first_pass_ms`` keeps its first pass's reading
    (what ``passes=1`` reports). Cost: ``model`` timed once more per chunk (exported once, its file copied into
    each chunk's timing), a slow chunk exported and timed again, and with ``passes=2`` every chunk at least twice.
    ``chunk=0``: all in one timing, no reference (the check before session 15)."""
    import random

    from deepslim.analysis import profile
    from deepslim.search.space import prune_policy, quantize_policy

    if not table.end_to_end:
        raise ConfigError("this latency table has no end-to-end timer to check it against")
    if passes not in (1, 2):
        raise ConfigError(f"passes={passes}: the check times each chunk once (1) or twice (2)")
    rng = random.Random(seed)
    rows, pairs = [], []
    for i in range(policies):
        policy = space.sample_at(rng, i / max(policies - 1, 1)) if spread else space.sample(rng)
        net = prune_policy(model, space, policy, example_input=example_input, calib_data=calib_data)
        predicted = table.predict(net, example_input, policy.int8)
        macs = profile(net, example_input).macs
        pairs.append((quantize_policy(net, space, policy, calib_data=calib_data), example_input))
        rows.append({"policy": policy.to_dict(), "predicted_ms": predicted, "macs": macs})
    if chunk <= 0:
        measured = table.measure(pairs) or []
        _node_sums(rows, pairs, nodes, example_input)
    else:
        measured = _chunked(rows, pairs, table, (model, example_input), chunk, retries, nodes, passes)
    return TableCheck(tuple({**r, "measured_ms": m} for r, m in zip(rows, measured, strict=True) if m == m))


def _node_sums(rows: list[dict[str, Any]], pairs: Sequence[tuple[nn.Module, Any]], nodes: Any, x: Any) -> None:
    """The node table's predictions into ``rows``, after the measurement of ``pairs`` (the node sums read the files
    it exported)."""
    if nodes is None:
        return
    for row, (quantized, _) in zip(rows, pairs, strict=True):
        raw = nodes.raw_model(quantized, x)  # with a weight term, the model's weight bytes too
        weighted = getattr(nodes, "weight_coef", 0.0)
        row["node_predicted_ms"] = nodes.predict_model(raw, quantized) if weighted else nodes.predict(raw)


def _chunked(rows: list[dict[str, Any]], pairs: list[tuple[nn.Module, Any]], table: LatencyTable,
             reference: tuple[nn.Module, Any], chunk: int, retries: int, nodes: Any,
             passes: int = 1) -> list[float]:  # fmt: skip
    """:func:`check_table`'s measurement in chunks beside ``reference`` (see there): each row's measured ms, its
    chunk, the chunk's reference ms, timings and (``passes=2``) ratio readings recorded in ``rows``."""
    starts = list(range(0, len(pairs), chunk))

    def timed(i: int, backwards: bool = False) -> list[float]:
        own = pairs[starts[i]:starts[i] + chunk]
        got = list(table.measure([reference, *(own[::-1] if backwards else own)]) or [])
        return got[:1] + got[:0:-1] if backwards and got else got

    chunks: list[list[float]] = []
    ratios: list[list[float]] = []
    before = table.once
    with ExportedOnce(*reference) as once:  # the reference exported once for every chunk's timing
        table.once = once
        try:
            for i, start in enumerate(starts):
                chunks.append(timed(i))
                _node_sums(rows[start:start + chunk], pairs[start:start + chunk], nodes, reference[1])
            tries = steady_chunks(chunks, timed, retries=retries)
            readings = [[c] for c in chunks]
            if passes == 2:  # a second-pass reference judged against both passes' (review R20 L2)
                n = len(starts)
                both = [list(c) for c in chunks] + [[] for _ in starts]
                for i in reversed(range(n)):
                    both[n + i] = timed(i, backwards=True)
                more = steady_chunks(both, lambda i: timed(i - n), retries=retries, eligible=range(n, 2 * n))[n:]
                readings = [[both[i], both[n + i]] for i in range(n)]
                ratios = agreed_ratios(readings, timed)
                tries = [t + m + len(r) - 2 for t, m, r in zip(tries, more, readings, strict=True)]
        finally:
            table.once = before
    refs = [c[0] for r in readings for c in r[:2] if c[0] == c[0]]
    ref = float(np.median(refs)) if refs else float("nan")
    first_refs = [c[0] for c in chunks if c[0] == c[0]]  # the first pass's frame: passes=1's
    first_ref = float(np.median(first_refs)) if first_refs else float("nan")
    measured = []
    for i, start in enumerate(starts):
        own = chunks[i][0]
        for k, (row, t) in enumerate(zip(rows[start:start + chunk], chunks[i][1:], strict=True)):
            row.update(chunk=i, chunk_reference_ms=own, chunk_timings=tries[i])
            single = t / own * first_ref if own == own and own > 0 else t
            if passes == 2:
                row["ratio_readings"] = [r[k] for r in (chunk_ratios(c) for c in readings[i])]
                row["measured_first_pass_ms"] = single
                measured.append(ratios[i][k] * ref)
            else:
                measured.append(single)
    return measured
