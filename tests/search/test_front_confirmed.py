"""The finals re-measure the Pareto front before choosing finalists: a trial whose own runs all read fast (they are
taken seconds apart, so a passing state of a shared machine moves them together, and the search keeps exactly such
trials) is found over its budget there and is not recovered as a finalist; the next front policy is (session 11:
four of eight front policies of a 200-trial search read 0.26-0.30x dense by their own runs, 0.32-0.39x later)."""

import statistics

import pytest

from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import FAST, digits, fake_ms, fake_table, params_ms, small_space, trained_net


def _signature(model):
    return tuple((type(m).__name__, tuple(m.weight.shape)) for m in model.modules()
                 if hasattr(m, "weight") and m.weight is not None)  # fmt: skip


class PhasedTimer:
    """1 µs per parameter; once ``late`` is set (after the last trial), the model with signature ``slow`` runs
    ``factor`` (3) times slower: its runs during the trials all read it fast, the later ones as it is — or, with
    ``stretch``, only the first ``stretch`` runs after the trials (a loaded stretch of the machine that passes). The
    dense model (each run's first) reads ``dense_factor`` (10) times slower in the runs after the trials numbered in
    ``dense_loaded``."""

    def __init__(self, slow=None, stretch=None, factor=3.0, dense_loaded=(), dense_factor=10.0):
        self.slow, self.stretch, self.late, self.sizes, self.after = slow, stretch, False, [], 0
        self.factor, self.dense_loaded, self.dense_factor = factor, dense_loaded, dense_factor

    def __call__(self, pairs):
        self.sizes.append(len(pairs))
        self.after += self.late
        loaded = self.late and (self.stretch is None or self.after <= self.stretch)
        times = [t * (self.factor if loaded and _signature(m) == self.slow else 1.0)
                 for t, (m, _) in zip(params_ms(pairs), pairs, strict=True)]  # fmt: skip
        if self.late and self.after in self.dense_loaded:
            times[0] *= self.dense_factor
        return times


def _search(out, timer, trials=8):
    from deepslim.search import search

    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=timer)
    done = []

    def on_trial(c):
        done.append(c)
        timer.late = len(done) >= trials  # the trials are over: what follows is the finals

    return search(net, digits(), small_space(net), ("accuracy", "latency"), "latency=0.7x", trials=trials,
                  strategy="grid", out_dir=out, latency_table=table, latency_model="measured", on_trial=on_trial,
                  **FAST)  # fmt: skip


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One search with no phase change (shared by both tests: a search is the file's main cost): its result and
    its timer."""
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    timer = PhasedTimer()
    return _search(tmp_path_factory.mktemp("plain"), timer), timer


def _winner(plain):
    """The policy the plain search returns and its model's signature (the one a phased timer slows down)."""
    first = plain[0]
    assert first.best is not None and first.best.trial is not None and not first.notes  # a searched policy wins
    net, data = trained_net(), digits()
    fast = first.best.policy
    return fast, _signature(Evaluator(net, data, small_space(net), fake_table()).model_and_keys(fast, "none")[0])


def test_a_front_policy_that_read_fast_in_its_trial_but_is_over_later_is_not_made_a_finalist(tmp_path, plain):
    fast, slow = _winner(plain)
    timer = PhasedTimer(slow)
    second = _search(tmp_path / "b", timer)
    trial = next(c.trial for c in second.trials if c.policy == fast)
    on_front = next(c for c in second.pareto if c.policy == fast)
    assert on_front.remeasured["verdict"] == "over" and not on_front.feasible
    first, again = on_front.remeasured["readings"]  # over twice: re-measured once more before it was dropped
    assert first["verdict"] == again["verdict"] == "over" and len(on_front.remeasured["repeats_ms"]) == 6
    assert on_front.remeasured["dense_repeats_ms"] == first["dense_repeats_ms"] + again["dense_repeats_ms"]
    assert timer.sizes[-9:-3] == [1 + len(second.pareto)] * 3 + [2] * 3  # the second reading: it and dense alone
    assert all(c.policy != fast for c in second.finalists)  # never fine-tuned: it could only have been passed over
    assert second.best is not None and second.best.trial is not None and second.best.policy != fast
    assert second.best.remeasured["verdict"] != "over"
    assert any(n.startswith(f"searched trial {trial} (ranked 1 on the front) is over budget when re-measured twice: ")
               and n.endswith("beyond the noise band: not recovered as a finalist") for n in second.notes)  # fmt: skip
    assert not any("uniform policy is best" in n for n in second.notes)
    assert any("the minimum of the re-reading's runs" in n and "re-read over" in n for n in second.notes)


def _share(plain, fast):
    """The plain search's front policy ``fast``: its time against its budget (0.7x dense) in the finals' runs."""
    doc = next(c for c in plain[0].pareto if c.policy == fast).remeasured
    return doc["repeats_ms"][0] / doc["dense_repeats_ms"][0] / 0.7


def test_a_front_policy_over_in_one_loaded_re_measurement_and_within_in_the_next_is_kept(tmp_path, plain):
    """Session 17, run 2: the front's four best policies read over in one loaded re-measurement and were passed over;
    a policy over once is re-measured once more, and kept when it meets its budget in every run of the re-reading
    with the dense model steady (a note says it passed only so), with the re-reading's minimum as its time, as every
    other model's (review R2 18 M1, M2: the median of all six runs passed over this policy, loaded 3x)."""
    fast, slow = _winner(plain)
    assert _share(plain, fast) < 1
    second = _search(tmp_path / "b", PhasedTimer(slow, stretch=3))  # only the front's first three runs are loaded
    on_front = next(c for c in second.pareto if c.policy == fast)
    doc = on_front.remeasured
    first, again = doc["readings"]
    assert first["verdict"] == "over" and again["verdict"] == "meets"
    assert doc["verdict"] == "within noise" and on_front.feasible
    assert doc["repeats_ms"] == first["repeats_ms"] + again["repeats_ms"]
    assert doc["median_of_budget"] > 1  # the median of six would have passed it over
    assert doc["measured_ms"] == min(again["repeats_ms"]) == on_front.measurement.measured_latency_ms
    assert doc["measured_ms"] < statistics.median(doc["repeats_ms"])
    assert (doc["dense_measured_ms"], doc["budget_ms"]) == (again["dense_measured_ms"], again["budget_ms"])
    assert doc["dense_change"] == pytest.approx(1.0)
    assert second.best is not None and second.best.policy == fast  # recovered and returned
    trial = next(c.trial for c in second.trials if c.policy == fast)
    assert second.notes == (f"searched trial {trial} (ranked 1 on the front) was read over budget, and met it in every "
                            f"run of the re-reading: at most {doc['reread_max_of_budget']:.3g}x its budget, the dense "
                            "model at 1x its first reading's median",)  # fmt: skip
    assert all("readings" not in c.remeasured for c in second.finalists)  # the finalists' runs: none over


def test_a_policy_over_its_budget_is_still_dropped_when_dense_runs_read_slow_in_its_re_reading(tmp_path, plain):
    """Review R18 M1: a model over its budget, re-read once more while the dense model read slow in two of the three
    runs (those two runs within: the re-reading alone is ``within noise``), is still over."""
    fast, slow = _winner(plain)
    second = _search(tmp_path / "b", PhasedTimer(slow, dense_loaded=(4, 5)))  # the re-reading's first two runs
    on_front = next(c for c in second.pareto if c.policy == fast)
    doc = on_front.remeasured
    first, again = doc["readings"]
    assert first["verdict"] == "over" and again["verdict"] == "within noise"
    assert doc["verdict"] == "over" and not on_front.feasible and doc["median_of_budget"] > 1
    assert again["dense_repeats_ms"][0] == pytest.approx(10 * again["dense_repeats_ms"][2])  # its own dense runs
    assert all(c.policy != fast for c in second.finalists)
    assert second.best is not None and second.best.policy != fast


def test_a_policy_just_over_its_budget_stays_over_when_the_dense_model_is_loaded_through_its_re_reading(
        tmp_path, plain):  # fmt: skip
    """Review R2 18 M1: a policy 1.1x its budget, re-read while the dense model read 1.5x slower in all three runs
    (every run of the re-reading within: it ``meets``, and the median of all six runs would have kept it), stays
    over: the re-reading's dense median is more than 1.1x the first reading's."""
    fast, slow = _winner(plain)
    factor = 1.1 / _share(plain, fast)
    second = _search(tmp_path / "b", PhasedTimer(slow, factor=factor, dense_loaded=(4, 5, 6), dense_factor=1.5))
    on_front = next(c for c in second.pareto if c.policy == fast)
    doc = on_front.remeasured
    first, again = doc["readings"]
    assert first["verdict"] == "over" and again["verdict"] == "meets"
    assert doc["median_of_budget"] < 1 and doc["dense_change"] == pytest.approx(1.5)
    assert doc["verdict"] == "over" and not on_front.feasible
    assert all(c.policy != fast for c in second.finalists)
    assert second.best is not None and second.best.policy != fast
    trial = next(c.trial for c in second.trials if c.policy == fast)
    dense = "the dense model at 1.5x its first reading's median, over 1.1x"
    assert any(n.startswith(f"searched trial {trial} (ranked 1 on the front) is over budget when re-measured twice: ")
               and dense in n for n in second.notes)  # fmt: skip


def test_the_front_is_timed_apart_from_the_finalists_each_run_with_the_dense_model_first(plain):
    result, timer = plain
    finals_calls = timer.sizes[-6:]  # 3 runs of the front, then 3 of the finalists (searched + uniform) and dense
    assert finals_calls[:3] == [1 + len(result.pareto)] * 3
    assert finals_calls[3:] == [1 + len(result.finalists)] * 3
    assert all(c.remeasured is not None for c in result.pareto)
    assert len(result.latency_table["dense_remeasured_ms"]) == 3
