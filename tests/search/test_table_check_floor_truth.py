"""The floor check's second pass (benchmarks/_search_floor15.second_pass, session 20): every chunk timed again in
reverse order, a slow second-pass reference judged against both passes, a policy whose two ratios disagree timed a
third time; the old single-reading measurement stays in the rows beside the agreed one. A fake chunk timer."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("optuna", reason="the floor check imports the search benchmark")


def _doc(chunks):
    rows = [{"chunk": c, "index_in_chunk": k, "measured_ms": t / chunk[0]}
            for c, chunk in enumerate(chunks) for k, t in enumerate(chunk[1:])]  # fmt: skip
    return {"dense": {"measured_ms": 1.0}, "rows": rows}


def test_the_second_pass_times_every_chunk_again_in_reverse_and_agrees_each_policy_s_ratio():
    from _search_floor15 import second_pass

    first = [[1.0, 2.0, 3.0], [1.0, 4.0, 0.5]]  # chunk 1's first policy read 25 % slow in the first pass
    answers = {(1, "second pass"): [1.0, 3.2, 0.5], (0, "second pass"): [1.02, 2.0, 3.0],
               (1, "readings disagree"): [1.0, 3.3, 0.5]}  # fmt: skip
    calls = []

    def timing(i, gap=0.0, backwards=False, why=""):
        calls.append((i, backwards, why))
        return list(answers[(i, why)])

    doc = _doc(first)
    second_pass(doc, first, timing)
    assert calls == [(1, True, "second pass"), (0, True, "second pass"), (1, False, "readings disagree")]
    agreed = [r["measured_agreed_ms"] / doc["dense"]["measured_agreed_ms"] for r in doc["rows"]]
    assert agreed == pytest.approx([2.0 / 1.02, 3.0 / 1.02, 3.3, 0.5])  # the lower of two; 4.0, 3.2, 3.3: 3.3
    assert [r["measured_ms"] for r in doc["rows"]] == [2.0, 3.0, 4.0, 0.5]  # the old truth, as it was
    assert doc["rows"][2]["ratio_readings"] == pytest.approx([4.0, 3.2, 3.3])
    assert doc["noise_band"]["over_tolerance"] == 1 and doc["noise_band"]["max"] == pytest.approx(0.25)
    assert doc["second_pass_timings"] == [1, 2]


def test_a_second_pass_reference_reading_slow_against_the_first_pass_is_timed_again():
    """Both second-pass references read 20 % slow: against each other they are steady, against the first pass's
    they are not, and each chunk is timed again, keeping the faster reference."""
    from _search_floor15 import second_pass

    first = [[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]]
    calls = []

    def timing(i, gap=0.0, backwards=False, why=""):
        calls.append((i, why))
        return [1.2, 2.0 * (i + 2) / 2] if why == "second pass" else [1.0, 2.0 * (i + 2) / 2]

    doc = _doc(first)
    second_pass(doc, first, timing)
    assert sorted(i for i, why in calls if why == "second pass, dense slow") == [0, 1, 2]
    assert [r["ratio_readings"][1] for r in doc["rows"]] == pytest.approx([2.0, 3.0, 4.0])
    assert doc["second_pass_timings"] == [2, 2, 2]


def test_the_session_20_table_names_an_unfinished_floor_run_and_leaves_it_out(tmp_path, monkeypatch, capsys):
    """Review R20 L1: _search_floor20.py saves its document while it runs, without noise_band or cost yet; the
    table's documented glob picks such a file up (was: KeyError 'noise_band')."""
    import json

    import _search_table20

    running = tmp_path / "search_session20_floor4.json"
    running.write_text(json.dumps({"started_utc": "20:00", "rows": [{"policy": {}, "measured_ms": 1.0}]}))
    monkeypatch.setattr(sys, "argv", ["_search_table20.py", str(running)])
    _search_table20.main()
    out = capsys.readouterr().out
    assert "search_session20_floor4.json: unfinished (no noise_band yet), left out" in out
    assert _search_table20.finished([str(running)]) == ([], [])
