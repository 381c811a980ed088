"""benchmarks/search.py's final comparison: a run whose ``best`` is the uniform policy recovers and times that model
once (session 19's run 1 recovered and timed it twice, as ``best`` and as ``uniform``), and ``--test-finalists N``
scores every other finalist of the finals on the test split with the first N recovery seeds."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("optuna", reason="the search benchmark imports the search engine")

from deepslim.search.space import Policy  # noqa: E402

UNIFORM = Policy(keep={"g": 8}, int8={"conv": True}, drop={"b": False})
SEARCHED = [Policy(keep={"g": k}, int8={"conv": True}, drop={"b": True}) for k in (8, 16, 24)]


def _cand(policy, trial, accuracy=0.9):
    m = SimpleNamespace(measured_latency_ms=1.0, extra={}, macs=100)
    return SimpleNamespace(policy=policy, trial=trial, accuracy=accuracy, feasible=True, measurement=m,
                           remeasured={"verdict": "meets", "budget_share": 0.9})  # fmt: skip


def _run(monkeypatch, best, finalists, test_finalists=0):
    import search as bench

    calls, timed = [], []

    def recovered(dense, data, full, space, table, policy, seeds, args, row, held_out, saved):
        calls.append((policy, list(seeds)))
        row["seeds"] += [{"seed": s, "test_accuracy": 0.9 + 0.001 * s} for s in seeds]
        row["test_accuracy_mean"] = sum(r["test_accuracy"] for r in row["seeds"]) / len(row["seeds"])
        return f"net {len(calls)}"

    def time_models(pairs, threads, rounds):
        timed.append(len(pairs))
        return [2.0] + [1.0] * (len(pairs) - 1)

    monkeypatch.setattr(bench, "recovered", recovered)
    monkeypatch.setattr(bench, "time_models", time_models)
    monkeypatch.setattr(bench, "held_out_val", lambda full, data: None)
    result = SimpleNamespace(best=best, uniform=_cand(UNIFORM, None), finalists=finalists, limits={"latency": 1.0})
    args = SimpleNamespace(recovery_seeds=[0, 1, 2], final_rounds=1, interleaves=3, budget_now=0.5,
                           test_finalists=test_finalists)  # fmt: skip
    space = SimpleNamespace(canonical=lambda p: p)
    full = SimpleNamespace(example_input=None)
    return bench.final_comparison("dense", None, full, space, None, result, args), calls, timed


def test_a_best_that_is_the_uniform_policy_is_recovered_and_timed_once(monkeypatch):
    rows, calls, timed = _run(monkeypatch, _cand(UNIFORM, None), [])
    assert calls == [(UNIFORM, [0, 1, 2])]  # before: twice
    assert timed == [2, 2, 2]  # dense and the one model, in each of 3 interleaves (before: 3 models)
    assert rows["uniform"]["same_model_as_best"] and rows["uniform"]["seeds"] == rows["best"]["seeds"]
    assert rows["uniform"]["ratio_to_dense"] == rows["best"]["ratio_to_dense"] == [0.5, 0.5, 0.5]
    rows, calls, timed = _run(monkeypatch, _cand(SEARCHED[0], 4), [])
    assert [p for p, _ in calls] == [SEARCHED[0], UNIFORM] and timed == [3, 3, 3]
    assert "same_model_as_best" not in rows["uniform"]


def test_test_finalists_scores_every_other_finalist_with_the_first_n_seeds(monkeypatch):
    finalists = [_cand(SEARCHED[0], 4, 0.92), _cand(SEARCHED[1], 7, 0.91), _cand(SEARCHED[2], 9, 0.90),
                 _cand(UNIFORM, None, 0.89)]  # fmt: skip
    rows, calls, _ = _run(monkeypatch, finalists[1], finalists, test_finalists=1)
    assert [p for p, _ in calls] == [SEARCHED[1], UNIFORM, SEARCHED[0], SEARCHED[2]]
    assert [s for _, s in calls[2:]] == [[0], [0]]
    assert [(r["trial"], r["finals_accuracy"], r["budget_share"]) for r in rows["finalists"]] == [(4, 0.92, 0.9),
                                                                                                  (9, 0.90, 0.9)]
    assert rows["finalists"][0]["test_accuracy_mean"] == pytest.approx(0.9)
    rows, calls, _ = _run(monkeypatch, finalists[1], finalists)  # default: best and uniform only
    assert len(calls) == 2 and "finalists" not in rows
