"""How a batch of new node entries is judged from its timings (:meth:`deepslim.search.node_table.NodeTable._timed`):
whether a node's timings agree, whether the batch ran in a slow process, which timing its entries come from and
which trivial graph is taken off them. A timing is ``({batch index: gross ms}, that process's trivial-graph ms)``:
one timer process's one-node graphs, each with the per-run overhead that the process's trivial graph measures (the
real timer's times are gross; a custom timer's are net, its trivial graph recorded as 0).

Why rules at all: on the shared 2-core machine a timer process's overhead is ~3.2 µs or ~5.2 µs, and a slow stretch
can slow a process's nodes, or its trivial graph, alone. The entries are differences within one process (:func:`_net`);
:func:`_slow_batch` catches a batch whose chosen process read its trivial graph high (and slow nodes with it), and
:func:`_low_trivial` one whose chosen process read its trivial graph low while its nodes ran as slow as the others'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SLOW_BATCH_MS = 0.5e-3  # a batch whose chosen timing's trivial graph reads this far above the table's median so far
SLOW_BATCH_EARLIER = 4  # that median over the earlier batches' trivial graphs once there are this many (_slow_batch)
LOW_TRIVIAL_MS = 1.0e-3  # a chosen trivial graph this far below the other timings' carried into its process (_net)
LOW_TRIVIAL_OTHERS = 2  # is judged against at least this many other timings of the whole batch (_low_trivial)
Runs = Sequence[tuple[dict[int, float], float]]


def _chosen(runs: Runs, size: int) -> tuple[list[tuple[dict[int, float], float]], dict[int, float], float]:
    """The batch's timings of every node (``size`` of them) and, among them, the chosen one — the least summed gross
    time (why: :func:`_net`) — as its times and its process's trivial graph."""
    whole = [(r, o) for r, o in runs if len(r) == size]
    base, own = min(whole, key=lambda run: sum(run[0].values()))
    return whole, base, own


def _agree(times: Sequence[float], tolerance: float) -> bool:
    """Whether a node's two fastest timings agree: within ``tolerance`` of the faster, or within 2 µs (a node of a
    few µs, where the trivial graph's subtraction moves an entry by a fraction of a µs; a smoke run at load 4–6
    re-timed 12 of 18 batches with 10 % and 1 µs per node)."""
    if len(times) < 2:
        return False
    a, b = sorted(times)[:2]
    return b - a <= max(tolerance * a, 2e-3)


def _slow_batch(runs: Runs, size: int, overheads: Sequence[float], own: int) -> bool:
    """Whether a batch's chosen timing (of the whole batch, the least gross sum: :func:`_net`) ran in a process
    whose trivial graph read more than :data:`SLOW_BATCH_MS` above the median of the trivial graphs the table timed
    before this batch, once there are :data:`SLOW_BATCH_EARLIER` of them, else of all it has timed so far, the
    batch's own included (``overheads``: every one so far, the last ``own`` this batch's; none recorded: a custom
    timer's, never slow). Why not the batch's own: with 2–4 overheads in all, their median follows the batch itself,
    so a slow early batch was never timed again (review R20 L6). Why: over
    sessions 17–18's 13 runs, 26 of 780 batches read so, and 8 of them held an entry more than 5 µs above its
    median over the runs (1.5–1.7× on a depthwise convolution), against 1 of the other 754 batches; the twins and
    their retries 1 s apart read the same stretch (session 18 run 5's batch 59: 5.6–5.8 µs in all four timings,
    the table's median 3.3 µs)."""
    if not overheads:
        return False
    earlier = overheads[: len(overheads) - own]
    frame = earlier if len(earlier) >= SLOW_BATCH_EARLIER else overheads
    _, _, chosen = _chosen(runs, size)
    return chosen - float(np.median(frame)) > SLOW_BATCH_MS


def _net(runs: Runs, size: int, new: int, *, low: bool = True) -> list[float]:
    """A batch's net times from its timings (each ``({batch index: gross ms}, that process's trivial-graph ms)``):
    every node from the one timing of the whole batch whose summed gross time is least, less that process's own
    trivial graph; a new node (of the first ``new``) timed again without the rest of the batch (far from its twin)
    from the timing where its gross time is least, less that timing's own. Why one process: the trivial graph's time
    differs between processes, and the nodes' gross times with it — a per-process overhead every one-node run of the
    process pays (session 17's first two fresh runs: over ~150 timings of a batch each, a timing's trivial-graph gap
    to its batch's median and its nodes' median shift correlated 0.92 / 0.93, slope 1.4 / 1.1), so an entry is a
    difference within one process. Session 16 took each node's least gross time over the processes less the least
    trivial graph of any process so far, which left the gap between overheads in every entry (up to 0.7–1.3 µs a
    node). Why chosen by the gross sum: a trivial graph sometimes reads slow alone (in ~1–5 timings a run above
    its own fastest node's gross time by 20 %), and the least net sum then picks that process — session 17's third
    run summed the dense model at 48 µs against 111–119 µs so (session 15's first run took each node's least
    difference, the same pick node by node: dense at 48 µs against 126). The gross sum does not see the trivial
    graph's reading; a slow one in the process it picks still lowers that batch's entries. Where the chosen timing's
    trivial graph reads low against the batch's other timings (:func:`_low_trivial`), theirs, carried into its
    process, is taken off instead, from every node taken from that timing (``low=False``: its own, the estimator of
    sessions 17–20, which ``benchmarks/_search_table21.py`` replays beside it)."""
    _, base, own = _chosen(runs, size)
    carried = _low_trivial(runs, size) if low else None
    if carried is not None:
        own = carried
        runs = [(r, carried if r is base else o) for r, o in runs]
    alone = {i for r, _ in runs if len(r) < size for i in r if i < new}
    net = []
    for i in range(size):
        if i in alone:
            gross, off = min(((r[i], o) for r, o in runs if i in r), key=lambda pair: pair[0])
            net.append(gross - off)
        else:
            net.append(base[i] - own)
    return [max(0.0, t) for t in net]


def _low_trivial(runs: Runs, size: int) -> float | None:
    """The trivial graph to take off the batch's chosen timing (the least gross sum, :func:`_net`) where its own reads
    more than :data:`LOW_TRIVIAL_MS` below the others': each other timing of the whole batch has its trivial graph
    carried into the chosen one's process by the gap between their gross sums per node, and the median of those is
    returned; None where the chosen's own is not that low or fewer than :data:`LOW_TRIVIAL_OTHERS` others timed the
    whole batch (with one, a low trivial graph in the chosen and a high one alone in the other look alike: session
    17's third run, where one read 20 % above its own fastest node). Why: session 20's fourth run took its
    calibration's largest batch (109 new nodes) from a timing whose trivial graph read 3.36 µs while its nodes ran as
    slow as those of the three other timings, whose trivial graphs read 5.11–5.29 µs (gross sums 775 against
    790–811 µs): each entry kept ~1.6 µs too much, one calibration policy summed 427 µs (184 in the first run), and
    the run scored 20 of 50 within ±10 %. Replayed on the 18 logged runs of sessions 17, 18 and 20 (1,080 batches,
    ``benchmarks/_search_table21.py``), this fires on that batch alone (at 1.0 or 1.5 µs; 5 at 0.5 µs, lowering two
    runs) and lifts that run from 20 to 41 of 50 (18 → 41 against session 20's agreed truth), no other run changing.
    A low reading against the table's median so far (the mirror of :func:`_slow_batch`) does not see it: the
    earlier batches' median was 3.28 µs."""
    whole, base, own = _chosen(runs, size)
    others = [(r, o) for r, o in whole if r is not base]
    if len(others) < LOW_TRIVIAL_OTHERS:
        return None
    gross = sum(base.values())
    carried = float(np.median([o + (gross - sum(r.values())) / size for r, o in others]))
    return carried if own < carried - LOW_TRIVIAL_MS else None
