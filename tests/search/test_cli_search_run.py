"""``deepslim search`` run to success on the command line (issue 14): the tiny digits net of the other search tests
(tests/search/_tiny.py, named as a ``file.py:factory`` model), a few random trials on one worker. Its ``--json``
output and ``OUT/search.json`` hold the issue's keys, the written ``OUT/recipe.yaml`` rebuilds the chosen channel
counts through ``deepslim compress``, and the same command again resumes the study without new trials.

Latency comes from the deterministic fakes the other search tests use (per-layer table and end-to-end timer), put
in place of the ONNX Runtime table the command builds: what is tested here is the command, not the runtime's clock
(tests/search/test_latency_measured.py times the real one), and it keeps the test to seconds.
"""

import importlib
import json
from pathlib import Path

import pytest
import yaml

import deepslim as ds
from deepslim.cli import main
from deepslim.search.latency import LatencyTable
from tests.search._tiny import fake_ms, params_ms

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")

MODEL = f"{Path(__file__).with_name('_tiny.py')}:trained_net"
TRIALS = 4
CANDIDATE_KEYS = {"policy", "measurement", "accuracy", "latency_ms", "archive_bytes"}


@pytest.fixture
def fake_latency(monkeypatch):
    """The command's ONNX Runtime table replaced by the fakes: 1 ms per million MACs per layer, 1 µs per parameter
    end to end; the arguments the command passes are recorded."""
    made = []

    def table(**kwargs):
        made.append(kwargs)
        return LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)

    monkeypatch.setattr(importlib.import_module("deepslim.search"), "LatencyTable", table)  # ds.search is the verb
    return made


def _search(capsys, out: Path) -> tuple[int, dict, str]:
    code = main(["search", MODEL, "--data", "digits", "--budget", "size=0.6x", "--objective", "accuracy,size,latency",
                 "--space", "prune", "--round-to", "2", "--trials", str(TRIALS), "--strategy", "random",
                 "--finetune-epochs", "0", "--top-k", "1", "--remeasure-repeats", "1", "--seed", "0",
                 "--out", str(out), "--json"])  # fmt: skip
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else {}, captured.err


def _trials(out: Path) -> list:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="deepslim-search", storage=storage).get_trials(deepcopy=False)


def test_search_runs_to_success_writes_the_issues_keys_a_recipe_compress_rebuilds_and_resumes(
        capsys, tmp_path, fake_latency):  # fmt: skip
    out = tmp_path / "s"
    code, doc, err = _search(capsys, out)
    assert code == 0, err
    assert fake_latency == [{"runtime": "onnxruntime", "threads": 1, "cache_dir": None}]
    written = json.loads((out / "search.json").read_text())
    assert written == doc  # --json prints what search.json holds
    assert {"budget", "dense", "uniform", "best", "pareto", "recipe", "latency_table", "cost"} <= doc.keys()
    assert [(b["metric"], b["value"], b["relative"]) for b in doc["budget"]] == [("size", 0.6, True)]

    dense, best = doc["dense"], doc["best"]
    for name in ("dense", "uniform", "best"):
        assert doc[name].keys() >= CANDIDATE_KEYS, name
        assert doc[name]["measurement"]["accuracy"] == doc[name]["accuracy"]
        assert 0.0 < doc[name]["accuracy"] <= 1.0 and doc[name]["latency_ms"] > 0 and doc[name]["archive_bytes"] > 0
    assert best["archive_bytes"] <= doc["limits"]["size"] < dense["archive_bytes"]  # the budget made it prune
    assert doc["pareto"] and all(c.keys() >= CANDIDATE_KEYS for c in doc["pareto"])
    table = doc["latency_table"]
    assert {"error_p90", "kendall_tau", "mac_proxy_kendall_tau"} <= table.keys()
    assert table["points"] >= 2 and table["error_p90"] >= 0.0
    assert -1.0 <= table["kendall_tau"] <= 1.0 and -1.0 <= table["mac_proxy_kendall_tau"] <= 1.0
    cost = doc["cost"]
    assert cost["trials"] == TRIALS and cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["energy_kwh"] > 0
    assert len(_trials(out)) == TRIALS

    # the recipe is an ordinary one: deepslim compress rebuilds the searched channel counts layer by layer
    assert doc["recipe"] == str(out / "recipe.yaml")
    keep = best["policy"]["keep"]
    assert keep != dense["policy"]["keep"]
    assert main(["compress", MODEL, "--recipe", doc["recipe"], "--out", str(tmp_path / "run"), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    # no fine-tuning: BN re-estimation; a size budget: the archive it judged is written (.dsz)
    assert [s["stage"] for s in stages] == ["input", "prune", "recalibrate", "encode"]
    assert Path(stages[-1]["model_file"]).suffix == ".dsz" and Path(stages[-1]["model_file"]).is_file()
    assert "device" not in yaml.safe_load(Path(doc["recipe"]).read_text())  # no --device given: none named
    rebuilt = ds.decode(Path(stages[-1]["model_file"]).read_bytes(), arch=MODEL)
    assert {name: rebuilt.get_submodule(name).out_channels for name in keep} == keep

    # the same command again resumes the finished study: no trial beyond the requested count
    code, again, err = _search(capsys, out)
    assert code == 0, err
    assert len(_trials(out)) == TRIALS and again["cost"]["trials"] == TRIALS
    assert [t["trial"] for t in again["trials"]] == [t["trial"] for t in doc["trials"]]
    assert again["best"]["policy"] == best["policy"]


def test_progress_names_trials_over_a_latency_budget_not_judged(tmp_path, capsys, fake_latency):
    """With a proxy fine-tune and a latency-only budget, a trial over the budget is neither recovered nor scored
    (its accuracy is None): the progress line says "n/a" for it instead of failing to format a number."""
    code = main(["search", MODEL, "--data", "digits", "--budget", "latency=0.6x", "--objective", "accuracy",
                 "--space", "prune", "--round-to", "2", "--trials", "6", "--strategy", "random", "--proxy-steps", "1",
                 "--finetune-epochs", "1", "--top-k", "1", "--remeasure-repeats", "1", "--seed", "0",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    unjudged = [line for line in err.splitlines() if "(over budget, not recovered)" in line]
    assert unjudged and all("accuracy n/a," in line for line in unjudged)
    judged = [line for line in err.splitlines() if line.startswith("trial ") and "over budget" not in line]
    assert judged and all("accuracy n/a" not in line for line in judged)


def test_the_strategy_help_names_every_strategy():
    from deepslim.cli import build_parser
    from deepslim.search.strategies import STRATEGIES

    search_parser = build_parser()._subparsers._group_actions[0].choices["search"]  # type: ignore[union-attr]
    (action,) = [a for a in search_parser._actions if "--strategy" in a.option_strings]
    assert all(name in action.help.replace(",", " ").split() for name in STRATEGIES), action.help


def test_repair_on_the_command_line_repairs_over_budget_trials_onto_later_slots(tmp_path, capsys, fake_latency):
    """``--repair``: a sampled trial over the latency budget hands its repaired policy to a later slot; the progress
    line names the trial it repairs, and the repair is within the budget; ``--repair`` with workers is refused."""
    args = ["search", MODEL, "--data", "digits", "--budget", "latency=0.6x", "--objective", "accuracy",
            "--space", "prune", "--round-to", "2", "--trials", "8", "--strategy", "random", "--proxy-steps", "1",
            "--finetune-epochs", "1", "--top-k", "1", "--remeasure-repeats", "1", "--seed", "0"]  # fmt: skip
    code = main([*args, "--repair", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    repairs = [line for line in err.splitlines() if "(repair of trial " in line]
    assert repairs and all("over budget" not in line for line in repairs)
    assert main([*args, "--repair", "--workers", "2", "--out", str(tmp_path / "w")]) == 2
    assert "repair" in capsys.readouterr().err
