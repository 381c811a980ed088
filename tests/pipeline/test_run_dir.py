"""Run directories: replaced as a whole (never a mix of two runs), left intact by a failed run, never left with
temporary files; the data's preprocessing recorded beside the model."""

import dataclasses
import json
import os

import pytest
import yaml

import deepslim as ds
from deepslim._io import atomic_dir, atomic_path
from deepslim.data import Preprocessing
from deepslim.models._registry import PREPROCESSING_ATTR
from deepslim.pipeline._pairing import attach_preprocessing
from deepslim.pipeline.run import check_run_dir

ENCODE = {"model": "lenet300", "data": "digits", "stages": ["encode"]}
EXPORT = {"model": "lenet300", "data": "digits", "stages": ["encode", {"export": {"benchmark": False}}]}


def hidden(path):
    """Temporary files and directories left anywhere under ``path``."""
    return [p for p in path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_overwrite_replaces_the_whole_run_and_leaves_no_file_of_the_old_one(tmp_path):
    out = tmp_path / "run"
    ds.run_recipe(ds.load_recipe(EXPORT), out)
    assert (out / "model.onnx").is_file() and (out / "stages" / "02-export.dsz").is_file()
    result = ds.run_recipe(ds.load_recipe(ENCODE), out, overwrite=True)
    assert not (out / "model.onnx").exists() and not (out / "stages" / "02-export.dsz").exists()
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["00-input.dsz", "01-encode.dsz"]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["status"] == "complete" and [m["stage"] for m in doc["stages"]] == ["input", "encode"]
    assert "onnx" not in doc["artifacts"] and result.artifacts["archive"] == str(out / "model.dsz")
    assert all(m["model_file"].startswith(str(out)) for m in doc["stages"])  # paths name the final directory
    assert hidden(tmp_path) == []


def test_a_failed_overwrite_leaves_the_earlier_run_as_it_was(tmp_path):
    out = tmp_path / "run"
    ds.run_recipe(ds.load_recipe(ENCODE), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    failing = ds.load_recipe({"model": "lenet300", "data": "digits", "stages": [
        {"distill": {"epochs": 1, "teacher": str(tmp_path / "missing.pt")}}]})  # fmt: skip
    with pytest.raises(ds.ModelLoadError, match="does not exist"):
        ds.run_recipe(failing, out, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert hidden(tmp_path) == []


def test_the_run_records_the_datas_preprocessing_and_what_was_run(tmp_path):
    out = tmp_path / "run"
    result = ds.run_recipe(ds.load_recipe({"stages": ["encode"]}), out, model="lenet300", data="digits",
                           model_options={"hidden": [32, 16]})  # fmt: skip
    expected = ds.load_data("digits", seed=0).preprocessing.to_dict()
    assert expected["std"][0] != 1.0  # the digits are standardised: there is something to record
    assert getattr(result.model, PREPROCESSING_ATTR) == expected
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["preprocessing"] == expected
    saved = json.loads((out / "preprocessing.json").read_text())
    assert Preprocessing.from_dict({k: saved[k] for k in ("kind", "mean", "std", "channel_dim")}).to_dict() == expected
    as_run = yaml.safe_load((out / "recipe.yaml").read_text())
    assert (as_run["model"], as_run["data"], as_run["model_options"]) == ("lenet300", "digits", {"hidden": [32, 16]})
    assert as_run["context"]["preprocessing"] == expected
    again = ds.load_recipe(out / "recipe.yaml")  # the run's recipe.yaml runs again as it is
    assert again.model == "lenet300" and again.data == "digits" and again.model_options == {"hidden": [32, 16]}
    assert result.metrics[0]["params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10  # the options were used


def test_a_model_keeps_the_preprocessing_it_was_trained_with_and_gets_the_datas_otherwise():
    data = ds.load_data("digits", seed=0)
    fresh = ds.load_model("lenet300", in_features=64)
    assert attach_preprocessing(fresh, data) == getattr(fresh, PREPROCESSING_ATTR) == data.preprocessing.to_dict()
    trained_elsewhere = {"kind": "standardize", "mean": [0.5], "std": [0.25], "channel_dim": 1}
    setattr(fresh, PREPROCESSING_ATTR, trained_elsewhere)
    assert attach_preprocessing(fresh, data) == trained_elsewhere == getattr(fresh, PREPROCESSING_ATTR)
    raw = dataclasses.replace(data, preprocessing=None)
    assert attach_preprocessing(ds.load_model("lenet300", in_features=64), raw) is None


def test_a_model_given_on_the_command_line_does_not_take_the_recipes_model_settings(tmp_path):
    recipe = ds.load_recipe({"model": "lenet5", "model_options": {"padding": 2}, "weights": "nowhere.pt",
                             "data": "digits", "stages": ["encode"]})  # fmt: skip
    result = ds.run_recipe(recipe, tmp_path / "run", model="lenet300")  # lenet300 has no dropout option
    assert result.metrics[0]["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    with pytest.raises(ds.ModelLoadError, match="nowhere.pt"):  # the recipe's own model does take them
        ds.run_recipe(recipe, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()  # a bad model is refused before the run directory is made


def test_run_directories_that_may_not_be_replaced_are_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ds.ConfigError, match="is a file"):
        check_run_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(ds.ConfigError, match="holds files but no deepslim run"):
        ds.run_recipe(ds.load_recipe(ENCODE), tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    assert check_run_dir(tmp_path / "empty", overwrite=False) == tmp_path / "empty"
    (tmp_path / "empty" / "metrics.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(ds.ConfigError, match="current directory"):
        check_run_dir(".", overwrite=True)


def test_atomic_dir_replaces_only_on_success_and_cleans_up_on_interrupt(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as work:
        (work / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert sorted(os.listdir(dest)) == ["old.txt"] and hidden(tmp_path) == []
    with atomic_dir(dest) as work:
        assert work.name == "d" and work.parent != tmp_path  # the final name, inside a hidden sibling
        (work / "new.txt").write_text("new")
    assert sorted(os.listdir(dest)) == ["new.txt"] and hidden(tmp_path) == []
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit), atomic_dir(fresh, keep_partial=True) as work:
        (work / "part.txt").write_text("done so far")
        raise SystemExit(143)
    assert (fresh / "part.txt").read_text() == "done so far" and hidden(tmp_path) == []  # nothing was replaced
    with pytest.raises(ValueError), atomic_dir(fresh, keep_partial=True) as work:
        raise ValueError
    assert (fresh / "part.txt").is_file() and hidden(tmp_path) == []  # a failure never replaces an earlier result


def test_atomic_path_removes_its_temporary_file_on_interrupt(tmp_path):
    dest = tmp_path / "m.dsz"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert dest.read_bytes() == b"old" and hidden(tmp_path) == []


def test_overwrite_never_replaces_a_directory_deepslim_did_not_write(tmp_path):
    project = tmp_path / "project"  # e.g. a DVC project: its own metrics.json at the root
    project.mkdir()
    (project / "metrics.json").write_text('{"auc": 0.9}')
    (project / "train.py").write_text("keep")
    with pytest.raises(ds.ConfigError, match="holds files but no deepslim run"):
        ds.run_recipe(ds.load_recipe(ENCODE), project, overwrite=True)
    assert sorted(os.listdir(project)) == ["metrics.json", "train.py"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ds.ConfigError, match="symbolic link or a mount point"):
        check_run_dir(tmp_path / "link", overwrite=True)


def test_a_finished_run_that_cannot_be_moved_into_place_is_kept(tmp_path, monkeypatch):
    import deepslim._io as io

    def fail(src, dest):
        raise PermissionError("read-only")

    monkeypatch.setattr(io, "_replace_dir", fail)
    with pytest.raises(ds.DeepSlimError, match="could not replace .* it is kept in") as info, \
            atomic_dir(tmp_path / "d") as work:  # fmt: skip
        (work / "result.txt").write_text("hours of work")
    kept = str(info.value).rsplit("kept in ", 1)[1]
    assert (io.Path(kept) / "result.txt").read_text() == "hours of work"


def test_a_signal_during_the_swap_waits_until_both_renames_are_done(tmp_path, monkeypatch):
    import signal

    import deepslim._io as io

    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    real_replace = io.os.replace

    def replace_then_signal(a, b):
        real_replace(a, b)
        os.kill(os.getpid(), signal.SIGINT)  # arrives between the two renames

    monkeypatch.setattr(io.os, "replace", replace_then_signal)
    # Ctrl-C's usual handler, even where the suite runs with SIGINT ignored (a background job, nohup)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as work:
            (work / "new.txt").write_text("new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(os.listdir(dest)) == ["new.txt"] and hidden(tmp_path) == []  # swapped whole, nothing left over


def test_a_second_writer_of_the_same_output_fails_at_once_and_the_first_finishes(tmp_path):
    import multiprocessing

    out = tmp_path / "run"
    ctx = multiprocessing.get_context("spawn")
    with atomic_dir(out) as work:
        (work / "first.txt").write_text("first")
        other = ctx.Process(target=_write_into, args=(str(out), str(tmp_path / "verdict")))
        other.start()
        other.join(60)
        assert other.exitcode == 0
        verdict = (tmp_path / "verdict").read_text()
        assert verdict.startswith("DeepSlimError: another process is writing") and str(out) in verdict
    assert sorted(p.name for p in out.iterdir()) == ["first.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the lock file is gone too
    with atomic_dir(out) as work:  # released: the next writer gets it
        (work / "second.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["second.txt"]


def _write_into(out: str, verdict: str) -> None:
    from pathlib import Path

    try:
        with atomic_dir(out) as work:
            (work / "second.txt").write_text("second")
        Path(verdict).write_text("wrote")
    except ds.DeepSlimError as exc:
        Path(verdict).write_text(f"{type(exc).__name__}: {exc}")
