"""The technique registry: every registered config round-trips through plain JSON; names, kinds and configs are
checked when registered; a user's own technique works in a recipe and in the CLI (--plugin); the CLI refuses a flag
that does not apply to the method and reports what quantization did."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import deepslim as ds
import deepslim.techniques as techniques
from deepslim.cli import main
from deepslim.config import Config
from deepslim.techniques import get_technique, list_techniques, register_technique, technique_for
from tests.pipeline import toy

# a non-default config of every built-in technique (per-layer overrides and enums included); a technique registered
# without an entry here is built with its defaults, and fails this test if it has none
EXAMPLES = {
    "magnitude": {"sparsity": 0.7, "scope": "global", "overrides": {"fc1": 0.5, "re:fc[23]": None}},
    "channel": {"ratio": 0.3, "importance": "l2", "ignore": ["fc3"], "round_to": 8, "overrides": {"fc1": 0.1}},
    "nm": {"n": 1, "m": 4, "overrides": {"fc3": None}},
    "heads": {"head_ratio": 0.25, "ffn_ratio": 0.5, "importance": "magnitude", "global_ranking": False, "round_to": 4,
              "ignore": ["re:.*layer.0.*"], "batches": 2, "probes": 1, "refit": False},
    "linear": {"bits": 4, "per_channel": False, "activation_bits": None, "calibration": "mse", "qat": True,
               "overrides": {"re:fc.*": 8, "fc3": None}},
    "half": {"dtype": "bf16", "overrides": {"fc3": None}},
    "pow2": {"bits": 3, "overrides": {"fc1": 5}},
    "binary": {"overrides": {"fc3": None}},
    "ternary": {"threshold_factor": 0.5},
    "kmeans": {"bits": 4, "init": "density", "iterations": 10, "share_bias": True, "overrides": {"fc3": 6}},
    "svd": {"energy": 0.9, "overrides": {"fc3": None}},
    "tucker": {"mac_ratio": 0.5, "overrides": {"features.0": None}},
    "merge_tokens": {"r": [4, 2, 0]},
    "prune_tokens": {"keep_ratio": 1.0, "threshold": [0.1, 0.0, 0.25], "pool_removed": True},
    "toy_scale": {"factor": 0.25, "overrides": {"fc3": None}},
}  # fmt: skip


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(techniques, "_REGISTRY", dict(techniques._REGISTRY))
    monkeypatch.setattr(techniques, "_PLUGINS", dict(techniques._PLUGINS))


@pytest.mark.parametrize("name", list_techniques())
def test_every_registered_config_round_trips_through_plain_json(name):
    technique = get_technique(name)
    config = technique.config.from_dict(EXAMPLES.get(name, {}))
    text = json.dumps(config.to_dict())  # plain JSON: no enums, tuples or objects left
    again = technique.config.from_dict(json.loads(text))
    assert again == config and type(again) is technique.config and again.to_dict() == config.to_dict()
    assert technique_for(config) is technique and technique.kind and technique.description
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(config)} and isinstance(config, Config)
    for key, value in EXAMPLES.get(name, {}).items():  # the example's values were kept, not defaulted
        assert config.to_dict()[key] == value


def test_the_built_in_techniques_are_registered_once_with_their_kinds():
    assert list_techniques("prune")[:3] == ["magnitude", "channel", "nm"]
    assert list_techniques("factorize") == ["svd", "tucker"]
    assert get_technique("kmeans").kind == "cluster" and get_technique("kmeans").config is ds.KMeansConfig
    assert get_technique("svd").replaces_layers and not get_technique("channel").replaces_layers
    assert technique_for(ds.LinearQuantConfig()).name == "linear"


def test_an_unknown_technique_lists_the_registered_ones():
    with pytest.raises(ds.ConfigError, match=r"unknown technique 'magnitdue' \(registered: magnitude, channel"):
        get_technique("magnitdue")


def test_wrong_keys_and_types_name_the_key_and_the_technique():
    with pytest.raises(ds.ConfigError, match="magnitude: MagnitudePruneConfig has no field 'sparsty'"):
        get_technique("magnitude").config_from_dict({"sparsty": 0.5})
    with pytest.raises(ds.ConfigError, match="kmeans: KMeansConfig.bits must be an integer, got '4'"):
        get_technique("kmeans").config_from_dict({"bits": "4"})
    with pytest.raises(ds.ConfigError, match="linear: LinearQuantConfig.calibration must be one of 'minmax'"):
        get_technique("linear").config_from_dict({"calibration": "median"})


@dataclass(frozen=True, kw_only=True)
class PlainConfig(Config):
    amount: float = 0.5


@dataclass(frozen=True, kw_only=True)
class LevelConfig(Config):
    level: int = 1


@dataclass(kw_only=True)
class MutableConfig(Config):
    amount: float = 0.5


@dataclass(frozen=True, kw_only=True)
class EpochsConfig(Config):
    epochs: int = 1


def plain_(model, config):
    return model


def test_registering_checks_the_name_kind_and_config(registry):
    with pytest.raises(ds.ConfigError, match="'magnitude' is already registered"):
        register_technique("magnitude", PlainConfig, plain_, kind="prune")
    with pytest.raises(ds.ConfigError, match="MagnitudePruneConfig is already the config of 'magnitude'"):
        register_technique("magnitude2", ds.MagnitudePruneConfig, plain_, kind="prune")
    with pytest.raises(ds.ConfigError, match=r"must be @dataclass\(frozen=True"):
        register_technique("mutable", MutableConfig, plain_, kind="prune")
    with pytest.raises(ds.ConfigError, match="has a field 'epochs', which recipe stages keep"):
        register_technique("epochs", EpochsConfig, plain_, kind="prune")
    with pytest.raises(ds.ConfigError, match="kind 'train' is a recipe's own stage"):
        register_technique("plain", PlainConfig, plain_, kind="train")
    with pytest.raises(ds.ConfigError, match="lower case letters"):
        register_technique("Plain Thing", PlainConfig, plain_, kind="prune")
    assert "plain" not in list_techniques()
    plain = register_technique("plain", PlainConfig, plain_, kind="prune")
    assert list_techniques()[-1] == "plain" and get_technique("plain") is plain and plain.description == ""


def test_a_verb_gets_only_the_context_it_names(registry):
    seen = []

    def wants_calib(model, config, *, calib_data=None):
        seen.append(calib_data)

    def wants_all(model, config, **context):
        seen.append(sorted(context))

    a = register_technique("wants_calib", PlainConfig, wants_calib, kind="prune")
    b = register_technique("wants_all", LevelConfig, wants_all, kind="prune")
    model = nn.Linear(2, 2)
    a.apply(model, PlainConfig(), example_input=torch.ones(1, 2), calib_data=[1], data="d")
    b.apply(model, LevelConfig(), example_input=torch.ones(1, 2), calib_data=[1], data="d")
    assert seen == [[1], ["calib_data", "data", "example_input"]]
    with pytest.raises(ds.ConfigError, match="'wants_calib' takes a PlainConfig, not LevelConfig"):
        a.apply(model, LevelConfig())


def test_a_users_technique_runs_in_a_recipe(tmp_path):
    recipe = ds.load_recipe({"model": "lenet300", "data": "digits", "stages": [
        {"toyscale": {"factor": 0.5, "overrides": {"fc3": None}}}]})  # fmt: skip
    stage = recipe.stages[0]
    assert stage.technique == "toy_scale" and stage.config == toy.ToyScaleConfig(factor=0.5, overrides={"fc3": None})
    assert ds.Recipe.from_dict(recipe.to_dict()) == recipe
    torch.manual_seed(0)
    before = ds.load_model("lenet300", in_features=64)
    result = ds.run_recipe(recipe, tmp_path / "run")
    assert torch.equal(result.model.fc1.weight, 0.5 * before.fc1.weight)  # the same initial weights, halved
    assert torch.equal(result.model.fc3.weight, before.fc3.weight)  # skipped by its override
    bad = {**recipe.to_dict(), "stages": [{"toyscale": {"overrides": {"fc9": None}}}]}
    with pytest.raises(ds.ConfigError, match=r"stage 1 \(toyscale\): no layer of the model matches 'fc9'"):
        ds.run_recipe(ds.load_recipe(bad), tmp_path / "bad")


PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

from deepslim.config import Config
from deepslim.techniques import register_technique


@dataclass(frozen=True, kw_only=True)
class ZeroFirstConfig(Config):
    """Zero the first ``rows`` output rows of every linear layer."""

    rows: int = 1


def zero_first_(model, config):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight[: config.rows] = 0
    return model


register_technique("zero_first", ZeroFirstConfig, zero_first_, kind="prune")
'''


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_users_technique_runs_in_the_cli_through_a_plugin_file(capsys, tmp_path, registry):
    plugin = tmp_path / "zero_first.py"
    plugin.write_text(PLUGIN)
    code, _, err = run(capsys, "prune", "lenet300", "--method", "zero_first", "--no-latency")
    assert code == 2 and "--method 'zero_first' is not a prune technique" in err and "--plugin" in err
    for _ in range(2):  # the plugin is imported once per process, so naming it again is no error
        code, out, err = run(capsys, "prune", "lenet300", "--plugin", plugin, "--method", "zero_first", "--set",
                             "rows=3", "--no-latency", "--json")  # fmt: skip
        assert code == 0, err
        doc = json.loads(out)
        assert doc["method"] == "zero_first" and doc["config"] == {"rows": 3}
        zeroed = doc["before"]["nonzero_params"] - doc["after"]["nonzero_params"]
        assert zeroed == 3 * (784 + 300 + 100)  # three rows of each layer (lenet300 without data: 784 inputs)
    (tmp_path / "r.yaml").write_text("stages:\n  - prune: {method: zero_first, rows: 2}\n")
    code, out, err = run(capsys, "compress", "lenet300", "--data", "digits", "--plugin", plugin, "--recipe",
                         tmp_path / "r.yaml", "--out", tmp_path / "run", "--json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)["stages"]
    assert rows[0]["nonzero_params"] - rows[1]["nonzero_params"] == 2 * (64 + 300 + 100)
    (tmp_path / "broken.py").write_text("raise RuntimeError('no')\n")
    code, _, err = run(capsys, "prune", "lenet300", "--plugin", tmp_path / "broken.py", "--no-latency")
    assert code == 2 and "broken.py failed on import: RuntimeError: no" in err and err.count("\n") == 1
    code, _, err = run(capsys, "prune", "lenet300", "--plugin", tmp_path / "missing.py", "--no-latency")
    assert code == 2 and "is not a Python file" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["prune", "lenet300", "--method", "magnitude", "--ratio", "0.5"],
     "--ratio does not apply to --method magnitude, whose settings are sparsity, scope, overrides"),
    (["prune", "lenet300", "--ratio", "0.5", "--sparsity", "0.5"], "--sparsity does not apply to --method channel"),
    (["prune", "lenet300", "--method", "channel", "--nm", "2:4"], "--nm is for --method nm"),
    (["prune", "lenet300", "--method", "nm", "--show-groups"], "--show-groups does not apply to --method nm"),
    (["quantize", "lenet300", "--method", "binary", "--bits", "4"], "--bits does not apply to --method binary"),
    (["quantize", "lenet300", "--method", "kmeans", "--per-tensor"], "--per-tensor does not apply"),
    (["quantize", "lenet300", "--method", "kmaens"], "--method 'kmaens' is not a quantize or cluster technique"),
    (["prune", "lenet300", "--set", "sparsity=high", "--method", "magnitude"], "sparsity must be a number"),
])  # fmt: skip
def test_a_flag_that_does_not_apply_to_the_method_is_an_error(capsys, argv, message):
    code, out, err = run(capsys, *argv, "--no-latency")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert out == ""


def test_the_cli_prunes_what_the_flags_say(capsys):
    code, out, err = run(capsys, "prune", "lenet300", "--method", "magnitude", "--sparsity", "0.5", "--scope",
                         "global", "--no-latency", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["config"] == {"sparsity": 0.5, "scope": "global", "overrides": {}}
    assert doc["after"]["nonzero_params"] < 0.51 * doc["before"]["nonzero_params"]
    code, out, _ = run(capsys, "prune", "lenet300", "--method", "magnitude", "--no-latency", "--json")
    assert json.loads(out)["config"]["sparsity"] == 0.9  # the documented default


@pytest.mark.parametrize("method", ["kmeans", "binary", "ternary", "pow2"])
def test_non_linear_quantization_reports_the_layers_it_quantized(capsys, method):
    code, out, err = run(capsys, "quantize", "lenet300", "--method", method, "--bits", "4", "--skip", "fc3",
                         "--no-latency", *(["--json"] if method != "kmeans" else []))  # fmt: skip
    assert code == 0 or (method in ("binary", "ternary") and "--bits does not apply" in err), err
    if code == 2:
        code, out, err = run(capsys, "quantize", "lenet300", "--method", method, "--skip", "fc3", "--no-latency",
                             "--json")  # fmt: skip
    if method == "kmeans":  # the table's lines
        assert "quantized 2 layer(s): k-means 4-bit" in out and out.count("not quantized") == 1
        assert "not quantized: fc3 (skipped by an override)" in out
        return
    doc = json.loads(out)
    assert [n for n, _ in doc["quantized"]] == ["fc1", "fc2"] and doc["method"] == method
    assert doc["not_quantized"] == [["fc3", "skipped by an override"]]


def test_sensitivity_looks_the_technique_up_in_the_registry():
    data = ds.load_data("digits", seed=0)
    model = ds.load_model("lenet300", in_features=64)
    ds.fit(model, data, epochs=1, lr=0.003)
    untouched = copy.deepcopy(model)
    table = ds.sensitivity(model, data, toy.ToyScaleConfig(factor=0.5), levels=(1.0, 0.01), layers=["fc1"])
    assert table.drop("fc1", 1.0) == 0.0  # a factor of 1 changes nothing
    assert table.drop("fc1", 0.01) != 0.0  # shrinking fc1's weights 100-fold does
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), untouched.state_dict().values(),
                                                 strict=True))  # the model passed in is not changed  # fmt: skip
    with pytest.raises(ds.ConfigError, match="cannot be compressed by ToyScaleConfig; candidates: fc1, fc2, fc3"):
        ds.sensitivity(model, data, toy.ToyScaleConfig(), layers=["relu"])
