"""`deepslim profile --training` and `deepslim finetune-ondevice`: the numbers they print are the planner's and the
oracle's, budgets are enforced before training, and uncovered layers are named with what they keep."""

from __future__ import annotations

import json

import pytest
import torch

from deepslim.analysis.training import measure_saved_bytes, training_profile
from deepslim.cli import main
from deepslim.cli.finetune import parse_budget
from deepslim.data import load_data
from deepslim.errors import ConfigError
from deepslim.models import load_model
from deepslim.pipeline import load_for_data
from deepslim.train.ondevice import smallest_peak


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_training_json_gives_the_planners_totals_and_the_device_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profile", "lenet5", "--training", "--trainable", "bias", "--optimizer", "sgd",
                       "--batch-size", "4", "--device", "cortex-m7", "--json")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    model = load_model("lenet5")
    x = torch.randn(1, 1, 28, 28)
    assert data["saved_bytes"] == measure_saved_bytes(model, x, trainable="bias", batch_size=4)
    assert data["peak_bytes"] == training_profile(model, x, trainable="bias", optimizer="sgd", batch_size=4).peak_bytes
    assert data["optimizer_bytes"] == 0 and data["batch_size"] == 4
    assert data["grad_bytes"] == sum(p.numel() * 4 for n, p in model.named_parameters() if n.endswith(".bias"))
    assert data["fits_sram"] is (data["peak_bytes"] <= 1024 * 1024) and data["fits_dram"] is None
    assert {"frozen_bytes", "trainable_bytes", "saved_bytes"} <= set(data["layers"][0])


def test_profile_training_text_names_layers_trained_the_stock_way(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profile", "vit_tiny", "--training", "--trainable", "bias", "--efficient")
    assert code == 0
    assert "saved" in out and "peak" in out and "efficient" in out
    assert "trained the stock way: blocks.0.ln1 (LayerNorm, keeps" in out


def test_profile_training_refuses_an_unknown_trainable_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "lenet5", "--training", "--trainable", "weights")
    assert code == 2 and "unknown trainable" in err


@pytest.mark.parametrize(("text", "nbytes"), [("memory=2MB", 2 * 2**20), ("memory=300KB", 300 * 1024),
                                              ("memory=1.5GB", 3 * 2**29), ("memory=4096", 4096)])  # fmt: skip
def test_budgets_read_binary_units(text: str, nbytes: int) -> None:
    assert parse_budget(text) == nbytes


@pytest.mark.parametrize("text", ["2MB", "memory=2XB", "time=3s", "memory=0"])
def test_bad_budgets_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_finetune_reports_predicted_and_measured_memory_and_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "finetune-ondevice", "lenet5", "--data", "digits", "--mode", "bias", "--epochs", "0",
                       "--budget", "memory=4MB", "--json")  # fmt: skip
    assert code == 0
    res = json.loads(out)
    assert res["predicted_saved_bytes"] == res["measured_saved_bytes"] > 0  # the planner equals the oracle
    assert res["measured_peak_bytes"] > 0 and res["predicted_peak_bytes"] <= 4 * 2**20
    assert 0 <= res["accuracy_before"] == res["accuracy_after"] <= 1  # no epoch: the same model
    assert res["trainable_params"] == sum(p.numel() for n, p in load_model("lenet5").named_parameters()
                                          if n.endswith(".bias"))  # fmt: skip
    assert res["stock_layers"] == {}  # convolutions, max pooling, linear layers and ReLU: all covered


def test_finetune_text_shows_both_columns_and_the_stock_layers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "finetune-ondevice", "vit_tiny", "--data", "digits", "--mode", "tinytl", "--epochs",
                       "0", "--json")  # fmt: skip
    assert code == 0
    res = json.loads(out)
    assert any("no residual block" in n for n in res["notes"])  # a ViT has none: biases and the head train
    assert "blocks.0.mlp.1 (GELU)" in res["stock_layers"] and all(b > 0 for b in res["stock_layers"].values())
    code, out, _ = run(capsys, "finetune-ondevice", "vit_tiny", "--data", "digits", "--mode", "tinytl", "--epochs", "0")
    assert code == 0
    assert "predicted" in out and "measured" in out and "accuracy" in out
    assert "trained the stock way" in out and "blocks.0.mlp.1 (GELU)" in out


def test_a_budget_not_even_bias_only_meets_exits_2_with_the_smallest_figure(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "finetune-ondevice", "lenet5", "--data", "digits", "--mode", "tinytl",
                       "--budget", "memory=100KB")  # fmt: skip
    assert code == 2
    data = load_data("digits", batch_size=8)
    least = smallest_peak(load_for_data("lenet5", data), torch.cat([data.example_input] * 8))
    assert f"not even bias-only training fits (the smallest achievable peak is {least} bytes" in err


def test_a_mode_over_budget_names_the_mode_that_fits(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "finetune-ondevice", "lenet5", "--data", "digits", "--mode", "full",
                       "--budget", "memory=1MB")  # fmt: skip
    assert code == 2 and "mode full needs" in err and "use mode bias or sparse" in err


def test_sparse_mode_needs_a_budget_and_respects_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "finetune-ondevice", "lenet5", "--data", "digits", "--mode", "sparse")
    assert code == 2 and "--budget" in err
    code, out, err = run(capsys, "finetune-ondevice", "lenet5", "--data", "digits", "--mode", "sparse", "--budget",
                         "memory=1MB", "--epochs", "0", "--json")  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert code == 0 and res["predicted_peak_bytes"] <= 2**20
    assert res["predicted_saved_bytes"] == res["measured_saved_bytes"]
