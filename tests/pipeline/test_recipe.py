"""Recipes: checked before anything runs (errors name the stage and key), run with every stage measured and saved."""

import json

import pytest

import deepslim as ds
from deepslim.pipeline import list_recipes
from tests.pipeline import toy

TINY = {
    "model": "lenet300", "data": "digits", "device": "cortex-m7", "seed": 0,
    "stages": [
        {"train": {"epochs": 3, "lr": 0.003}},
        {"prune": {"sparsity": 0.8, "scope": "global", "epochs": 1}},
        {"cluster": {"bits": {"default": 4, "fc3": 6}, "share_bias": True, "epochs": 1}},
        {"distill": {"epochs": 1, "lr": 0.0005}},
        "encode",
        {"export": {"benchmark": False}},
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"trian": {"epochs": 1}}], "stage 1: unknown stage 'trian'"),
        ([{"train": {"epochs": 1}}, {"prune": {"sparsty": 0.9}}], "stage 2 (prune): unknown key 'sparsty'"),
        ([{"train": {}}], "stage 1 (train): missing required key 'epochs'"),
        ([{"prune": {"schedule": "sometimes"}}], "stage 1 (prune): schedule must be one of"),
        ([{"cluster": {"bits": 12}}], "stage 1 (cluster): bits must be an integer from 1 to 8"),
        ([{"quantize": {"bits": {"default": 8, "re:[": 4}}}], "stage 1 (quantize): override pattern"),
        ([{"train": {"epochs": -1}}], "stage 1 (train): epochs must be a non-negative integer"),
        ([{"encode": {"huffman": "yes"}}], "stage 1 (encode): huffman must be true or false"),
        ([{"train": {"epochs": 1}, "prune": {}}], "stage 1: each stage is one mapping"),
        ([], "'stages' must be a non-empty list"),
    ],
)
def test_recipe_errors_name_the_stage_and_key(stages, message):
    with pytest.raises(ds.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ds.load_recipe({"stages": stages})


def test_recipe_files(tmp_path):
    assert {"deep-compression-lenet5", "deep-compression-lenet300"} <= set(list_recipes())
    for name in list_recipes():
        recipe = ds.load_recipe(name)
        assert recipe.model and recipe.data and recipe.stages[-1].kind == "encode"
    bad = tmp_path / "r.yaml"
    bad.write_text("stages: [train: {epochs: 1}\n")
    with pytest.raises(ds.ConfigError, match="not valid YAML"):
        ds.load_recipe(bad)
    with pytest.raises(ds.ConfigError, match="does not exist"):
        ds.load_recipe(tmp_path / "missing.yaml")
    bad.write_text("stages: [{train: {epochs: 1}}]\nmodle: lenet5\n")
    with pytest.raises(ds.ConfigError, match="unknown top-level key 'modle'"):
        ds.load_recipe(bad)


def test_run_measures_and_saves_every_stage(tmp_path):
    out = tmp_path / "run"
    result = ds.run_recipe(ds.load_recipe(TINY), out)
    doc = json.loads((out / "metrics.json").read_text())
    kinds = [m["stage"] for m in doc["stages"]]
    assert kinds == ["input", "train", "prune", "cluster", "distill", "encode", "export"]
    for m in doc["stages"]:
        assert {"accuracy", "params", "nonzero_params", "macs", "archive_bytes", "estimated_energy_uj",
                "estimated_latency_ms", "model_file", "seconds"} <= set(m)  # fmt: skip
        assert (tmp_path / "run" / "stages").is_dir() and (out / "stages" / m["model_file"].split("/")[-1]).exists()
    train, prune, cluster, final = (result.stage(k) for k in ("train", "prune", "cluster", "export"))
    assert train["accuracy"] > 0.85 and final["accuracy"] > 0.8
    assert prune["nonzero_params"] < 0.25 * train["params"]
    assert train["archive_bytes"] > 3 * prune["archive_bytes"] > 3 * cluster["archive_bytes"]
    # the archive restores the final model exactly; the exported ONNX file agrees with it
    decoded = ds.decode((out / "model.dsz").read_bytes())
    data = ds.load_data("digits", seed=0)
    assert ds.evaluate(decoded, data).accuracy == final["accuracy"]
    assert (out / "model.onnx").is_file() and float(result.artifacts["onnx_max_abs_error"]) < 1e-3
    assert ds.load_recipe(out / "recipe.yaml").stages[2].kind == "cluster"
    assert not list(out.rglob(".*tmp*"))  # no temporary files left
    with pytest.raises(ds.ConfigError, match="already holds a run"):
        ds.run_recipe(ds.load_recipe(TINY), out)


def test_failing_stage_leaves_the_completed_ones(tmp_path, monkeypatch):
    monkeypatch.setitem(toy.TRIP, "armed", True)
    recipe = ds.load_recipe({"model": "lenet300", "data": "digits", "stages": [
        {"train": {"epochs": 1}}, {"toyscale": {"factor": 0.5}}, "encode"]})  # fmt: skip
    with pytest.raises(toy.Interrupted):
        ds.run_recipe(recipe, tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["stage"] for m in doc["stages"]] == ["input", "train"] and doc["status"] == "failed"
    assert "Interrupted: the toy technique was told to fail" in doc["artifacts"]["error"]
    assert not list((tmp_path / "run").rglob(".*tmp*"))


def test_recipe_unmatched_override_and_missing_model(tmp_path):
    with pytest.raises(ds.ConfigError, match="names no model"):
        ds.run_recipe(ds.load_recipe({"data": "digits", "stages": ["encode"]}), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    recipe = ds.load_recipe({"model": "lenet300", "data": "digits", "device": "nope", "stages": ["encode"]})
    with pytest.raises(ds.UnknownNameError, match="nope"):
        ds.run_recipe(recipe, tmp_path / "b")
    assert not (tmp_path / "b").exists()
