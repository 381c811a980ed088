"""``deepslim search --tie-int8 N``: the space the search gets ties its int8 choices by name prefix; a bad N is a
usage error before anything loads."""

import importlib

import pytest

from deepslim.cli import main
from deepslim.errors import ConfigError


def test_tie_int8_reaches_the_search_as_the_spaces_tied_groups(capsys, tmp_path, monkeypatch):
    search_pkg = importlib.import_module("deepslim.search")  # the package (deepslim.search is also the function)
    seen = {}

    def fake_search(model, data, space, *args, **kwargs):
        seen["space"] = space
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(search_pkg, "search", fake_search)
    argv = ["search", "resnet20", "--data", "digits", "--space", "prune,int8", "--budget", "latency=0.5x",
            "--trials", "1", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main([*argv, "--tie-int8", "1"]) == 2 and "stopped by the test" in capsys.readouterr().err
    tied = seen["space"]
    assert main(argv) == 2
    alone = seen["space"]
    assert alone.tied == () and len([k for k in alone.choices() if k.startswith("int8:")]) == len(alone.int8_layers)
    assert {t[0].split(".")[0] for t in tied.tied} == {"layer1", "layer2", "layer3"}  # one choice per stage
    assert all(len({n.split(".")[0] for n in t}) == 1 for t in tied.tied)
    assert len([k for k in tied.choices() if k.startswith("int8:")]) == len(alone.int8_layers) - sum(
        len(t) - 1 for t in tied.tied)


def test_a_negative_tie_int8_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "lenet5", "--data", "digits", "--out", str(tmp_path / "s"), "--tie-int8", "-1"])
    assert exit_.value.code == 2 and "--tie-int8" in capsys.readouterr().err


def test_tie_int8_with_a_space_without_int8_is_a_one_line_usage_error(capsys, tmp_path):
    argv = ["search", "lenet5", "--data", "digits", "--space", "prune", "--budget", "latency=0.5x", "--trials", "1",
            "--out", str(tmp_path / "s"), "--tie-int8", "1"]  # fmt: skip
    assert main(argv) == 2
    said = capsys.readouterr().err.strip()
    assert "no int8" in said and "tie_int8=1" in said and len(said.splitlines()) == 1
    assert not (tmp_path / "s").exists()  # refused before the search starts
