"""A sampled policy over the latency budget repaired onto the next trial slot (``search(repair=True)``,
:func:`trials.repaired`, :func:`trials.queue_repair`): its layers int8 and channel counts notched down until a step
the search's latency model judges lies 3 % within; the repaired policy is the next empty slot's fixed choices (the
sampler is told it as that trial's; never a failed trial's waiting retry), judged as every trial is, and the study
still holds ``trials`` slots; resuming neither repeats nor mis-reads a trial; ``grid`` is refused."""

import pytest

from deepslim.errors import ConfigError
from deepslim.search.evaluate import Evaluator
from deepslim.search.frame import FRAME_ATTR, restore_tables
from deepslim.search.latency import LatencyTable
from deepslim.search.trials import (
    REPAIR_ATTR,
    REPAIR_HEADROOM,
    REPAIR_RULE,
    REPAIR_RULE_ATTR,
    REPAIRED_ATTR,
    model_key,
    repaired,
)
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _table() -> LatencyTable:
    return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)


def test_a_repaired_policy_meets_the_budget_on_the_fake_table_and_stays_near_the_sampled_one():
    net = trained()
    space = _space(net)
    ev = Evaluator(net, digits(), space, _table(), latency_model="layers")
    dense_ms = ev.build(space.dense(), "none")[1]
    limit = 0.45 * dense_ms
    policy = space.policy({**space.dense().params(), "drop:4": True})  # over: one block dropped, all float
    own = ev.build(policy, "none")[1]
    assert own > limit
    fixed = repaired(ev, policy, own, limit)
    assert fixed is not None and model_key(space, fixed) != model_key(space, policy)
    assert ev.build(fixed, "none")[1] <= limit * (1 - REPAIR_HEADROOM)  # within, with room for the finals' noise
    assert fixed.drop == policy.drop  # the blocks dropped stay as sampled
    assert all(fixed.keep[g.name] <= policy.keep[g.name] for g in space.groups)
    assert repaired(ev, policy, own, 0.01 * dense_ms) is None  # nothing in the space reaches 1 %: no repair


def _search(out, trials: int, repair: bool = True, strategy: str = "tpe", latency_model: str = "measured"):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained()
    return search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=trials, strategy=strategy,
                  out_dir=out, latency_table=_table(), latency_model=latency_model, proxy_steps=2, finetune_epochs=0,
                  top_k=1, uniform_ratios=(1.0, 0.5), repair=repair, seed=3)  # fmt: skip


def _study(out):
    import optuna

    from deepslim.search import storage as st

    return optuna.load_study(study_name="deepslim-search", storage=st.open_storage(None, out_dir=out))


@pytest.fixture(scope="module")
def repaired_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repair")
    return _search(out, 8, latency_model="layers"), out


def test_an_over_budget_trial_hands_its_repair_to_the_next_slot_which_judges_it_as_its_own_choices(repaired_run):
    result, out = repaired_run
    trials = {t.number: t for t in _study(out).get_trials()}
    by_trial = {c.trial: c for c in result.trials}
    sources = [n for n, t in trials.items() if REPAIRED_ATTR in t.user_attrs]
    assert sources  # the budget binds: some sampled trials went over and were repaired
    ev = Evaluator(trained(), digits(), result.space, _table(), latency_model="layers")
    restore_tables(ev, _study(out).user_attrs[FRAME_ATTR])  # the search's frame

    def repair_of(n):  # the repaired policy of trial n, as the search made it
        over = by_trial[n]
        return repaired(ev, over.policy, over.measurement.extra["predicted_latency_ms"], result.limits["latency"])

    for n in sources:
        slot = trials[n].user_attrs[REPAIRED_ATTR]
        assert slot > n and trials[slot].user_attrs[REPAIR_ATTR] == n
        assert not by_trial[n].feasible and by_trial[n].accuracy is None  # the sample: over, unscored
        assert by_trial[slot].policy.params() == trials[slot].params  # judged as the slot's own choices
        assert trials[slot].params == trials[slot].system_attrs["fixed_params"] == repair_of(n).params()  # the repair
        assert by_trial[slot].measurement.extra[REPAIR_ATTR] == n
        assert trials[slot].user_attrs[REPAIR_RULE_ATTR] == REPAIR_RULE  # which rule made it (review R19 L8)
        assert by_trial[slot].measurement.extra[REPAIR_RULE_ATTR] == REPAIR_RULE  # and the search's JSON says so
        assert by_trial[slot].feasible and by_trial[slot].accuracy is not None  # within: scored
        assert REPAIRED_ATTR not in trials[slot].user_attrs  # a repair is not repaired again
    assert len(trials) == 8 and result.cost["trials"] == 8  # the slots still number ``trials``


def test_a_repair_never_takes_the_waiting_retry_of_a_failed_trial():
    # a retry (storage.release_dead_trials, Optuna's retry callback) waits with the failed trial's parameters, which
    # Optuna answers the slot's suggestions from: a repair written there would run the retried policy instead
    optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import storage as st
    from deepslim.search.trials import queue_repair

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = _space(trained())
    choices = space.choices()
    study = optuna.create_study(directions=["maximize"])
    st.add_trial_slots(study, 3)

    def run(trial):
        return space.policy({k: trial.suggest_categorical(k, v) for k, v in choices.items()})

    failed = run(st.claim_trial(study))
    assert st.release_dead_trials(study) == [0]  # this process left it running: failed, its retry queued last
    for _ in range(2):  # the two empty slots run
        trial = st.claim_trial(study)
        run(trial)
        study.tell(trial, 0.5)
    fix = space.narrower(space.dense(), 1, True)
    assert queue_repair(study, 2, fix) is None  # only the retry waits: no empty slot
    st.add_trial_slots(study, 1)
    assert queue_repair(study, 2, fix) == 4  # the empty slot after the retry
    retry = st.claim_trial(study)
    assert retry.number == 3 and run(retry).params() == failed.params() and REPAIR_ATTR not in retry.user_attrs
    slot = st.claim_trial(study)
    assert slot.number == 4 and run(slot).params() == fix.params() and slot.user_attrs[REPAIR_ATTR] == 2


def test_with_the_layer_model_judging_every_repair_meets_the_budget(tmp_path_factory):
    # the layer table is both the repair's estimate and the judge here: each repaired slot lands within budget (with
    # the measured model the estimate scales the trial's own measurement and can miss; the benchmark counts them)
    result = _search(tmp_path_factory.mktemp("layers"), 12, latency_model="layers")
    repairs = [c for c in result.trials if REPAIR_ATTR in c.measurement.extra]
    assert repairs and all(c.feasible and c.latency_ms <= result.limits["latency"] * (1 - REPAIR_HEADROOM)
                           for c in repairs)  # fmt: skip
    sources = {c.measurement.extra[REPAIR_ATTR] for c in repairs}
    assert all(not c.feasible for c in result.trials if c.trial in sources)


def test_with_the_measured_model_a_repair_is_judged_before_it_is_queued_so_it_lands_within(tmp_path_factory):
    # the fake end-to-end timer counts parameters, so the layer table's int8 step (0.4x there) gains nothing
    # measured: that step is judged over and the repair goes on to fewer channels
    result = _search(tmp_path_factory.mktemp("measured"), 12)
    repairs = [c for c in result.trials if REPAIR_ATTR in c.measurement.extra]
    assert repairs and all(c.feasible for c in repairs)
    assert all(c.recovery == "steps" and c.accuracy is not None for c in repairs)  # scored as trials within are


def test_a_resumed_repaired_study_neither_repeats_nor_misreads_a_trial(repaired_run, tmp_path_factory):
    import shutil

    _, out = repaired_run
    copy = tmp_path_factory.mktemp("resume") / "study"
    shutil.copytree(out, copy)
    before = {t.number: (t.params, dict(t.user_attrs)) for t in _study(copy).get_trials()}
    again = _search(copy, 8, latency_model="layers")  # the same call: nothing left to run
    assert {t.number: (t.params, dict(t.user_attrs)) for t in _study(copy).get_trials()} == before
    assert again.cost["trials"] == 8
    more = _search(copy, 11, latency_model="layers")  # three more slots
    after = {t.number: t for t in _study(copy).get_trials()}
    assert {n: (after[n].params, dict(after[n].user_attrs)) for n in before} == before  # earlier trials unchanged
    assert len(after) == 11 and more.cost["trials"] == 11
    judged = [c for c in more.trials if "repeat_of" not in c.measurement.extra]
    keys = [model_key(more.space, c.policy) for c in judged]
    assert len(keys) == len(set(keys))  # no model judged twice
    for c in more.trials:  # every candidate is its own trial's choices
        assert c.policy.params() == after[c.trial].params


def test_a_resumed_study_says_which_repairs_were_queued_before_the_rule_was_recorded(repaired_run, tmp_path_factory):
    import shutil

    from deepslim.search.trials import REPAIR_RULE_UNRECORDED

    result, out = repaired_run
    copy = tmp_path_factory.mktemp("rule") / "study"
    shutil.copytree(out, copy)
    study = _study(copy)
    old = result.space.narrower(result.space.dense(), 1, True)  # a slot as older code queued a repair: no rule
    params = {k: v for k, v in old.params().items() if k in result.space.choices()}
    study.enqueue_trial(params, skip_if_exists=False)
    slot = max(t.number for t in study.get_trials())
    study._storage.set_trial_user_attr(study.get_trials()[slot]._trial_id, REPAIR_ATTR, 0)
    more = _search(copy, slot + 1, latency_model="layers")
    rules = {c.trial: c.measurement.extra.get(REPAIR_RULE_ATTR) for c in more.trials if REPAIR_ATTR in
             c.measurement.extra}  # fmt: skip
    assert rules[slot] == REPAIR_RULE_UNRECORDED  # review R19 L8: a resumed study's JSON tells the rules apart
    assert {r for n, r in rules.items() if n != slot} == {REPAIR_RULE}


def test_repair_is_refused_with_a_strategy_that_reads_trials_over_budget_with_grid_or_with_workers(tmp_path):
    from deepslim.search import search

    net = trained()
    with pytest.raises(ConfigError, match="repair needs"):
        search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=2, strategy="greedy",
               out_dir=tmp_path, latency_table=_table(), repair=True)  # fmt: skip
    with pytest.raises(ConfigError, match="sampled strategy: 'grid' queues every slot"):  # no empty slot, no repair
        search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=2, strategy="grid",
               out_dir=tmp_path, latency_table=_table(), repair=True)  # fmt: skip
    with pytest.raises(ConfigError, match="one process"):
        search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=2, out_dir=tmp_path,
               latency_table=_table(), repair=True, workers=2)  # fmt: skip


def test_repair_is_refused_where_no_trial_would_be_left_unrecovered_to_repair(tmp_path):
    """Repairs are made on trials skipped without recovery over a latency-only budget: with batch-norm recovery
    (no proxy steps) or a size budget beside latency no trial is skipped, so ``repair`` would silently do nothing
    (review R2 M1) — refused before any trial, naming what it needs."""
    from deepslim.search import search

    net = trained()
    with pytest.raises(ConfigError, match="proxy_steps > 0.*got recovery 'bn' and budgets latency$"):
        search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=2, out_dir=tmp_path / "a",
               latency_table=_table(), latency_model="layers", repair=True)  # fmt: skip
    with pytest.raises(ConfigError, match="latency as the only budget; got recovery 'steps' and budgets latency, size"):
        search(net, digits(), _space(net), ("accuracy",), ["latency=0.45x", "size=1MB"], trials=2,
               out_dir=tmp_path / "b", latency_table=_table(), latency_model="layers", repair=True,
               proxy_steps=1)  # fmt: skip
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # refused before the study
