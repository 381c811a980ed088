"""``deepslim search`` refuses what it can before it loads any data or model (issue 14's audit, session 21): a
trial count below one (at argparse time, like ``--workers``), a missing Optuna, and a default journal in ``--out``
that cannot be written (as an explicit ``--storage`` already was). The model and data named here do not exist, so
any of these checks that came after loading would be reported as "unknown model/data" instead."""

import sys

import pytest

from deepslim.cli import main


def run(capsys, *argv):
    code = main(["search", "no-such-model", "--data", "no-such-data", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_a_trial_count_below_one_is_a_usage_error(capsys, tmp_path, trials):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "--out", str(tmp_path / "s"), "--trials", trials)
    assert exit_.value.code == 2
    assert f"--trials: expected a whole number >= 1, got '{trials}'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_missing_optuna_is_reported_before_loading_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    code, out, err = run(capsys, "--out", str(tmp_path / "s"), "--budget", "latency=0.5x")
    assert code == 2 and out == ""
    assert "searching needs Optuna: pip install 'deepslim[search]'" in err and "no-such" not in err
    assert not (tmp_path / "s").exists()


def test_an_out_where_the_default_journal_cannot_be_written_fails_before_loading_anything(capsys, tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    (tmp_path / "afile").write_text("")
    code, out, err = run(capsys, "--out", str(tmp_path / "afile" / "sub"))
    assert code == 2 and out == ""
    assert f"cannot open the journal file {tmp_path / 'afile' / 'sub' / 'study.journal'}: Not a directory" in err
    assert "no-such" not in err


def test_the_early_journal_check_leaves_nothing_behind(capsys, tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    code, _, err = run(capsys, "--out", str(tmp_path / "new" / "deeper"))
    assert code == 2 and "no-such" in err  # refused at the model or data, after the journal check passed
    assert list(tmp_path.iterdir()) == []  # the check made the directories and the file, then removed them
