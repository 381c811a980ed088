"""The evolution and greedy strategies: exact optima on a synthetic space (every policy judged by a formula, so the
oracle enumerates them all), resuming from the study alone, the greedy descent's steps, mutations that respect the
budget, and the same on the tiny net through search()."""

import random

import pytest

from deepslim.errors import ConfigError
from deepslim.search import SearchSpace, search
from deepslim.search.evaluate import Evaluator
from deepslim.search.space import GroupChoice
from deepslim.search.strategies import STRATEGIES, evolution_sizes, make_sampler
from tests.search._tiny import FAST, digits, fake_table, tiny_net, trained_net
from tests.search.test_search import assert_found

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
from deepslim.search.samplers import EvolutionSampler, GreedySampler, read_history  # noqa: E402

# a synthetic space: 4 channel counts in each of 3 groups and 3 layers int8 or float, 512 policies
SENSITIVITY = {"a": 0.05, "b": 0.2, "c": 0.1}  # accuracy lost per squared fraction of channels removed
MS_PER_CHANNEL = {"a": 3.0, "b": 1.0, "c": 2.0}
INT8_DROP = {"x": 0.01, "y": 0.08, "z": 0.03}
LAYER_MS = {"x": 10.0, "y": 20.0, "z": 15.0}  # int8 runs at 0.4x


def synthetic_space() -> SearchSpace:
    groups = tuple(GroupChoice(n, 16, (4, 8, 12, 16)) for n in "abc")
    return SearchSpace(groups=groups, int8_layers=("x", "y", "z"))


def judge(policy):
    acc = 1.0 - sum(SENSITIVITY[g] * (1 - k / 16) ** 2 for g, k in policy.keep.items())
    acc -= sum(INT8_DROP[n] for n, q in policy.int8.items() if q)
    ms = sum(MS_PER_CHANNEL[g] * k for g, k in policy.keep.items())
    ms += sum(LAYER_MS[n] * (0.4 if q else 1.0) for n, q in policy.int8.items())
    return acc, ms


LIMIT = 0.6 * judge(synthetic_space().dense())[1]


def objective(space):
    def run(trial):
        policy = space.policy({k: trial.suggest_categorical(k, v) for k, v in space.choices().items()})
        acc, ms = judge(policy)
        trial.set_user_attr("constraints", [ms - LIMIT])
        return acc, ms

    return run


def optimum(space):
    """The oracle: every policy judged, the most accurate within budget (fewer ms on a tie)."""
    return min((p for p in space.all_policies() if judge(p)[1] <= LIMIT), key=lambda p: (-judge(p)[0], judge(p)[1]))


def study_of(strategy, trials, seed=0, storage=None):
    space = synthetic_space()
    sampler = make_sampler(strategy, seed, space, trials)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler, storage=storage,
                                study_name="s", load_if_exists=True)  # fmt: skip
    return space, study


def best_within(study):
    within = [t for t in study.trials if t.user_attrs["constraints"][0] <= 0]
    return max(within, key=lambda t: (t.values[0], -t.values[1]))


@pytest.mark.parametrize(("strategy", "trials"), [("evolution", 100), ("greedy", 40)])
def test_the_strategy_finds_the_exact_optimum_of_a_synthetic_space_in_a_fraction_of_it(strategy, trials):
    space, study = study_of(strategy, trials)
    study.optimize(objective(space), n_trials=trials)
    assert space.size == 512 and trials < space.size / 5
    assert best_within(study).params == optimum(space).params()
    assert len({str(sorted(t.params.items())) for t in study.trials}) == trials  # no policy judged twice


@pytest.mark.parametrize("strategy", ["evolution", "greedy"])
def test_a_fresh_sampler_continues_exactly_where_the_study_stands(strategy):
    space, whole = study_of(strategy, 60, seed=3)
    whole.optimize(objective(space), n_trials=60)
    storage = optuna.storages.InMemoryStorage()
    space, first = study_of(strategy, 60, seed=3, storage=storage)
    first.optimize(objective(space), n_trials=25)
    space, resumed = study_of(strategy, 60, seed=3, storage=storage)  # a new process: a new sampler, the same study
    resumed.optimize(objective(space), n_trials=35)
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    other_seed, study = study_of(strategy, 60, seed=4)
    study.optimize(objective(other_seed), n_trials=60)
    assert strategy == "greedy" or [t.params for t in study.trials] != [t.params for t in whole.trials]


def test_the_greedy_descent_takes_the_step_that_buys_the_most_latency_per_accuracy_lost():
    space, study = study_of("greedy", 13)
    study.optimize(objective(space), n_trials=13)
    policies = [space.policy(t.params) for t in study.trials]
    dense = space.dense()
    assert policies[0] == dense
    # then each one-step lowering of the dense policy: a group to its next smaller count, a float layer to int8
    lowerings = [space.policy({**dense.params(), "keep:a": 12}), space.policy({**dense.params(), "keep:b": 12}),
                 space.policy({**dense.params(), "keep:c": 12}), space.policy({**dense.params(), "int8:x": True}),
                 space.policy({**dense.params(), "int8:y": True}),
                 space.policy({**dense.params(), "int8:z": True})]  # fmt: skip
    assert policies[1:7] == lowerings
    acc0, ms0 = judge(dense)

    def ms_per_accuracy(p):
        acc, ms = judge(p)
        return (ms0 - ms) / (ms0 - LIMIT) / max(acc0 - acc, 1e-3)

    step = max(lowerings, key=ms_per_accuracy)
    assert step == space.policy({**dense.params(), "keep:a": 12})  # 12 ms for 0.0031 accuracy: the best buy
    assert policies[7] == space.policy({**step.params(), "keep:a": 8})  # the next step starts from it
    assert policies[7:13] == [space.policy({**step.params(), k: v}) for k, v in
                              [("keep:a", 8), ("keep:b", 12), ("keep:c", 12), ("int8:x", True), ("int8:y", True),
                               ("int8:z", True)]]  # fmt: skip


def test_an_evolution_parent_over_budget_mutates_one_choice_towards_less():
    sampler = EvolutionSampler(synthetic_space(), population_size=4, tournament_size=2)
    parent = sampler.key(synthetic_space().uniform(0.75, False).params())
    rng = random.Random(0)
    lower = [sampler.mutate(parent, rng, lower=True) for _ in range(200)]
    for child in lower:
        changed = [i for i, (a, b) in enumerate(zip(parent, child, strict=True)) if a != b]
        assert len(changed) == 1
        i = changed[0]
        assert (child[i] < parent[i]) if sampler.names[i].startswith("keep:") else (child[i] is True)
    assert len(set(lower)) == 3 * 2 + 3  # every lowering was drawn: 2 smaller counts per group, 3 layers to int8
    free = {sampler.mutate(parent, rng) for _ in range(300)}
    assert any(c[0] > parent[0] for c in free)  # within budget, a mutation may also add channels back


def test_the_history_counts_refused_and_queued_policies_as_tried_but_not_interrupted_ones():
    space = synthetic_space()
    names = list(space.choices())
    refused, interrupted, queued = space.smallest(True), space.smallest(False), space.uniform(0.5, True)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for policy, attr in ((refused, "error"), (interrupted, "interrupted")):
        study.enqueue_trial(policy.params())
        trial = study.ask()
        for k, v in space.choices().items():
            trial.suggest_categorical(k, v)
        trial.set_user_attr(attr, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(queued.params())
    history = read_history(study, names)
    key = GreedySampler(space).key
    assert history.seen == {key(refused.params()), key(queued.params())}
    assert history.finished == 1 and history.judged == ()


def test_evolution_sizes_follow_the_number_of_trials_and_a_resumed_study_keeps_the_seed():
    assert evolution_sizes(12) == (4, 2)
    assert evolution_sizes(100) == (25, 8)
    assert evolution_sizes(1000) == (25, 8)
    evolution = make_sampler("evolution", 3, synthetic_space(), 100, offset=7)
    assert (evolution.population_size, evolution.tournament_size, evolution.seed) == (25, 8, 3)
    assert make_sampler("greedy", 3, synthetic_space(), 100, offset=7).seed == 3  # their draws come from the study
    with pytest.raises(ValueError, match="tournament_size in"):
        EvolutionSampler(synthetic_space(), population_size=4, tournament_size=5)


# -- through search(): the tiny net, the fake cost table ------------------------------------------------------------



def net_space(net):
    """Channel counts 2, 4 or 8 in both groups and the second convolution int8 or float: 18 policies."""
    full = SearchSpace.from_model(net, digits().example_input, keep_ratios=(1.0, 0.5, 0.25), round_to=2)
    return SearchSpace(groups=full.groups, int8_layers=("3",), round_to=2)


@pytest.fixture(scope="module")
def net_optimum():
    net, data = trained_net(), digits()
    space = net_space(net)
    ev = Evaluator(net, data, space, fake_table())
    limit = 0.6 * ev.evaluate(space.dense(), recovery="none").latency_ms
    judged = [ev.evaluate(p) for p in space.all_policies()]
    feasible = [c for c in judged if c.latency_ms <= limit]
    return min(feasible, key=lambda c: (-c.accuracy, c.latency_ms)).policy, limit


@pytest.mark.parametrize("strategy", ["evolution", "greedy"])
def test_search_with_the_strategy_finds_the_exact_optimum_and_resumes_after_an_interruption(tmp_path, strategy,
                                                                                           net_optimum):  # fmt: skip
    expected, limit = net_optimum
    net, data = trained_net(), digits()
    args = (net, data, net_space(net), ("accuracy", "latency"), "latency=0.6x")
    seen = []

    def interrupt_fifth(c):
        seen.append(c.trial)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(*args, trials=12, strategy=strategy, out_dir=tmp_path, latency_table=fake_table(),
               on_trial=interrupt_fifth, **FAST)  # fmt: skip
    resumed = []
    result = search(*args, trials=12, strategy=strategy, out_dir=tmp_path, latency_table=fake_table(),
                    on_trial=lambda c: resumed.append(c.trial), **FAST)  # fmt: skip
    assert len(result.trials) == 12 < 18 and len(resumed) == 8  # the 4 finished trials were not run again
    assert len({str(sorted(c.policy.params().items())) for c in result.trials}) == 12
    assert result.limits["latency"] == pytest.approx(limit)
    assert_found(result, expected)
    assert result.best.feasible


def test_unknown_strategies_list_evolution_and_greedy(tmp_path):
    assert STRATEGIES[-2:] == ("evolution", "greedy")
    listed = "choose one of tpe, nsga2, random, grid, tpe-multivariate, evolution, greedy"
    with pytest.raises(ConfigError, match=listed):
        search(tiny_net(), digits(), ("prune",), trials=2, out_dir=tmp_path, strategy="annealing")
