"""The report's summary cards and labels, rendered from small hand-written run directories: a change is coloured by
whether it is good for that metric, every value carries its unit, and runs whose directories share a name are told
apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepslim.report import write_report
from deepslim.report.html import change, unique_labels


def _stage(index: int, stage: str, **values: float) -> dict:
    base = {"index": index, "stage": stage, "accuracy": 0.9, "params": 1000, "nonzero_params": 1000, "macs": 5000,
            "archive_bytes": 4000, "estimated_latency_ms": 2.0, "estimated_energy_uj": 3.0}  # fmt: skip
    return {**base, **values}


def _run(path: Path, *stages: dict) -> Path:
    path.mkdir(parents=True)
    doc = {"format": "deepslim-run", "version": 2, "model": "lenet5", "data": "digits", "stages": list(stages)}
    (path / "metrics.json").write_text(json.dumps(doc))
    (path / "recipe.yaml").write_text("stages: [encode]\n")
    return path


def _cards(page: str) -> dict[str, tuple[str, str, str]]:
    """{card label: (value, change, verdict class)} of every summary card on the page."""
    found = re.findall(r'<div class="card"><div class="k">([^<]*)</div><div class="v">([^<]*)</div>'
                       r'<div class="r ([a-z]+)">([^<]*)</div></div>', page)  # fmt: skip
    return {k: (v, text, verdict) for k, v, verdict, text in found}


def test_a_large_accuracy_loss_is_drawn_as_worse_and_a_smaller_archive_as_better(tmp_path):
    run = _run(tmp_path / "run", _stage(0, "train", accuracy=0.95),
               _stage(1, "prune", accuracy=0.575, archive_bytes=1000, estimated_latency_ms=3.0, macs=5000))
    write_report([run], tmp_path / "r.html")
    cards = _cards((tmp_path / "r.html").read_text())
    assert cards["test accuracy"] == ("95.00% → 57.50%", "-37.50 pp", "worse")
    assert cards["bytes on disk (.dsz)"] == ("4,000 B → 1,000 B", "4.00× smaller", "better")
    assert cards["latency (estimated)"] == ("2 ms → 3 ms", "1.50× larger", "worse")
    assert cards["MACs"] == ("5,000 MACs → 5,000 MACs", "unchanged", "same")
    assert cards["energy (estimated)"][0] == "3 µJ → 3 µJ"
    assert cards["nonzero parameters"][0] == "1,000 params → 1,000 params"


def test_the_colour_of_each_verdict_is_green_red_or_grey():
    from deepslim.report.html import CSS

    assert ".card .r.better{color:#1a7f37}" in CSS and ".card .r.worse{color:#cf222e}" in CSS
    assert re.search(r"\.card \.r\{[^}]*color:#57606a", CSS)  # plain text: neither good nor bad


@pytest.mark.parametrize("before,after,better,expected", [
    (0.9, 0.95, "higher", ("+5.00 pp", "better")),
    (0.95, 0.575, "higher", ("-37.50 pp", "worse")),
    (0.9, 0.9, "higher", ("+0.00 pp", "same")),
    (4.0, 2.0, "lower", ("2.00× smaller", "better")),
    (2.0, 4.0, "lower", ("2.00× larger", "worse")),
    (2.0, 0.0, "lower", ("down to 0", "better")),
    (0.0, 2.0, "lower", ("up from 0", "worse")),
    (None, 2.0, "lower", ("", "same")),
])  # fmt: skip
def test_change_follows_the_direction_that_is_good_for_the_metric(before, after, better, expected):
    assert change(before, after, better) == expected


def test_runs_whose_directories_share_a_name_get_labels_that_tell_them_apart(tmp_path):
    a = _run(tmp_path / "lenet" / "run", _stage(0, "train"), _stage(1, "prune", accuracy=0.8))
    b = _run(tmp_path / "resnet" / "run", _stage(0, "train"), _stage(1, "prune", accuracy=0.7))
    res = write_report([a, b], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<h2>lenet/run</h2>" in page and "<h2>resnet/run</h2>" in page
    assert "2 run(s): lenet/run, resnet/run" in page and res.charts >= 1
    assert unique_labels([a, b]) == ["lenet/run", "resnet/run"]
    assert unique_labels([a, tmp_path / "other"]) == ["run", "other"]  # the plain name where it is enough
    assert unique_labels([a, a]) == ["run (#1)", "run (#2)"]  # the same directory twice
    deep = [tmp_path / "x" / "same" / "run", tmp_path / "y" / "same" / "run"]
    assert unique_labels(deep) == ["x/same/run", "y/same/run"]


def test_a_problem_names_the_run_by_its_label(tmp_path):
    a = _run(tmp_path / "a" / "run", _stage(0, "train"))
    b = _run(tmp_path / "b" / "run", _stage(0, "train"))
    (b / "recipe.yaml").unlink()
    res = write_report([a, b], tmp_path / "r.html")
    assert "b/run: recipe.yaml is missing" in res.problems and "a/run: recipe.yaml is missing" not in res.problems
    assert "b/run: recipe.yaml is missing" in (tmp_path / "r.html").read_text()
