"""A recipe's ``nproc``: data-parallel train/finetune/distill stages (one real torchrun launch, through ``deepslim
compress --nproc 2``), recorded in the run's recipe.yaml, round-tripped as data, and refused when it cannot work."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

import deepslim as ds
from deepslim.cli import main
from deepslim.pipeline import Recipe, TrainStage, load_for_data
from tests.pipeline._ddp import reference_data


def _status(argv):
    try:
        return main(["-q", *argv])
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def test_nproc_round_trips_through_json_and_yaml_and_defaults_to_one(tmp_path):
    recipe = Recipe(stages=(TrainStage(epochs=2),), data="digits", nproc=2)
    doc = recipe.to_dict()
    assert doc["nproc"] == 2 and Recipe.from_dict(json.loads(json.dumps(doc))) == recipe
    assert ds.load_recipe(recipe.save(tmp_path / "r.yaml")) == recipe
    assert Recipe.from_dict({**doc, "nproc": 3}).fingerprint() != recipe.fingerprint()
    older = ds.load_recipe({"stages": [{"train": {"epochs": 1}}]})  # a recipe written before nproc existed
    assert older.nproc == 1 and older.to_dict()["nproc"] == 1


@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_a_bad_nproc_is_refused_by_name(bad):
    with pytest.raises(ds.ConfigError, match=r"nproc must be a positive number of processes"):
        ds.load_recipe({"nproc": bad, "stages": [{"train": {"epochs": 1}}]})


def test_settings_under_which_nproc_cannot_work_are_refused_before_the_first_stage(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - train: {epochs: 1}\n")
    base = ["compress", "lenet5", "-O", "input_size=8", "--data", "digits", "--recipe", str(recipe)]
    assert _status([*base, "--out", str(tmp_path / "a"), "--nproc", "3"]) == 2  # 64 over 3 processes
    assert "batch of 64 does not split evenly over nproc 3" in capsys.readouterr().err
    assert _status([*base, "--out", str(tmp_path / "b"), "--nproc", "0"]) == 2
    assert "--nproc: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(ds.ConfigError, match="load the data from its spec"):  # a loaded bundle cannot travel
        ds.run_recipe(Recipe(stages=(TrainStage(epochs=1),), nproc=2), tmp_path / "c",
                      model=ds.create_model("lenet5", input_size=8), data=ds.load_data("digits"))  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name != "r.yaml"]  # nothing started, nothing written


def test_compress_with_nproc_2_trains_data_parallel_like_one_process_and_records_it(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\nstages:\n  - train: {epochs: 2}\n")
    run = tmp_path / "run"
    argv = ["compress", "lenet5", "-O", "input_size=8", "--data", "digits", "--recipe", str(recipe), "--out",
            str(run), "--nproc", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["nproc"] == 2  # the recipe as run
    assert ds.load_recipe(run / "recipe.yaml").nproc == 2 and (run / "report.html").is_file()
    trained = ds.decode((run / "stages" / "01-train.dsz").read_bytes())

    # one process: the run's data (seeded by the recipe) and initial weights, the train stage's seed (recipe
    # seed + its index 1), fed the global batches the two ranks took together
    data = ds.load_data("digits", seed=3)
    torch.manual_seed(3)
    reference = load_for_data("lenet5", data, options={"input_size": 8})
    ds.fit(reference, reference_data(data, nproc=2, seed=4), epochs=2, seed=4, threads=1)
    gap = max((p - q).abs().max().item() for p, q in zip(trained.parameters(), reference.parameters(), strict=True))
    assert gap < 1e-5, f"largest parameter difference {gap:.2e}"
    assert stages[1]["accuracy"] > stages[0]["accuracy"] + 0.3  # it trained (from chance)


def test_run_recipe_through_the_public_api_still_writes_report_html(tmp_path):
    """The report is a hook the report package registers (the pipeline does not import it); ``import deepslim``
    alone must register it, so this runs in a fresh interpreter."""
    code = ("import sys, deepslim as ds\n"
            "r = ds.run_recipe(ds.load_recipe({'stages': ['encode']}), sys.argv[1], model='lenet300', data='digits')\n"
            "print(r.artifacts.get('report'))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "report.html").is_file()
    assert done.stdout.strip() == str(tmp_path / "run" / "report.html")
