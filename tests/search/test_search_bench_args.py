"""benchmarks/search.py: ``--test-finalists`` refuses a negative count (review R20 L4: -1 ran every recovery seed
but the last), and a ``best`` that is the uniform floor comparator records ``uniform_floor`` in the copied uniform
row (review R20 L5: it read False)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("optuna", reason="the search benchmark imports the search engine")

from tests.search.test_search_bench_final import UNIFORM, _cand  # noqa: E402


def test_a_negative_test_finalists_count_is_refused(monkeypatch, capsys):
    import search as bench

    monkeypatch.setattr(sys, "argv", ["search.py", "--test-finalists", "-1"])
    monkeypatch.setattr(bench, "run_model", lambda *a: pytest.fail("ran with a negative count"))
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    assert "--test-finalists must be 0 or more recovery seeds, not -1" in capsys.readouterr().err


def test_a_best_that_is_the_uniform_floor_records_the_uniform_row_as_the_floor(monkeypatch):
    import search as bench

    monkeypatch.setattr(bench, "recovered", lambda *a: "net")
    monkeypatch.setattr(bench, "time_models", lambda pairs, threads, rounds: [2.0] + [1.0] * (len(pairs) - 1))
    monkeypatch.setattr(bench, "held_out_val", lambda full, data: None)
    result = SimpleNamespace(best=_cand(UNIFORM, 3), uniform=None, finalists=[], limits={"latency": 1.0})
    args = SimpleNamespace(recovery_seeds=[0], final_rounds=1, interleaves=1, budget_now=0.5, test_finalists=0,
                           uniform_floor=True, uniform_ratios=[0.25])  # fmt: skip
    space = SimpleNamespace(canonical=lambda p: p, uniform=lambda ratio, int8: UNIFORM)  # the floor is best's policy
    rows = bench.final_comparison("dense", None, SimpleNamespace(example_input=None), space, None, result, args)
    assert rows["uniform"]["same_model_as_best"] and rows["uniform"]["uniform_floor"]  # before: False
    assert not rows["best"]["uniform_floor"]
