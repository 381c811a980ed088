"""tools/mutation_sample.py: the sample is uniform, reproducible and confined to the chosen modules; the score counts
killed and timed-out mutants as caught and survivors and unreached ones as missed; the interval is Wilson's."""

import importlib.util
import sys
from pathlib import Path

import pytest

_TOOL = Path(__file__).parents[2] / "tools" / "mutation_sample.py"
_spec = importlib.util.spec_from_file_location("mutation_sample", _TOOL)
ms = sys.modules.setdefault("mutation_sample", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(ms)

NAMES = [f"deepslim.analysis.cost.x_macs__mutmut_{i}" for i in range(1, 41)] + [
    f"deepslim.compress.prune.masks.xǁWeightMaskǁforward__mutmut_{i}" for i in range(1, 21)] + [
    "deepslim.analysisx.other.x_f__mutmut_1", "deepslim.models.zoo.x_g__mutmut_1"]


def test_wilson_interval_golden_values():
    lo, hi = ms.wilson(85, 100)  # p = 0.85, n = 100: centre 0.83705, half-width 0.06989
    assert lo == pytest.approx(0.76716, abs=1e-4) and hi == pytest.approx(0.90694, abs=1e-4)
    lo, hi = ms.wilson(10, 10)  # all caught: the interval still admits misses
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.72247, abs=1e-4)
    assert ms.wilson(0, 0) == (0.0, 1.0)


def test_the_population_is_the_chosen_modules_only():
    pool = ms.population(NAMES, ["deepslim.analysis", "deepslim.compress"])
    assert len(pool) == 60 and pool == sorted(pool)
    assert "deepslim.analysisx.other.x_f__mutmut_1" not in pool  # a prefix is a package, not a string prefix
    assert ms.population(NAMES, ["deepslim.compress.prune.masks"]) == sorted(NAMES[40:60])
    with pytest.raises(SystemExit, match="no mutants in deepslim.export"):
        ms.population(NAMES, ["deepslim.export"])


def test_a_seed_draws_the_same_sample_and_another_seed_another():
    pool = ms.population(NAMES, ["deepslim"])
    a, b, c = ms.draw(pool, 10, 0), ms.draw(list(pool), 10, 0), ms.draw(pool, 10, 1)
    assert a == b and a != c and len(set(a)) == 10 and set(a) <= set(pool)
    assert ms.draw(pool, 1000, 0) == pool  # a sample larger than the population is all of it


def test_the_sample_is_uniform_over_the_population():
    # every mutant is drawn with probability size / population: 2,000 draws of 5 of 62, each ~161 times
    pool = ms.population(NAMES, ["deepslim"])
    counts = dict.fromkeys(pool, 0)
    for seed in range(2000):
        for n in ms.draw(pool, 5, seed):
            counts[n] += 1
    expected = 2000 * 5 / len(pool)
    assert all(abs(c - expected) < 5 * expected**0.5 for c in counts.values())


def test_the_summary_counts_caught_missed_and_unfinished_mutants_by_module():
    sample = NAMES[:4] + NAMES[40:44]
    status = dict(zip(sample, ["killed", "timeout", "survived", "not checked", "no tests", "killed", "segfault",
                               "suspicious"], strict=True))  # fmt: skip
    s = ms.summarize(sample, status, seed=0, modules=["deepslim"], population=62)
    assert (s.caught, s.missed, s.sample, s.population) == (4, 2, 8, 62) and s.score == pytest.approx(4 / 6)
    assert s.ci95 == ms.wilson(4, 6)
    assert s.survivors == {"deepslim.analysis.cost": [f"{NAMES[2]} (survived)"],
                           "deepslim.compress.prune.masks": [f"{NAMES[40]} (no tests)"]}  # fmt: skip
    assert s.by_module["deepslim.analysis.cost"] == {"killed": 1, "timeout": 1, "survived": 1, "not checked": 1}
    assert "estimated score 66.7%" in s.text() and "deepslim.compress.prune.masks: 1 missed of 4 sampled" in s.text()


def test_the_first_draws_of_a_larger_sample_are_the_smaller_sample():
    # so a run in batches of consecutive draws that stops between batches has run a uniform sample of its own
    pool = [f"deepslim.analysis.cost.x_f__mutmut_{i}" for i in range(25_000)]
    order = ms.draw_order(pool, 400, 0)
    assert order[:100] == ms.draw_order(pool, 100, 0) and order[:300] == ms.draw_order(pool, 300, 0)
    assert sorted(order) == ms.draw(pool, 400, 0) and order != sorted(order)


def test_patched_mutmut_runs_each_mutants_tests_fastest_first_and_can_skip_the_clean_run(monkeypatch):
    from mutmut.state import state
    from mutmut.workers import isolation

    submitted = []
    for runner in (isolation.ForkServerRunner, isolation.ForkRunner):  # restored after the test
        monkeypatch.setattr(runner, "submit", lambda self, name, tests, limit, est: submitted.append((name, tests)))
        monkeypatch.setattr(runner, "run_clean_tests", lambda self, tests: 1)
    monkeypatch.setattr(state(), "duration_by_test", {"t::slow": 9.0, "t::fast": 0.1, "t::mid": 2.0})
    ms.patch_mutmut(skip_clean=False)
    isolation.ForkServerRunner.submit(None, "m1", ["t::slow", "t::unknown", "t::mid", "t::fast"], 10, 11.1)
    assert submitted == [("m1", ["t::unknown", "t::fast", "t::mid", "t::slow"])]  # unrecorded tests count as 0 s
    assert isolation.ForkServerRunner.run_clean_tests(None, ["t::slow"]) == 1  # the clean run still runs
    ms.patch_mutmut(skip_clean=True)
    assert isolation.ForkRunner.run_clean_tests(None, ["t::slow"]) == 0


def test_first_leaves_out_the_earlier_draws_and_batches_the_rest_in_draw_order():
    order = [f"m{i}" for i in range(1, 11)]
    assert ms.batches(order, first=4, batch=3) == [["m4", "m5", "m6"], ["m7", "m8", "m9"], ["m10"]]
    assert ms.batches(order, first=1, batch=0) == [order]
    assert ms.batches(order, first=10, batch=5) == [["m10"]]
    with pytest.raises(SystemExit, match="--first must be at least 1"):
        ms.batches(order, first=0, batch=2)
    with pytest.raises(SystemExit, match="--batch at least 0"):
        ms.batches(order, first=1, batch=-1)
    with pytest.raises(SystemExit, match="--first 11 is past the 10 draws"):
        ms.batches(order, first=11, batch=0)  # [[]] would have run mutmut on every mutant
