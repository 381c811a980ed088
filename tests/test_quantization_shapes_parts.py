"""benchmarks/quantization_shapes.py run in parts: --models/--seeds pick the runs, --merge keeps an earlier
result's other runs in one file (no training here: the argument handling and the merge only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import quantization_shapes as qs  # noqa: E402


def _run(seed: int, fp32: float) -> dict:
    return {"seed": seed, "train_seconds": 1.0, "accuracy": {"fp32": fp32, "NNCF (ORT)": "failed: X"},
            "latency": {"fp32": {"median_ms": 1.0, "file_bytes": 10}}}  # fmt: skip


def _result(threads: int = 1, **models: list[dict]) -> dict:
    return {"benchmark": "quantization_shapes", "date": "2026-11-30", "threads": threads, "machine": "m",
            "note": "part one", "models": {n: qs.summarize(n, runs) for n, runs in models.items()}}  # fmt: skip


def test_models_and_seeds_select_one_run_and_default_to_the_whole_table() -> None:
    one = qs.parse_args(["--models", "mobilenet_v2", "--seeds", "1"])
    assert (one.models, one.seeds, one.threads, one.previous) == (["mobilenet_v2"], [1], 1, None)
    every = qs.parse_args([])
    assert (every.models, every.seeds) == (["resnet20", "mobilenet_v2"], [0, 1])


def test_an_unknown_model_is_a_usage_error_listing_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        qs.parse_args(["--models", "resnet18"])
    assert exc.value.code == 2
    assert "resnet20" in capsys.readouterr().err


def test_merge_keeps_the_earlier_runs_in_seed_order_with_the_mean_over_all(tmp_path: Path) -> None:
    previous = _result(resnet20=[_run(0, 0.99), _run(1, 0.98)], mobilenet_v2=[_run(0, 0.947)])
    path = tmp_path / "part.json"
    path.write_text(json.dumps(previous))
    args = qs.parse_args(["--models", "mobilenet_v2", "--seeds", "1", "--merge", str(path)])
    now = {**_result(mobilenet_v2=[_run(1, 0.953)]), "note": "part two"}
    out = qs.merged(now, args.previous, str(path))
    assert [r["seed"] for r in out["models"]["mobilenet_v2"]["runs"]] == [0, 1]
    assert out["models"]["mobilenet_v2"]["mean_accuracy"] == {"fp32": pytest.approx(0.95)}
    assert out["models"]["resnet20"] == previous["models"]["resnet20"]
    assert list(out["models"]) == ["resnet20", "mobilenet_v2"]  # the table's order, not the run's
    assert out["note"] == "part two"
    assert out["merged"] == {"from": str(path), "date": "2026-11-30", "machine": "m",
                             "seeds": {"resnet20": [0, 1], "mobilenet_v2": [0]}, "note": "part one"}  # fmt: skip


def test_merge_refuses_a_seed_run_twice_and_other_threads() -> None:
    previous = _result(mobilenet_v2=[_run(0, 0.947)])
    assert "mobilenet_v2 seed 0 already in it" in (qs.merge_problem(previous, ["mobilenet_v2"], [0, 1], 1) or "")
    assert "trained at 1 threads, this one at 2" in (qs.merge_problem(previous, ["resnet20"], [0], 2) or "")
    assert qs.merge_problem(previous, ["mobilenet_v2"], [1], 1) is None
    assert qs.merged(previous, None) is previous
