"""``deepslim profile FILE.onnx --time``: the measured block view from the command line."""

import json

import torch

import deepslim as ds
from deepslim.cli import main


def test_profile_time_adds_the_measured_blocks_and_refuses_a_model_that_is_not_onnx(tmp_path, capsys):
    torch.manual_seed(0)
    model = ds.load_model("lenet5", input_size=8)
    path = tmp_path / "m.onnx"
    ds.export_onnx(model, path, example_input=torch.randn(1, 1, 8, 8))
    assert main(["profile", str(path), "--time", "--runs", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    measured = doc["measured"]
    assert measured["runs"] == 3 and measured["threads"] == 1
    assert measured["node_us"] > 0
    assert abs(sum(g["us"] for g in measured["groups"].values()) - measured["node_us"]) < 1e-6 * measured["node_us"]
    assert abs(sum(b["total"] for b in measured["blocks"]) - measured["node_us"]) < 1e-6 * measured["node_us"]
    assert {b["block"] for b in measured["blocks"]} >= {"features.0", "classifier.0"}
    assert doc["layers"]  # the ordinary profile is still there
    assert main(["profile", "lenet5", "--time"]) == 2
    assert "export the model first" in capsys.readouterr().err
