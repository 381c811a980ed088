"""The CLI: JSON output against its schema, exit codes (0 ok, 2 bad input), one-line errors."""

import json
import subprocess
import sys

import pytest

from deepslim.cli import main

PROFILE_KEYS = {"model", "source", "input_shapes", "params", "nonzero_params", "weight_bytes", "macs", "other_ops",
                "activation_bytes", "peak_activation_bytes", "bytes_moved", "arithmetic_intensity", "warnings",
                "layers", "cost"}
LAYER_KEYS = {"name", "type", "calls", "params", "nonzero_params", "weight_bytes", "macs", "other_ops", "input_bytes",
              "output_bytes", "output_shape", "dtype", "bytes_moved", "arithmetic_intensity"}


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_json_schema(capsys):
    code, out, _ = run(capsys, "profile", "resnet20", "--device", "rpi4", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == PROFILE_KEYS and data["macs"] == 40_551_040
    assert all(set(layer) == LAYER_KEYS for layer in data["layers"])
    assert data["cost"]["device"]["name"] == "rpi4" and data["cost"]["latency_ms"] > 0


def test_profile_table(capsys):
    code, out, _ = run(capsys, "profile", "lenet5", "-O", "input_size=8", "--device", "cortex-m7")
    assert code == 0
    assert "features.0" in out and "MACs 537,000" in out and "on cortex-m7: latency" in out


def test_profile_onnx_and_input_shape(capsys, tmp_path):
    code, out, _ = run(capsys, "profile", "lenet300", "--input-shape", "4,784", "--json")
    assert code == 0 and json.loads(out)["macs"] == 4 * 266_200


@pytest.mark.parametrize("argv,message", [
    (["profile", "resnet19"], "unknown model 'resnet19'; known models: bert_base"),
    (["profile", "resnet18", "--input-shape", "1,3,a"], "--input-shape must be comma-separated integers"),
    (["profile", "resnet18", "--input-shape", "1,1,28,28"], "input of shape (1, 1, 28, 28) failed"),
    (["profile", "resnet18", "--device", "pi"], "unknown device 'pi'"),
    (["profile", "resnet18", "-O", "width"], "--option expects KEY=VALUE"),
    (["profile", "resnet18", "-O", "depth=3"], "has no option 'depth'"),
    (["profile", "missing.pt"], "does not exist"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_listing_commands(capsys):
    code, out, _ = run(capsys, "models", "resnet*", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)][:2] == ["resnet18", "resnet20"]
    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0 and {d["name"] for d in json.loads(out)} >= {"rpi4", "h100"}


def test_demo_reports_accuracy_and_cost(capsys):
    code, out, _ = run(capsys, "--quiet", "demo", "--epochs", "3")
    assert code == 0
    assert "test accuracy" in out and "latency on cortex-m7" in out and "131,080" in out


def test_module_entry_point_and_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "deepslim", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "profile" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "deepslim", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_prune_json_and_saved_model(capsys, tmp_path):
    out_path = tmp_path / "p.pt"
    code, out, _ = run(capsys, "prune", "resnet20", "--ratio", "0.5", "--no-latency", "--json", "-o", str(out_path))
    assert code == 0
    data = json.loads(out)
    assert data["after"]["macs"] < 0.6 * data["before"]["macs"] and data["warnings"] == []  # 16 -> 8 channels: aligned
    code, out, _ = run(capsys, "prune", "resnet20", "--ratio", "0.3", "--no-latency", "--json")
    assert "not multiples of 8" in json.loads(out)["warnings"][0]
    code, out, _ = run(capsys, "prune", "resnet20", "--ratio", "0.3", "--round-to", "8", "--no-latency", "--json")
    assert json.loads(out)["warnings"] == []
    code, out, _ = run(capsys, "profile", str(out_path), "--json")
    assert code == 0 and json.loads(out)["macs"] == data["after"]["macs"]  # the saved file is the pruned model


def test_prune_magnitude_warns_that_masks_do_not_speed_up(capsys):
    code, out, _ = run(capsys, "prune", "lenet300", "--method", "magnitude", "--sparsity", "0.9", "--no-latency")
    assert code == 0 and "mask-only sparsity" in out and "nonzero parameters" in out


@pytest.mark.parametrize("argv,message", [
    (["prune", "resnet20", "--ratio", "1.5"], "ratio must be in [0, 1)"),
    (["prune", "resnet20", "--method", "nm", "--nm", "2-4"], "--nm expects N:M"),
    (["prune", "resnet20", "--ignore", "layer9"], "no layer matches 'layer9'"),
    (["prune", "resnet20", "--data", "nodata"], "unknown dataset 'nodata'"),
])  # fmt: skip
def test_prune_bad_input(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_quantize_json(capsys):
    code, out, _ = run(capsys, "quantize", "lenet5", "--data", "digits", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["after"]["weight_bytes"] < data["before"]["weight_bytes"] / 3.5
    assert data["after"]["params"] == data["before"]["params"] == 131_080
    assert [n for n, _ in data["quantized"]] == ["features.0", "features.2", "classifier.1", "classifier.3"]
    code, out, _ = run(capsys, "quantize", "lenet5", "--data", "digits", "--method", "kmeans", "--bits", "4", "--json")
    assert code == 0 and json.loads(out)["after"]["params"] == 131_080


@pytest.mark.parametrize("argv,message", [
    (["quantize", "lenet5", "--bits", "12", "--data", "digits"], "bits must be an integer from 2 to 8"),
    (["quantize", "lenet5"], "needs calibration data: give --data"),
    (["quantize", "lenet5", "--data", "digits", "--skip", "fc9"], "no quantizable layer matches 'fc9'"),
])  # fmt: skip
def test_quantize_bad_input(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
