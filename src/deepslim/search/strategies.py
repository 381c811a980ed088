"""Search strategies: the Optuna sampler behind each ``strategy=`` name of :func:`deepslim.search.search`.

``tpe`` and ``nsga2`` are Optuna's; ``tpe-multivariate`` is TPE modelling the choices jointly (Optuna's
``multivariate=True, group=True``: independent TPE learns each choice apart, not which combinations fit a budget —
ResNet-20's focused searches at 0.5×, session 14, spent 21 and 23 of 40 trials over it); ``random`` samples
uniformly; ``grid`` queues every policy once (the engine enqueues them, the sampler only fills gaps); ``evolution``
(regularized evolution) and ``greedy`` (NetAdapt-style descent) are deepslim's own
(:mod:`deepslim.search.samplers`), whose state is the study itself. Every sampler respects the budget constraints
that trials record.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from deepslim.search import storage as st
from deepslim.search.space import SearchSpace

STRATEGIES = ("tpe", "nsga2", "random", "grid", "tpe-multivariate", "evolution", "greedy")
# strategies whose proposals never read the objective values of a trial over budget (Optuna's TPE and NSGA-II rank
# such trials by their constraint excess alone; random and grid read nothing): their trials over a latency budget
# need no recovery (trials.trial_objective). Greedy does read them (the accuracy a step down costs), and evolution's
# tournaments are left as they are.
IGNORE_VALUES_OVER_BUDGET = ("tpe", "tpe-multivariate", "nsga2", "random", "grid")


def evolution_sizes(trials: int) -> tuple[int, int]:
    """(population, tournament) of regularized evolution for a search of ``trials`` trials: a quarter of the
    trials in the population (4 to 25), a third of it in each tournament (at least 2)."""
    population = max(4, min(25, trials // 4))
    return population, max(2, population // 3)


def make_sampler(strategy: str, seed: int, space: SearchSpace, trials: int, *, offset: int = 0) -> Any:
    """The Optuna sampler of ``strategy`` (one of :data:`STRATEGIES`), seeded.

    ``offset`` (the trials a resumed study already holds) moves the seed of Optuna's samplers, whose random stream
    lives in the process, so that a resumed search does not replay the draws it already made; evolution and greedy
    derive each draw from the study itself, so they take ``seed`` alone and resume exactly where they stood."""
    optuna = st._optuna()
    own = strategy in ("evolution", "greedy")
    seed = seed if own else seed + offset

    def constraints(frozen: Any) -> Sequence[float]:
        return frozen.user_attrs.get("constraints", [0.0])

    # Optuna 5 reads constraints that trials set themselves (Trial.set_constraint); older ones take a function
    given = {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": constraints}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if strategy in ("tpe", "tpe-multivariate"):
            joint = {"multivariate": True, "group": True} if strategy == "tpe-multivariate" else {}
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, trials), **joint,
                                              **given)  # fmt: skip
        if strategy == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)),
                                                 **given)  # fmt: skip
        if strategy == "evolution":
            from deepslim.search.samplers import EvolutionSampler

            population, tournament = evolution_sizes(trials)
            return EvolutionSampler(space, population_size=population, tournament_size=tournament, seed=seed)
        if strategy == "greedy":
            from deepslim.search.samplers import GreedySampler

            return GreedySampler(space, seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)  # random, and grid (whose trials are all queued in full)
