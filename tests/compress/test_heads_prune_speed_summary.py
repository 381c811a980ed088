"""benchmarks/heads_prune.py's speed summary: each saved model's speed-up in every timed cell and its weakest cell,
read from the timing rows of the same run (the teacher's own rows are not a model's)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


def _row(variant, seq, batch, cpu, wall):
    return {"seq": seq, "batch": batch, "variant": variant, "speedup_vs_ort_fp32": cpu, "speedup_wall": wall}


def test_the_weakest_cell_is_each_models_lowest_cpu_speed_up():
    import heads_prune

    rows = [_row("ort_fp32", 32, 1, 1.0, 1.0), _row("s0", 32, 1, 1.41, 1.45), _row("s1", 32, 1, 1.24, 1.9),
            _row("s0", 32, 32, 1.40, 1.2), _row("s1", 32, 32, 1.52, 1.1), _row("ort_fp32", 128, 1, 1.0, 1.0),
            _row("s0", 128, 1, 1.52, 1.57), _row("s1", 128, 1, 1.33, 1.0)]  # fmt: skip
    out = heads_prune.speed_summary(rows, {"s0": "/tmp/a", "s1": "/tmp/b"})
    assert set(out) == {"/tmp/a", "/tmp/b"}
    assert out["/tmp/a"]["weakest"] == {"cell": "s32_b32", "speedup": 1.40}
    assert out["/tmp/b"]["weakest"] == {"cell": "s32_b1", "speedup": 1.24}  # judged on CPU time, not the wall ratio
    assert out["/tmp/b"]["speedup"] == {"s32_b1": 1.24, "s32_b32": 1.52, "s128_b1": 1.33}
    assert out["/tmp/a"]["speedup_wall"]["s128_b1"] == 1.57


def test_a_model_without_rows_is_an_error_not_a_missing_entry():
    import heads_prune

    with pytest.raises(ValueError, match="no timed rows for s1"):
        heads_prune.speed_summary([_row("s0", 32, 1, 1.4, 1.4)], {"s0": "/tmp/a", "s1": "/tmp/b"})
