"""The CLI: JSON output against its schema, exit codes (0 ok, 2 bad input), one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from deepslim.cli import main

PROFILE_KEYS = {"model", "source", "input_shapes", "params", "nonzero_params", "weight_bytes", "macs", "other_ops",
                "activation_bytes", "peak_activation_bytes", "bytes_moved", "arithmetic_intensity", "warnings",
                "layers", "cost"}
LAYER_KEYS = {"name", "type", "calls", "params", "nonzero_params", "weight_bytes", "macs", "other_ops", "input_bytes",
              "output_bytes", "output_shape", "dtype", "depthwise_macs", "bytes_moved", "arithmetic_intensity"}


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
    (["profile", "resnet19"], "unknown model 'resnet19'; known models: all-minilm-l6-v2, bert_base"),
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


def test_demo_tells_the_deep_compression_story(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--epochs", "5", "--out", str(tmp_path / "demo"), "--json")
    assert code == 0
    data = json.loads(out)
    before, after = data["before"], data["after"]
    assert before["params"] == after["params"] == 131_080
    assert before["archive_bytes"] / after["archive_bytes"] > 30
    assert after["accuracy"] > 0.85 and data["decoded_accuracy"] == after["accuracy"]
    assert (tmp_path / "demo" / "metrics.json").is_file() and (tmp_path / "demo" / "model.dsz").is_file()
    metrics = (tmp_path / "demo" / "metrics.json").read_bytes()
    code, _, err = run(capsys, "demo", "--epochs", "2", "--out", str(tmp_path / "demo"))  # asked to replace nothing
    assert code == 2 and "pass --overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "demo" / "metrics.json").read_bytes() == metrics
    (tmp_path / "demo" / "stages" / "09-stale.dsz").write_bytes(b"from an older run")
    code, out, _ = run(capsys, "--quiet", "demo", "--epochs", "2", "--out", str(tmp_path / "demo"), "--overwrite")
    assert code == 0 and "bytes on disk (.dsz archive)" in out and "energy per image on cortex-m7" in out
    assert not (tmp_path / "demo" / "stages" / "09-stale.dsz").exists()  # the old run was replaced as a whole


def test_compress_pack_unpack(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - train: {epochs: 2}\n  - prune: {sparsity: 0.8}\n  - cluster: {bits: 4}\n"
                      "  - encode: {}\n")
    code, out, err = run(capsys, "compress", "lenet300", "--data", "digits", "--recipe", str(recipe), "--out",
                         str(tmp_path / "run"), "--json")  # fmt: skip
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert [s["stage"] for s in stages] == ["input", "train", "prune", "cluster", "encode"]
    code, _, err = run(capsys, "compress", "lenet300", "--data", "digits", "--recipe", str(recipe), "--out",
                       str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "already holds a run" in err
    # pack a checkpoint, unpack it, and get the same weights
    code, out, _ = run(capsys, "pack", str(tmp_path / "run" / "stages" / "03-cluster.dsz"), "-o",
                       str(tmp_path / "x.dsz"))  # an archive is a model spec too
    assert code == 0 and "ratio" in out
    assert (tmp_path / "x.dsz").read_bytes() == (tmp_path / "run" / "model.dsz").read_bytes()
    code, out, _ = run(capsys, "unpack", str(tmp_path / "run" / "model.dsz"), "-o", str(tmp_path / "m.pt"))
    assert code == 0 and "decoded" in out
    code, out, _ = run(capsys, "pack", str(tmp_path / "m.pt"), "-o", str(tmp_path / "again.dsz"), "--json")
    assert code == 0 and json.loads(out)["ratio"] > 5
    assert (tmp_path / "again.dsz").read_bytes() != b""
    import deepslim as ds

    a = ds.decode((tmp_path / "run" / "model.dsz").read_bytes())
    b = ds.decode((tmp_path / "again.dsz").read_bytes())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    # bad archives: one line, exit 2
    (tmp_path / "bad.dsz").write_bytes(b"not an archive")
    code, _, err = run(capsys, "unpack", str(tmp_path / "bad.dsz"), "-o", str(tmp_path / "n.pt"))
    assert code == 2 and "bad magic" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.pt").exists()
    code, _, err = run(capsys, "unpack", str(tmp_path / "none.dsz"), "-o", str(tmp_path / "n.pt"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "compress", "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err


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


def test_export_and_bench(capsys, tmp_path):
    code, _, err = run(capsys, "export", "lenet5", "--int8", "-o", str(tmp_path / "q.onnx"))
    assert code == 2 and "--int8 needs --data" in err
    code, out, _ = run(capsys, "export", "lenet5", "--int8", "--data", "digits", "-o", str(tmp_path / "q.onnx"),
                       "--json")  # fmt: skip
    res = json.loads(out)
    assert code == 0 and res["format"] == "qdq-int8" and res["top1_agreement"] == 1.0
    assert res["integer_layers"] == res["quantized_layers"] == 4  # Caffe LeNet-5: 2 convs, 2 linears, all integer
    code, out, _ = run(capsys, "export", "lenet5", "--data", "digits", "-o", str(tmp_path / "f.onnx"))
    assert code == 0 and "fp32" in out
    code, out, _ = run(capsys, "bench", str(tmp_path / "f.onnx"), "--compare", str(tmp_path / "q.onnx"),
                       "--threads", "1", "--json")  # fmt: skip
    doc = json.loads(out)
    assert code == 0 and len(doc["models"]) == 2 and {m["runtime"] for m in doc["models"]} == {"onnxruntime"}
    assert doc["speedup"] == pytest.approx(doc["models"][0]["median_ms"] / doc["models"][1]["median_ms"])
    assert [m["model"] for m in doc["models"]] == [str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")]
    code, _, err = run(capsys, "bench", str(tmp_path / "f.onnx"), "--runtime-b", "openvino")
    assert code == 2 and "--runtime-b is the runtime of --compare" in err
    code, _, err = run(capsys, "bench", str(tmp_path / "f.onnx"), "--compare", str(tmp_path / "q.onnx"),
                       "--runtime", "torch")  # fmt: skip
    assert code == 2 and "--compare runs each model in a runtime process" in err
    assert {"median_ms", "p10_ms", "p90_ms", "throughput_per_s", "peak_memory_bytes", "predicted_ms", "warnings",
            "runs", "threads", "runtime", "device", "model"} == set(doc["models"][0])  # fmt: skip
    code, out, _ = run(capsys, "bench", "lenet5", "-O", "input_size=8", "--runtime", "torch", "--seconds", "0.2")
    assert code == 0 and "median ms" in out and "warning" in out  # a tiny model: overhead dominates
    code, _, err = run(capsys, "bench", str(tmp_path / "missing.onnx"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "bench", str(tmp_path / "f.onnx"), "--input-shape", "1,1,5,5")
    assert code == 2 and "takes input of shape" in err


def test_report_command_and_exit_codes(capsys, tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - train: {epochs: 1}\n  - encode\n")
    code, _, _ = run(capsys, "-q", "compress", "lenet300", "--data", "digits", "--recipe", str(recipe), "--out",
                     str(tmp_path / "run"))  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "report.html").is_file()
    code, out, _ = run(capsys, "report", str(tmp_path / "run"), "-o", str(tmp_path / "r.html"), "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == {"path", "runs", "charts", "problems"} and doc["runs"] == 1 and doc["charts"] >= 3
    code, _, err = run(capsys, "report", str(tmp_path), "-o", str(tmp_path / "x.html"))
    assert code == 2 and "metrics.json is missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
    # a bug (not bad input) exits 1 with one line
    import deepslim.report

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(deepslim.report, "write_report", broken)
    code, _, err = run(capsys, "report", str(tmp_path / "run"), "-o", str(tmp_path / "y.html"))
    assert code == 1 and "internal error" in err and "boom" in err


def test_bench_compares_one_file_across_two_runtimes(capsys, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is the optional second runtime (deepslim[openvino])")
    code, _, _ = run(capsys, "export", "lenet5", "-O", "input_size=8", "-o", str(tmp_path / "f.onnx"))
    assert code == 0
    code, out, _ = run(capsys, "bench", str(tmp_path / "f.onnx"), "--compare", str(tmp_path / "f.onnx"),
                       "--runtime-b", "openvino", "--threads", "1", "--json")  # fmt: skip
    doc = json.loads(out)
    assert code == 0 and [m["runtime"] for m in doc["models"]] == ["onnxruntime", "openvino"]
    code, out, _ = run(capsys, "bench", str(tmp_path / "f.onnx"), "--compare", str(tmp_path / "f.onnx"),
                       "--runtime-b", "openvino", "--threads", "1")  # fmt: skip
    assert code == 0 and "onnxruntime vs openvino" in out and "f.onnx (openvino) runs" in out
