"""Recipes are data: built in code or read from YAML, they round-trip through plain JSON and YAML; older files still
load (or name the key that changed); mistakes are caught against the model before the first stage; the run's
recipe.yaml reproduces the run; an interrupted run resumes from its last finished stage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import deepslim as ds
from deepslim.cli import main
from deepslim.pipeline import (
    DistillStage,
    EncodeStage,
    ExportStage,
    FinetuneStage,
    Recipe,
    TechniqueStage,
    TrainStage,
    list_recipes,
)
from tests.pipeline import toy

ROOT = Path(__file__).resolve().parents[2]
CODE = Recipe(
    model="lenet300", data="digits", seed=3, device="rpi4", model_options={"hidden": [32, 16]}, name="code",
    stages=(TrainStage(epochs=2, lr=0.003, optimizer="sgd"),
            TechniqueStage(config=ds.MagnitudePruneConfig(sparsity=0.8, scope="global", overrides={"fc1": 0.5}),
                           epochs=2, schedule="gradual"),
            TechniqueStage(config=ds.MagnitudePruneConfig(sparsity=0.9), schedule="iterative", rounds=2, epochs=1),
            TechniqueStage(config=ds.KMeansConfig(bits=4, overrides={"re:fc[12]": 5, "fc3": None}), epochs=1),
            DistillStage(epochs=1, teacher="lenet300", kd=ds.KDConfig(temperature=2.0, hints={"fc1": "fc1"})),
            FinetuneStage(epochs=1),
            TechniqueStage(config=ds.LinearQuantConfig(bits=8, calibration="mse"), epochs=1),
            EncodeStage(huffman=False),
            TechniqueStage(config=ds.SVDConfig(rank_ratio=0.5)),
            ExportStage(benchmark=False, threads=1)),
)  # fmt: skip


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


def test_a_recipe_built_in_code_round_trips_through_json_and_yaml(tmp_path):
    doc = CODE.to_dict()
    assert Recipe.from_dict(json.loads(json.dumps(doc))) == CODE  # plain JSON, nothing lost
    assert doc["stages"][1] == {"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "global",
                                          "overrides": {"fc1": 0.5}, "epochs": 2, "lr": 0.001,
                                          "schedule": "gradual"}}  # fmt: skip
    assert CODE.stages[3].lr == 1e-4 and CODE.stages[6].config.qat is False  # the technique's default, as given
    saved = CODE.save(tmp_path / "r.yaml", context={"note": "ignored when read"})
    assert ds.load_recipe(saved) == CODE and yaml.safe_load(saved.read_text())["context"] == {"note": "ignored "
                                                                                                     "when read"}
    assert not [p for p in tmp_path.iterdir() if p.name != "r.yaml"]  # written atomically: no temporary left
    other = Recipe.from_dict({**doc, "seed": 4})
    assert CODE.fingerprint() == Recipe.from_dict(doc).fingerprint() != other.fingerprint()


@pytest.mark.parametrize("source", ["builtin", "docs", "tests"])
def test_every_shipped_documented_and_tested_recipe_loads_and_round_trips(source):
    if source == "builtin":
        recipes = [ds.load_recipe(name) for name in list_recipes()]
    elif source == "docs":
        blocks = [b for p in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"] for b in yaml_blocks(p)]
        recipes = [ds.load_recipe(yaml.safe_load(b)) for b in blocks if "stages:" in b]
    else:
        from tests.pipeline.test_recipe import TINY
        from tests.report.test_report import RECIPE

        recipes = [ds.load_recipe(TINY), ds.load_recipe(RECIPE)]
    assert recipes
    for recipe in recipes:
        again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()))
        assert again == recipe and again.to_dict() == recipe.to_dict()


def test_older_recipe_keys_load_as_the_one_form_or_name_the_key_that_changed():
    recipe = ds.load_recipe({"stages": [
        {"cluster": {"bits": {"default": 5, "fc3": 6}}}, {"quantize": {"type": "bf16"}},
        {"quantize": {"type": "linear", "bits": 8, "epochs": 1}},
        {"quantize": {"type": "pow2", "bits": 3}}]})  # fmt: skip
    kmeans, half, linear, pow2 = recipe.stages
    assert kmeans.config == ds.KMeansConfig(bits=5, overrides={"fc3": 6})
    assert (half.technique, half.config) == ("half", ds.Float16Config(dtype="bf16"))
    assert linear.config.qat is True  # a fine-tuned linear quantization learned its scales, as before
    assert pow2.config == ds.PowerOfTwoConfig(bits=3)
    assert recipe.to_dict()["stages"][0]["cluster"]["overrides"] == {"fc3": 6}  # written in the one form
    with pytest.raises(ds.ConfigError, match="stage 1 \\(quantize\\): 'type' is the older name of 'method'"):
        ds.load_recipe({"stages": [{"quantize": {"type": "linear", "method": "linear"}}]})
    with pytest.raises(ds.ConfigError, match="stage 1 \\(cluster\\): per-layer bits go in 'overrides'"):
        ds.load_recipe({"stages": [{"cluster": {"bits": {"default": 4, "fc1": 5}, "overrides": {"fc2": 6}}}]})
    with pytest.raises(ds.ConfigError, match="method 'kmeans' is a cluster technique: write it as '- cluster:"):
        ds.load_recipe({"stages": [{"quantize": {"method": "kmeans"}}]})
    with pytest.raises(ds.ConfigError, match="schedule 'gradual' prunes while training: it works with magnitude"):
        ds.load_recipe({"stages": [{"prune": {"method": "channel", "ratio": 0.5, "schedule": "gradual"}}]})
    with pytest.raises(ds.ConfigError, match="seed must be a non-negative integer"):
        ds.load_recipe({"seed": -1, "stages": ["encode"]})


def test_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - prune: {sparsity: 0.5, sparsity: 0.9}\n")
    with pytest.raises(ds.ConfigError, match="duplicate key 'sparsity' \\(line 2\\)"):
        ds.load_recipe(path)
    path.write_text("seed: 1\nstages: [encode]\nseed: 2\n")
    code = main(["compress", "lenet300", "--data", "digits", "--recipe", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "duplicate key 'seed' (line 3)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("stage", "message"), [
    ({"prune": {"sparsity": 0.5, "overrides": {"fc9": 0.3}}}, "stage 2 (prune): no layer of the model matches 'fc9' "
                                                              "(in overrides); its layers: fc1, fc2, fc3"),
    ({"prune": {"method": "channel", "ratio": 0.3, "ignore": ["fc_3"]}}, "matches 'fc_3' (in ignore)"),
    ({"cluster": {"bits": {"default": 4, "classifier": 6}}}, "stage 2 (cluster): no layer of the model matches "
                                                             "'classifier'"),
    ({"distill": {"epochs": 1, "teacher": "missing-teacher.pt"}}, "stage 2 (distill): teacher 'missing-teacher.pt'"),
    ({"distill": {"epochs": 1, "hints": {"fc1": "fc7"}}}, "stage 2 (distill): hints: the teacher has no layer 'fc7'"),
    ({"factorize": {"rank_ratio": 0.5}}, "stage 3 (encode): the .dsz archive holds models whose layers are their "
                                         "architecture's, and stage 2 (factorize: svd) replaces layers"),
])  # fmt: skip
def test_recipe_mistakes_are_caught_before_the_first_stage(tmp_path, stage, message):
    started = []
    recipe = ds.load_recipe({"model": "lenet300", "data": "digits", "stages": [{"train": {"epochs": 1}}, stage,
                                                                               "encode"]})  # fmt: skip
    with pytest.raises(ds.DeepSlimError) as info:
        ds.run_recipe(recipe, tmp_path / "run", on_event=lambda event, payload: started.append(event))
    assert message in str(info.value)
    assert started == [] and not (tmp_path / "run").exists()  # nothing trained, no run directory


def test_the_runs_recipe_yaml_records_the_command_line_and_reproduces_the_run(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("model: lenet5\nstages:\n  - train: {epochs: 1}\n  - prune: {sparsity: 0.6}\n"
                                     "  - encode\n")  # fmt: skip
    argv = ["compress", "lenet300", "--data", "digits", "--recipe", str(tmp_path / "r.yaml"), "--seed", "7",
            "--device", "rpi4", "-O", "hidden=[32,16]", "--json"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)["stages"]
    as_run = ds.load_recipe(tmp_path / "a" / "recipe.yaml")
    assert (as_run.model, as_run.data, as_run.seed, as_run.device) == ("lenet300", "digits", 7, "rpi4")
    assert as_run.model_options == {"hidden": [32, 16]} and as_run.stages[1].config.sparsity == 0.6
    assert main(["compress", "--recipe", str(tmp_path / "a" / "recipe.yaml"), "--out", str(tmp_path / "b"),
                 "--json"]) == 0  # nothing on the command line but the recipe  # fmt: skip
    second = json.loads(capsys.readouterr().out)["stages"]
    keys = ("stage", "accuracy", "params", "nonzero_params", "archive_bytes", "macs", "estimated_energy_uj")
    assert [[r[k] for k in keys] for r in second] == [[r[k] for k in keys] for r in first]
    assert first[1]["accuracy"] != first[0]["accuracy"]  # it trained
    assert first[1]["params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10  # with the options given
    assert main([*argv, "--seed", "-1", "--out", str(tmp_path / "c")]) == 2  # bad override: refused, exit 2
    assert "seed must be a non-negative integer" in capsys.readouterr().err


RESUMABLE = {"model": "lenet300", "data": "digits", "seed": 1, "stages": [
    {"train": {"epochs": 1, "lr": 0.003}},
    {"prune": {"sparsity": 0.7, "scope": "global", "schedule": "gradual", "epochs": 1}},
    {"cluster": {"bits": 4, "epochs": 1}},
    {"toyscale": {"factor": 1.0}},  # the stage a crash interrupts
    {"finetune": {"epochs": 1}},
    "encode"]}  # fmt: skip
KEYS = ("stage", "index", "accuracy", "params", "nonzero_params", "archive_bytes", "macs")


def test_an_interrupted_run_resumes_from_its_last_finished_stage(tmp_path, monkeypatch):
    recipe = ds.load_recipe(RESUMABLE)
    whole = ds.run_recipe(recipe, tmp_path / "whole")
    assert not (tmp_path / "whole" / "checkpoints").exists()  # a complete run keeps no checkpoints
    monkeypatch.setitem(toy.TRIP, "armed", True)
    with pytest.raises(toy.Interrupted):
        ds.run_recipe(recipe, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "00-input.pt", "01-train.pt", "02-prune.pt", "03-cluster.pt"]  # fmt: skip
    with pytest.raises(ds.ConfigError, match="was run with another recipe or other settings"):
        ds.run_recipe(ds.load_recipe({**RESUMABLE, "seed": 2}), tmp_path / "run", resume=True)
    with pytest.raises(ds.ConfigError, match="already holds a run"):
        ds.run_recipe(recipe, tmp_path / "run")
    monkeypatch.setitem(toy.TRIP, "armed", False)
    events = []
    resumed = ds.run_recipe(recipe, tmp_path / "run", resume=True,
                            on_event=lambda event, payload: events.append((event, payload.get("index"))))  # fmt: skip
    assert [i for e, i in events if e == "stage_start"] == [4, 5, 6]  # train, prune and cluster did not run again
    assert [[r[k] for k in KEYS] for r in resumed.metrics] == [[r[k] for k in KEYS] for r in whole.metrics]
    same = zip(resumed.model.state_dict().items(), whole.model.state_dict().items(), strict=True)
    assert all(ka == kb and torch.equal(a, b) for (ka, a), (kb, b) in same)
    assert (tmp_path / "run" / "model.dsz").read_bytes() == (tmp_path / "whole" / "model.dsz").read_bytes()
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["status"] == "complete" and len(doc["stages"]) == 7 and not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ds.ConfigError, match="holds a complete run: nothing to resume"):
        ds.run_recipe(recipe, tmp_path / "run", resume=True)


def test_the_schedules_share_out_the_epochs_and_raise_sparsity_as_documented():
    from deepslim.compress.prune.schedule import GradualPruner, gradual_prune_, iterative_prune_, iterative_sparsities

    model = ds.load_model("lenet300", in_features=64)
    calls = []

    def fit(epochs, hooks):  # the caller's training loop; here it records what it was asked and the sparsity reached
        zeros = sum(int((m.weight == 0).sum()) for m in (model.fc1, model.fc2, model.fc3))
        calls.append((epochs, tuple(hooks), zeros / sum(m.weight.numel() for m in (model.fc1, model.fc2, model.fc3))))

    config = ds.MagnitudePruneConfig(sparsity=0.875, scope="global")
    iterative_prune_(model, config, rounds=3, epochs=5, fit=fit)
    assert [c[0] for c in calls] == [2, 2, 1]  # 5 epochs over 3 rounds: the first rounds get the remainder
    assert [round(c[2], 3) for c in calls] == [round(s, 3) for s in iterative_sparsities(0.875, 3)] == [0.5, 0.75,
                                                                                                         0.875]
    calls.clear()
    gradual_prune_(ds.load_model("lenet300", in_features=64), config, epochs=4, steps_per_epoch=50, fit=fit)
    ((epochs, (pruner,), _),) = calls
    assert epochs == 4 and isinstance(pruner, GradualPruner) and (pruner.start, pruner.end, pruner.every) == (0, 150, 2)
    with pytest.raises(ds.ConfigError, match="needs epochs > 0"):
        gradual_prune_(model, config, epochs=0, steps_per_epoch=50, fit=fit)
