"""Two search strategies as Optuna samplers whose whole state is the study: regularized evolution and a
NetAdapt-style greedy descent.

- ``evolution``: Real et al., "Regularized Evolution for Image Classifier Architecture Search", AAAI 2019. The
  population is the ``population_size`` most recent judged trials (aging: the oldest leaves as a child joins); a
  tournament of ``tournament_size`` of them, drawn at random, picks a parent; the child changes one choice of the
  parent (one group's channel count, one layer's precision or one recovery hyper-parameter) to another option.
- ``greedy``: Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications", ECCV 2018.
  From the dense policy, each step judges every one-step lowering (one group to its next smaller channel count, or
  one float layer to int8) and moves to the one that buys the most of the budget per accuracy lost, until the budget
  is met; then it climbs: the untried neighbours of the best policy within budget, until none is left.

Both respect the budgets that the trials record (their constraint values, ≤ 0 within budget): a parent or a step
within budget beats one over it, and one over it less beats one over it more; an evolution parent over budget only
mutates towards fewer channels or int8. Both read everything from the study's trials each time they propose (no
state in the process), so an interrupted search resumes where the study stands and workers sharing the storage
share the strategy. A proposal is a pure function of the seed and the trials judged so far: the same study and seed
propose the same policy. Policies already tried or under way are not proposed again while untried ones remain.

Optuna is the ``search`` extra: this module imports it, so import it only where a search runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from deepslim.search import _choices
from deepslim.search.space import SearchSpace

Key = tuple[Any, ...]  # a policy: one value per choice, in the space's choice order


@dataclass(frozen=True)
class Judged:
    """A finished trial: its policy, objective values and constraint values (≤ 0: within that budget)."""

    key: Key
    values: tuple[float, ...]
    violations: tuple[float, ...]
    number: int

    @property
    def excess(self) -> float:
        """How far over its budgets (0 within all of them)."""
        return sum(max(0.0, v) for v in self.violations)


@dataclass(frozen=True)
class History:
    """What the study holds for a sampler: judged trials in order, every policy tried or under way, and how many
    trials have finished (judged or refused) — the key of a proposal's random stream."""

    judged: tuple[Judged, ...]
    seen: frozenset[Key]
    finished: int
    directions: tuple[StudyDirection, ...]

    def order(self, j: Judged) -> tuple[float, ...]:
        """Sort key, best first: within budget first (then less over budget), then the first objective, the next."""
        signed = [-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(j.values, self.directions, strict=True)]
        return (j.excess, *(v if v == v else math.inf for v in signed))


class PolicySampler(BaseSampler):
    """The shared part: the space's choices as one relative search space, and the study read as a History."""

    name = "policy"

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self.names = list(space.choices())
        self.options = [list(v) for v in space.choices().values()]
        self._fallback = RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {n: CategoricalDistribution(o) for n, o in zip(self.names, self.options, strict=True)}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:  # fmt: skip
        if not search_space:
            return {}
        history = read_history(study, self.names, exclude=trial.number)
        rng = random.Random(f"{self.name}:{self.seed}:{history.finished}")
        return dict(zip(self.names, self.propose(history, rng), strict=True))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:  # fmt: skip
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def propose(self, history: History, rng: random.Random) -> Key:
        raise NotImplementedError

    def key(self, params: Mapping[str, Any]) -> Key:
        return tuple(params[n] for n in self.names)

    def random_untried(self, history: History, rng: random.Random, attempts: int = 200) -> Key:
        """A uniformly drawn policy not tried yet (after ``attempts`` draws that all were: the last one)."""
        key: Key = ()
        for _ in range(attempts):
            key = tuple(rng.choice(o) for o in self.options)
            if key not in history.seen:
                break
        return key

    def moves(self, key: Key, *, lower: bool = True, higher: bool = True, recovery: bool = True) -> list[Key]:
        """One-step neighbours of ``key``: raises (a group's next larger count, an int8 layer back to float, a dropped
        block back) first, then lowerings (next smaller count, float to int8, a block dropped), then other options."""
        ups, downs, others = [], [], []
        for i, (name, value) in enumerate(zip(self.names, key, strict=True)):
            opts = self.options[i]
            at = opts.index(value)

            def put(v: Any, i: int = i) -> Key:
                return key[:i] + (v,) + key[i + 1 :]

            if name.startswith("keep:"):
                if at + 1 < len(opts):
                    ups.append(put(opts[at + 1]))
                if at > 0:
                    downs.append(put(opts[at - 1]))
            elif name.startswith(("int8:", "drop:")):  # int8 and a dropped block cost less
                (ups if value else downs).append(put(not value))
            else:
                others += [put(v) for v in opts if v != value]
        return (ups if higher else []) + (downs if lower else []) + (others if recovery else [])


def read_history(study: Study, names: Sequence[str], *, exclude: int | None = None) -> History:
    """The study's trials as a sampler sees them. A trial refused by the toolkit (failed with an ``error``) counts
    as tried; one failed because its search was interrupted does not (its policy was never judged; a retry of it,
    queued with its parameters, does count, as does any queued trial whose parameters are fixed)."""
    judged, seen, finished = [], set(), 0
    for t in study.get_trials(deepcopy=False):
        if t.number == exclude:
            continue
        params = {**t.system_attrs.get("fixed_params", {}), **t.params}  # queued: fixed (enqueued) or retried
        if not all(n in params for n in names):
            continue
        key = tuple(params[n] for n in names)
        refused = t.state == TrialState.FAIL and "error" in t.user_attrs
        if t.state == TrialState.COMPLETE and t.values is not None:
            judged.append(Judged(key, tuple(t.values), _violations(t), t.number))
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) or refused:
            seen.add(key)
        finished += t.state == TrialState.COMPLETE or refused
    judged.sort(key=lambda j: j.number)
    return History(tuple(judged), frozenset(seen), finished, tuple(study.directions))


def _violations(t: FrozenTrial) -> tuple[float, ...]:
    """The trial's constraint values: deepslim's own record, else Optuna's (``Trial.set_constraint``)."""
    given: Any = t.user_attrs.get("constraints")
    if given is None:
        given = getattr(t, "constraints", None) or t.system_attrs.get("constraints") or ()
    if isinstance(given, Mapping):
        given = list(given.values())
    return tuple(float(v) for v in given)


class EvolutionSampler(PolicySampler):
    """Regularized (aging) evolution over policies (see the module docstring): ``population_size`` random policies
    first, then tournaments of ``tournament_size`` among the ``population_size`` most recent, one mutation each."""

    name = "evolution"

    def __init__(self, space: SearchSpace, *, population_size: int = 20, tournament_size: int = 5, seed: int = 0,
                 attempts: int = 50) -> None:  # fmt: skip
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise ValueError(f"population_size must be >= 2 and tournament_size in [1, population_size], got "
                             f"{population_size} and {tournament_size}")  # fmt: skip
        super().__init__(space, seed=seed)
        self.population_size, self.tournament_size, self.attempts = population_size, tournament_size, attempts

    def propose(self, history: History, rng: random.Random) -> Key:
        if len(history.judged) < self.population_size:
            return self.random_untried(history, rng)
        population = list(history.judged[-self.population_size :])
        parent = min(rng.sample(population, self.tournament_size), key=history.order)
        for _ in range(self.attempts):
            child = self.mutate(parent.key, rng, lower=parent.excess > 0)
            if child not in history.seen:
                return child
        return self.random_untried(history, rng)

    def mutate(self, key: Key, rng: random.Random, *, lower: bool = False) -> Key:
        """``key`` with one choice changed to another of its options (with ``lower``, to fewer channels or int8,
        when such a change exists)."""
        if lower:
            changes = [_lower_options(self, key, i) for i in range(len(key))]
            where = [i for i, c in enumerate(changes) if c]
            if where:
                i = rng.choice(where)
                return key[:i] + (rng.choice(changes[i]),) + key[i + 1 :]
        where = [i for i, o in enumerate(self.options) if len(o) > 1]
        if not where:
            return key
        i = rng.choice(where)
        return key[:i] + (rng.choice([v for v in self.options[i] if v != key[i]]),) + key[i + 1 :]


def _lower_options(sampler: PolicySampler, key: Key, i: int) -> list[Any]:
    """The options of choice ``i`` that cost less than ``key``'s: fewer channels, int8 for a float layer, a block
    dropped, a higher sparsity or fewer k-means bits."""
    name, opts = sampler.names[i], sampler.options[i]
    if name.startswith("keep:"):
        return opts[: opts.index(key[i])]
    if name.startswith(("int8:", "drop:")):
        return [] if key[i] else [True]
    return _choices.lower(name, opts, key[i])  # more sparsity, fewer k-means bits; [] for the recovery's choices


def _scored(j: Judged) -> bool:
    """Whether every objective of ``j`` was measured (not the -inf of a trial over budget left unjudged)."""
    return all(math.isfinite(v) for v in j.values)


class GreedySampler(PolicySampler):
    """NetAdapt-style descent from the dense policy, then a climb around the best policy within budget (see the
    module docstring). ``min_loss``: the accuracy drop below which a step counts as free (the metric's resolution).

    Without a budget (every trial's constraint 0) the descent walks down to the smallest policy, tracing a front."""

    name = "greedy"

    def __init__(self, space: SearchSpace, *, seed: int = 0, min_loss: float = 1e-3) -> None:
        super().__init__(space, seed=seed)
        self.min_loss = min_loss
        self.dense = self.key(space.dense().params())

    def propose(self, history: History, rng: random.Random) -> Key:
        step = self.descend(history)
        if step is not None:
            return step
        within = [j for j in history.judged if j.excess == 0 and _scored(j)]
        if within:
            best = min(within, key=history.order)
            for n in self.moves(best.key):
                if n not in history.seen:
                    return n
        return self.random_untried(history, rng)

    def descend(self, history: History) -> Key | None:
        """The next policy the descent needs judged, or None once it has met the budget (or cannot go on). A trial
        recorded without its accuracy (a study of a strategy that leaves trials over budget unjudged, resumed with
        greedy) is no step: its -inf would read as a step that costs nothing, and being tried it is never judged."""
        done = {j.key: j for j in history.judged if _scored(j)}
        unbudgeted = all(v == 0.0 for j in history.judged for v in j.violations)
        cur = self.dense
        while True:
            if cur not in done:
                return cur if cur not in history.seen else None
            if done[cur].excess == 0 and not unbudgeted:
                return None
            steps = self.moves(cur, higher=False, recovery=False)
            fresh = [s for s in steps if s not in done and s not in history.seen]
            if fresh:
                return fresh[0]
            judged = [done[s] for s in steps if s in done]
            if not judged:
                return None
            scored = [(self.score(done[cur], s, history), -i, s) for i, s in enumerate(judged)]
            cur = max(scored, key=lambda t: (t[0], t[1]))[2].key

    def score(self, cur: Judged, step: Judged, history: History) -> tuple[float, float]:
        """(budget bought per accuracy lost, budget bought): the budget bought is the fraction of each violated
        budget's excess that the step removes (without budgets: of each minimized objective's value)."""
        if any(v > 0 for v in cur.violations):
            gain = sum(min(1.0, (c - s) / c) for c, s in zip(cur.violations, step.violations, strict=True) if c > 0)
        else:
            gain = sum((c - s) / abs(c) for c, s, d in zip(cur.values, step.values, history.directions, strict=True)
                       if d == StudyDirection.MINIMIZE and math.isfinite(c - s) and c != 0)  # fmt: skip
        loss = sum(c - s for c, s, d in zip(cur.values, step.values, history.directions, strict=True)
                   if d == StudyDirection.MAXIMIZE and math.isfinite(c - s))  # fmt: skip
        return (gain / max(loss, self.min_loss) if gain > 0 else gain, gain)
