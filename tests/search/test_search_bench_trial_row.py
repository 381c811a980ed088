"""benchmarks/search.py's per-trial rows carry what tells repairs apart across sessions: the trial a repair came
from and the rule that made it (review R2 19 L3)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("optuna", reason="the search benchmark imports the search engine")


def test_a_repaired_trials_row_names_its_origin_and_rule():
    import search as bench
    from deepslim.search.space import Policy
    from deepslim.search.trials import REPAIR_RULE

    policy = Policy(keep={"g": 16}, int8={"conv": True}, drop={"b": False})
    measurement = SimpleNamespace(extra={"repair_of": 7, "repair_rule": REPAIR_RULE, "measured_runs": {"median": 0.4}})
    row = bench._trial_row(SimpleNamespace(trial=9, feasible=True, accuracy=0.9, latency_ms=1.0, policy=policy,
                                           recovery="none", measurement=measurement))  # fmt: skip
    assert row["repair_of"] == 7 and row["repair_rule"] == REPAIR_RULE and row["ratio_to_dense"] == 0.4
    assert row["int8"] == 1 and row["channels"] == 16 and row["blocks_dropped"] == 0
