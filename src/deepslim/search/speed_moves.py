"""Measured moves at equal MACs: a latency-aware policy steered by end-to-end timings, not by a table.

Why: at equal MACs a policy is faster only where the runtime spends less per MAC, and where that is cannot be
predicted from layer or node tables here: on ResNet-18 at 224² the per-layer table's greedy chose a policy 4 %
faster on paper that measured ~2× slower (BENCHMARKS.md, session 5), and the node table, which ranked right, needed
a whole export per candidate and never finished (session 6). NetAdapt (Yang et al., ECCV 2018) steers by measured
latency instead; here a policy is timed end to end, interleaved with the current one in the same run, so only
same-run ratios count (the machine is shared).

One round, from the current policy ``P`` (MACs at most ``limit``, by default the start's MACs):

1. **Probe**: each channel group one step down and one step up its grid (several steps for a group whose single
   step moves fewer than ``probe_share`` of the MACs, so that the change stands out of the noise), all timed beside
   ``P``: per group, the share of ``P``'s latency one MAC saves going down and costs going up.
2. **Exchange**: per group, its probe step down, then the MACs freed spent one grid step at a time on the other
   groups where a MAC costs least (by the probes; a group no further than its probe went), never above ``limit``,
   until nothing fits; kept when the MACs end
   within ``band`` below ``limit`` and the probes predict a gain. The ``candidates`` best predicted are timed beside
   ``P``, and the fastest is taken when it measures at least ``min_gain`` faster — with ``confirm``, again in a run
   of the two alone (the fastest of several noisy timings is biased low) — else the moves stop, or with
   ``patience`` the next round times the next-best candidates not yet timed from ``P`` (up to ``patience`` rounds
   in a row without a move); a profiled round then also leaves out of its costliest groups those that every
   failed candidate moved down (the profile's average cost per MAC overstates a group whose layers have a fixed
   cost: ResNet-18's layer-1 interiors ranked costliest and measured no faster going down, round after round).

With a ``profile`` (each group's measured time per MAC at a policy: the runtime's per-node times over the MACs of
the layers the group sets, :func:`deepslim.search.int8_slices.group_time_per_mac`), a round steers by it instead of
by probes — the profile is what found the stem's cost on ResNet-18 (33 % of the time for 12 % of the MACs) and
needs one profiled run, not two timed files per group:

1. **Profile** ``P``: per group, ms per MAC.
2. **Exchange**: for each size in ``shares`` (a share of ``limit``'s MACs to free) and each set of the ``multi``
   costliest groups (the costliest alone, the two costliest, …, and each of them alone), those groups step down in
   turn, one grid step at a time, until the size is freed; the MACs are refilled where a MAC costs least, each group
   at most ``reach`` grid steps above ``P``. Several groups down at once is what a gain spread over groups needs
   (ResNet-18's layer 4 is three groups, each alone within the timing noise). Candidates are ranked by the
   profile's predicted change and timed, taken or not as above.

Session 16: with ``window``, a profiled round also moves down together every run of 2 to ``multi`` groups next to
each other in the cost ranking among the ``window`` costliest — one stage's groups (ResNet-18's layer 4) ranked
below a group whose average cost per MAC overstates it (layer 1's interiors) were never moved down together before;
``confirms``: a passing candidate is confirmed by the median of that many fresh timings beside ``P`` alone (one
confirmation let gains of 1–3 % through or out by chance); ``polish``: after the rounds (and the precision pass),
the start and the policy after each move are timed together that many times in fresh runs and the fastest by its
median ratio to the start kept (the start when none gains ``min_gain``): the moves after it are undone. The
defaults are the settings of session 16's runs: nine with them set by hand (1.104–1.137× uniform at equal MACs on
ResNet-18; five of the nine with the precision pass off), six with the defaults themselves (1.125–1.160×, three of
them after the float probe's graph was made the toolkit's; BENCHMARKS.md).

Rounds continue while a move passes. Then, with ``precision``, each int8 layer of the policy is timed in float
(beside ``P``, MACs unchanged) and the fastest kept when it gains ``min_gain`` — whether a layer pays for its
conversions at its position is measured, not assumed. The timer, the MAC counter and the profiler are plain
callables: the benchmark times and profiles ONNX files cut from the dense model's
(:mod:`deepslim.search.int8_slices`); tests give scripted ones.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from deepslim.config import Config
from deepslim.errors import ConfigError
from deepslim.search.space import Policy, SearchSpace

log = logging.getLogger(__name__)

PolicyTimer = Callable[[Sequence[Policy]], list[float]]  # ms of each policy, timed interleaved in one run
MacCounter = Callable[[Policy], int]
GroupProfiler = Callable[[Policy], Mapping[str, float]]  # each group's measured ms per MAC at the policy


@dataclass(frozen=True, kw_only=True)
class SpeedMovesConfig(Config):
    """How far and how carefully :func:`speed_moves` moves (see the module docstring)."""

    rounds: int = 8
    band: float = 0.01
    probe_share: float = 0.02
    candidates: int = 8
    min_gain: float = 0.01
    precision: bool = True
    confirm: bool = True
    patience: int = 2
    multi: int = 4
    shares: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    reach: int = 4
    window: int = 8
    confirms: int = 3
    polish: int = 3

    def __post_init__(self) -> None:
        shares = self.shares if isinstance(self.shares, (list, tuple)) else ()
        if not shares or not all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < 1 for v in shares):
            raise ConfigError(f"shares is a non-empty list of shares in (0, 1), got {self.shares!r}")
        object.__setattr__(self, "shares", tuple(float(v) for v in self.shares))
        for name, least in (("rounds", 0), ("candidates", 1), ("patience", 0), ("multi", 1), ("reach", 1),
                            ("window", 0), ("confirms", 1), ("polish", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be a whole number >= {least}, got {value!r}")
        for name in ("band", "probe_share", "min_gain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} is a share in [0, 1), got {value!r}")
        for name in ("precision", "confirm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} is True or False, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SpeedMoves:
    """The policy the moves reached, its MACs and the limit, each round's log, how many policies were timed and
    how many were profiled."""

    policy: Policy
    macs: int
    limit: int
    log: tuple[dict[str, Any], ...]
    timed: int
    profiled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "macs": self.macs, "limit": self.limit, "log": list(self.log),
                "timed": self.timed, "profiled": self.profiled}  # fmt: skip


class _Walk:
    """The grid arithmetic and the bookkeeping of one :func:`speed_moves` call."""

    def __init__(self, space: SearchSpace, macs: MacCounter, time: PolicyTimer, limit: int) -> None:
        self.options = {g.name: list(g.keep) for g in space.groups}
        self.macs, self.timer, self.limit = macs, time, limit
        self.timed = self.profiled = 0
        self.tried: set[tuple[Any, ...]] = set()  # candidates timed from the current policy
        self.blocked: set[str] = set()  # groups every failed candidate from the current policy moved down

    def step(self, p: Policy, group: str, steps: int) -> Policy | None:
        """``p`` with ``group`` moved ``steps`` grid steps (None off the grid)."""
        grid = self.options[group]
        i = grid.index(p.keep[group]) + steps
        return replace(p, keep={**p.keep, group: grid[i]}) if 0 <= i < len(grid) else None

    def probe(self, p: Policy, group: str, sign: int, share: float) -> Policy | None:
        """The fewest steps of ``group`` in direction ``sign`` that move at least ``share`` of the limit's MACs
        (as many as the grid allows), None where it allows none."""
        base, found = self.macs(p), None
        for n in range(1, len(self.options[group])):
            q = self.step(p, group, sign * n)
            if q is None:
                break
            found = q
            if abs(self.macs(q) - base) >= share * self.limit:
                break
        return found

    def ratios(self, p: Policy, others: Sequence[Policy]) -> list[float]:
        """Each of ``others``' time over ``p``'s, all timed in one interleaved run."""
        times = self.timer([p, *others])
        if len(times) != len(others) + 1 or not all(t > 0 for t in times):
            raise ConfigError(f"the policy timer must give one positive time per policy, got {times!r}")
        self.timed += len(times)
        return [t / times[0] for t in times[1:]]


def speed_moves(space: SearchSpace, start: Policy, *, macs: MacCounter, time: PolicyTimer,
                config: SpeedMovesConfig | None = None, limit: int | None = None,
                profile: GroupProfiler | None = None) -> SpeedMoves:  # fmt: skip
    """From ``start``, the measured moves of the module docstring (steered by ``profile`` when given, else by
    probes); the result never has more MACs than ``limit`` (default: the start's) and, after a channel move, no
    fewer than ``(1 - band)`` of it."""
    config = config or SpeedMovesConfig()
    missing = [g.name for g in space.groups if g.name not in start.keep]
    off = [g.name for g in space.groups if g.name in start.keep and start.keep[g.name] not in g.keep]
    if missing or off:
        raise ConfigError(f"the start policy {'does not choose' if missing else 'is off the grid of'} group "
                          f"{(missing or off)[0]!r}")  # fmt: skip
    limit = macs(start) if limit is None else limit
    if macs(start) > limit:
        raise ConfigError(f"the start policy has {macs(start):,} MACs, more than the limit of {limit:,}")
    walk = _Walk(space, macs, time, limit)
    policy, entries = start, [{"move": "start", "macs": limit}]
    path, misses = [start], 0
    for r in range(config.rounds):
        if profile is None:
            moved = _exchange_round(walk, policy, config)
        else:
            moved = _profile_round(walk, policy, config, profile)
        entries.append({"round": r + 1, **moved[1]})
        log.info("speed moves round %d: %s", r + 1, entries[-1])
        if moved[0] is None:
            misses += 1
            if misses > config.patience or "tried" not in moved[1]:
                break
            continue
        policy, misses = moved[0], 0
        path.append(policy)
        walk.tried.clear()
        walk.blocked.clear()
    if config.precision:
        policy, floats = _precision(walk, policy, config, path)
        entries.extend(floats)
    if config.polish and len(path) > 1:
        policy, polished = _polish(walk, path, config)
        entries.append(polished)
    return SpeedMoves(policy, macs(policy), limit, tuple(entries), walk.timed, walk.profiled)


def _exchange_round(walk: _Walk, p: Policy, config: SpeedMovesConfig) -> tuple[Policy | None, dict[str, Any]]:
    """One probe + exchange round: the policy taken (None: no move) and what was measured."""
    base = walk.macs(p)
    probes = {(g, s): q for g in walk.options for s in (-1, 1)
              if (q := walk.probe(p, g, s, config.probe_share)) is not None}  # fmt: skip
    ratios = dict(zip(probes, walk.ratios(p, list(probes.values())), strict=True))
    slope = {k: (ratios[k] - 1.0) / (walk.macs(q) - base) for k, q in probes.items() if walk.macs(q) != base}
    # ratio change per MAC added, measured going down (save) and up (cost): positive where MACs cost time
    save = {g: slope[(g, -1)] for g in walk.options if (g, -1) in slope}
    cost = {g: slope[(g, 1)] for g in walk.options if (g, 1) in slope}
    cands = []
    for down in save:
        found = _fill(walk, probes[(down, -1)], {down}, cost, {g: probes[(g, 1)].keep[g] for g in cost})
        if found is None or walk.macs(found) < (1 - config.band) * walk.limit:
            continue
        predicted = sum(_slope_of(found, p, g, save, cost, walk) for g in walk.options)
        if predicted < 0 and found != p:
            cands.append((predicted, down, found))
    cands.sort(key=lambda c: (c[0], c[1]))
    doc: dict[str, Any] = {"probes": {f"{g}{'+' if s > 0 else '-'}": round(ratios[(g, s)], 4) for g, s in probes},
                           "candidates": len(cands)}  # fmt: skip
    return _try(walk, p, cands, config, doc)


def _profile_round(walk: _Walk, p: Policy, config: SpeedMovesConfig,
                   profile: GroupProfiler) -> tuple[Policy | None, dict[str, Any]]:  # fmt: skip
    """One profile + exchange round (the module docstring): the policy taken (None: no move) and what was measured."""
    slope = dict(profile(p))
    walk.profiled += 1
    bad = [g for g in walk.options if not isinstance(slope.get(g), (int, float)) or slope[g] < 0]
    if bad:
        raise ConfigError(f"the group profiler must give a time per MAC >= 0 for every group, got "
                          f"{slope.get(bad[0])!r} for {bad[0]!r}")  # fmt: skip
    movable = [g for g in walk.options if g not in walk.blocked and walk.step(p, g, -1) is not None]
    downs = _down_sets(sorted(movable, key=lambda g: (-slope[g], g)), config)
    ceiling = {g: grid[min(len(grid) - 1, grid.index(p.keep[g]) + config.reach)] for g, grid in walk.options.items()}
    found: dict[tuple[int, ...], tuple[float, str, Policy]] = {}
    for share in config.shares:
        for down in downs:
            q = _fill(walk, _shrink(walk, p, down, share * walk.limit), set(down), slope, ceiling)
            if q is None or q == p or walk.macs(q) < (1 - config.band) * walk.limit:
                continue
            predicted = sum(_slope_of(q, p, g, slope, slope, walk) for g in walk.options)
            if predicted < 0:
                found.setdefault(tuple(q.keep.values()), (predicted, "+".join(down), q))
    cands = sorted(found.values(), key=lambda c: (c[0], c[1]))
    doc = {"profile_us_per_mmac": {g: round(v * 1e9, 3) for g, v in slope.items()}, "candidates": len(cands)}
    return _try(walk, p, cands, config, doc)


def _down_sets(ranked: Sequence[str], config: SpeedMovesConfig) -> list[tuple[str, ...]]:
    """The sets of groups a profiled round moves down together, from the movable groups ranked costliest first: the
    ``multi`` costliest alone, the two costliest, …; with ``window``, also every run of 2 to ``multi`` groups next to
    each other in the ranking among the ``window`` costliest (groups of a like cost per MAC, e.g. one stage's three
    groups, down together even where a costlier group ranks above them)."""
    top = list(ranked[: config.multi])
    sets = {tuple(top[:k]) for k in range(1, len(top) + 1)} | {(g,) for g in top}
    runs = list(ranked[: config.window])
    sets |= {tuple(runs[i : i + k]) for k in range(2, config.multi + 1) for i in range(len(runs) - k + 1)}
    return sorted(sets)


def _shrink(walk: _Walk, p: Policy, groups: Sequence[str], macs: float) -> Policy:
    """``p`` with ``groups`` stepped down their grids in turn, one step each, until ``macs`` MACs are freed (or
    every one is at its floor)."""
    base, q = walk.macs(p), p
    while base - walk.macs(q) < macs:
        before = q
        for g in groups:
            q = walk.step(q, g, -1) or q
            if base - walk.macs(q) >= macs:
                return q
        if q == before:
            return q
    return q


def _try(walk: _Walk, p: Policy, chosen: list[tuple[float, str, Policy]], config: SpeedMovesConfig,
         doc: dict[str, Any]) -> tuple[Policy | None, dict[str, Any]]:  # fmt: skip
    """The best ``candidates`` of ``chosen`` (predicted change, groups moved down, policy; ranked) not timed from
    ``p`` before, timed beside ``p``; the fastest taken when it gains ``min_gain`` (confirmed)."""
    chosen = [c for c in chosen if _key(c[2]) not in walk.tried][: config.candidates]
    walk.tried.update(_key(c[2]) for c in chosen)
    if not chosen:
        return None, {**doc, "move": None}
    measured = walk.ratios(p, [c[2] for c in chosen])
    doc["tried"] = [{"down": d, "keep": _diff(p, q), "predicted": round(e, 4), "measured": round(m, 4)}
                    for (e, d, q), m in zip(chosen, measured, strict=True)]  # fmt: skip
    best = min(range(len(chosen)), key=lambda i: measured[i])
    ratio, again = _confirmed(walk, p, chosen[best][2], measured[best], config)
    if again:
        doc["confirm_ratios"] = [round(r, 4) for r in again]
    if ratio > 1 - config.min_gain:
        downs = [{g for g in p.keep if c[2].keep[g] < p.keep[g]} for c in chosen]
        walk.blocked |= set.intersection(*downs)
        return None, {**doc, "move": None, "confirmed": round(ratio, 4)}
    q = chosen[best][2]
    log.info("speed move %s: %.4f of the current policy's latency", _diff(p, q), ratio)
    return q, {**doc, "move": _diff(p, q), "ratio": round(ratio, 4), "macs": walk.macs(q)}


def _confirmed(walk: _Walk, p: Policy, q: Policy, measured: float,
               config: SpeedMovesConfig) -> tuple[float, list[float]]:  # fmt: skip
    """``q``'s ratio to ``p`` and the confirming ratios: when it passed and ``confirm`` asks for it, the median of
    ``confirms`` fresh timings of the two alone (the first timing, the fastest of several, is left out: it is biased
    low)."""
    if measured > 1 - config.min_gain or not config.confirm:
        return measured, []
    again = [walk.ratios(p, [q])[0] for _ in range(config.confirms)]
    return statistics.median(again), again


def _polish(walk: _Walk, path: Sequence[Policy], config: SpeedMovesConfig) -> tuple[Policy, dict[str, Any]]:
    """The start and the policy after each move (``path``) timed together ``polish`` times in fresh runs: the one
    with the least median ratio to the start, when it gains ``min_gain`` (else the start) — a move confirmed in its
    own round but not in a fresh run of the whole path is undone with the moves after it."""
    runs = [walk.ratios(path[0], list(path[1:])) for _ in range(config.polish)]
    medians = [statistics.median(r[i] for r in runs) for i in range(len(path) - 1)]
    best = min(range(len(medians)), key=lambda i: (medians[i], -i))
    kept = best + 1 if medians[best] <= 1 - config.min_gain else 0
    entry = {"polish": [[round(r[i], 4) for r in runs] for i in range(len(medians))],
             "medians": [round(m, 4) for m in medians], "kept_moves": kept, "of": len(path) - 1}  # fmt: skip
    log.info("speed moves polish: medians %s, %d of %d moves kept", entry["medians"], kept, len(path) - 1)
    return path[kept], entry


def _slope_of(q: Policy, p: Policy, group: str, save: Mapping[str, float], cost: Mapping[str, float],
             walk: _Walk) -> float:  # fmt: skip
    """The predicted change of ``group``'s move from ``p`` to ``q``: its MAC change × its slope (the probes': a
    ratio change; the profile's: ms)."""
    if q.keep[group] == p.keep[group]:
        return 0.0
    moved = replace(p, keep={**p.keep, group: q.keep[group]})
    delta = walk.macs(moved) - walk.macs(p)
    return delta * (cost[group] if delta > 0 else save[group])


def _fill(walk: _Walk, p: Policy, fixed: Collection[str], cost: Mapping[str, float],
          ceiling: Mapping[str, int]) -> Policy | None:  # fmt: skip
    """``p`` grown one grid step at a time on the group (not in ``fixed``) whose measured cost per MAC is least, each
    group no further than its up probe went (``ceiling``: the probes' slopes are not extrapolated), never above the
    limit; None when ``p`` is above it already."""
    if walk.macs(p) > walk.limit:
        return None
    while True:
        steps = [(c, g, q) for g, c in cost.items() if g not in fixed and p.keep[g] < ceiling[g]
                 and (q := walk.step(p, g, 1)) is not None and walk.macs(q) <= walk.limit]  # fmt: skip
        if not steps:
            return p
        p = min(steps, key=lambda s: (s[0], s[1]))[2]


def _precision(walk: _Walk, p: Policy, config: SpeedMovesConfig,
               path: list[Policy]) -> tuple[Policy, list[dict[str, Any]]]:  # fmt: skip
    """Each int8 layer of ``p`` timed in float beside ``p``; the fastest kept while one gains ``min_gain`` (each
    policy kept appended to ``path``)."""
    entries: list[dict[str, Any]] = []
    while True:
        layers = [n for n, q in p.int8.items() if q]
        if not layers:
            return p, entries
        trials = [replace(p, int8={**p.int8, n: False}) for n in layers]
        measured = walk.ratios(p, trials)
        best = min(range(len(layers)), key=lambda i: measured[i])
        ratio, again = _confirmed(walk, p, trials[best], measured[best], config)
        gained = ratio <= 1 - config.min_gain
        entries.append({"precision": {n: round(m, 4) for n, m in zip(layers, measured, strict=True)},
                        "move": f"{layers[best]} float" if gained else None,
                        **({"confirm_ratios": [round(r, 4) for r in again]} if again else {})})  # fmt: skip
        if not gained:
            return p, entries
        p = trials[best]
        path.append(p)


def _key(p: Policy) -> tuple[Any, ...]:
    return tuple(sorted(p.keep.items())), tuple(sorted(p.int8.items()))


def _diff(p: Policy, q: Policy) -> dict[str, list[int]]:
    """The groups whose channel counts differ: {group: [before, after]}."""
    return {g: [p.keep[g], q.keep[g]] for g in p.keep if p.keep[g] != q.keep[g]}
