"""Model files in every command: a .pt, .pt2 or .dsz model is the file's model (its own size and weights) with and
without --data, --arch or --weights; the data's preprocessing goes with the model into what a command writes."""

import json

import pytest
import torch

import deepslim as ds
from deepslim.cli import main
from deepslim.models import options_for_data
from deepslim.models._registry import PREPROCESSING_ATTR


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors exit by themselves
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """LeNet-5 for the digits, channel-pruned (so its size is not the zoo's), saved in every format; a plain state
    dict of the unpruned model; and what each file's model measures (parameters, test accuracy)."""
    base = tmp_path_factory.mktemp("files")
    data = ds.load_data("digits")
    opts = options_for_data("lenet5", data.input_shape, data.num_classes, {})
    torch.manual_seed(1)
    plain = ds.load_model("lenet5", **opts)
    torch.save(plain.state_dict(), base / "plain.pt")
    model = ds.load_model("lenet5", **opts)
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=data.example_input)
    paths = {ext: ds.save_model(model, base / f"pruned.{ext}", example_input=data.example_input)
             for ext in ("pt", "pt2", "dsz")}  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.5 * sum(p.numel() for p in plain.parameters())  # the file's model is not the zoo's
    accuracy = {"pruned": ds.evaluate(model, data.test).accuracy, "plain": ds.evaluate(plain, data.test).accuracy}
    return {"base": base, "paths": paths, "params": params, "accuracy": accuracy, "data": data}


@pytest.mark.parametrize("ext", ["pt", "pt2", "dsz"])
def test_prune_and_quantize_work_on_the_files_model_with_and_without_data(capsys, files, ext):
    path = files["paths"][ext]
    code, out, err = run(capsys, "prune", path, "--data", "digits", "--method", "magnitude", "--sparsity", "0.5",
                         "--no-latency", "--json")  # fmt: skip
    assert code == 0, err
    before = json.loads(out)["before"]
    assert before["params"] == files["params"] and before["accuracy"] == files["accuracy"]["pruned"]
    code, out, err = run(capsys, "quantize", path, "--data", "digits", "--no-latency", "--json",
                         "-o", files["base"] / f"q-{ext}.dsz")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["before"]["params"] == files["params"] and doc["before"]["accuracy"] == files["accuracy"]["pruned"]
    code, out, err = run(capsys, "quantize", path, "--method", "kmeans", "--bits", "4", "--no-latency", "--json")
    assert code == 0, err  # no --data: the input shape comes from the file
    assert json.loads(out)["before"]["params"] == files["params"]


@pytest.mark.parametrize("ext", ["pt", "pt2", "dsz"])
def test_export_and_bench_work_on_the_files_model_with_data(capsys, files, ext):
    onnx = files["base"] / f"e-{ext}.onnx"
    code, out, err = run(capsys, "export", files["paths"][ext], "--data", "digits", "-o", onnx, "--json")
    assert code == 0, err
    assert json.loads(out)["top1_agreement"] == 1.0
    code, out, _ = run(capsys, "profile", onnx, "--input-shape", "1,1,8,8", "--json")
    assert code == 0 and json.loads(out)["params"] == files["params"]  # the file's pruned model was exported
    code, out, err = run(capsys, "bench", files["paths"][ext], "--data", "digits", "--runtime", "torch",
                         "--seconds", "0.05", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["models"][0]["model"] == str(files["paths"][ext])


def test_a_state_dict_with_arch_is_sized_for_the_data_and_keeps_its_weights(capsys, files):
    plain = files["base"] / "plain.pt"
    code, out, err = run(capsys, "prune", plain, "--arch", "lenet5", "--data", "digits", "--method", "magnitude",
                         "--no-latency", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["before"]["accuracy"] == files["accuracy"]["plain"]  # its weights, not fresh ones
    code, out, err = run(capsys, "prune", "lenet5", "--weights", plain, "--data", "digits", "--method", "magnitude",
                         "--no-latency", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["before"]["accuracy"] == files["accuracy"]["plain"]
    code, _, err = run(capsys, "prune", plain, "--data", "digits")
    assert code == 2 and "--arch" in err and err.count("\n") == 1


def test_unpack_writes_a_checkpoint_or_a_program_that_runs_any_batch(capsys, files):
    reference = ds.load_model(files["paths"]["dsz"])
    x = torch.randn(8, *files["data"].input_shape)
    for ext in ("pt", "pt2"):
        dest = files["base"] / f"unpacked.{ext}"
        code, _, err = run(capsys, "unpack", files["paths"]["dsz"], "-o", dest)
        assert code == 0, err
        with torch.no_grad():
            assert torch.allclose(ds.load_model(dest)(x), reference.eval()(x), atol=1e-5)


def test_what_a_command_writes_carries_the_datas_preprocessing(capsys, files):
    expected = files["data"].preprocessing.to_dict()
    out_path = files["base"] / "with-pre.pt"
    code, _, err = run(capsys, "prune", files["paths"]["dsz"], "--data", "digits", "--method", "magnitude",
                       "--no-latency", "-o", out_path)  # fmt: skip
    assert code == 0, err
    assert getattr(ds.load_model(out_path), PREPROCESSING_ATTR, None) == expected


def test_a_quantized_archive_exports_as_an_integer_graph_with_data(capsys, files):
    """docs/deployment.md: ``deepslim export run/model.dsz --data DATA -o m.onnx`` (it was an "unknown model")."""
    archive = files["base"] / "q-dsz.dsz"  # written by quantize -o in the test above; made here when run alone
    if not archive.exists():
        assert run(capsys, "quantize", files["paths"]["dsz"], "--data", "digits", "--no-latency", "-o", archive)[0] == 0
    code, out, err = run(capsys, "export", archive, "--data", "digits", "-o", files["base"] / "q.onnx", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "qdq-int8" and doc["top1_agreement"] >= 0.99
    assert not any("calib_data" in w for w in doc["warnings"])


@pytest.mark.parametrize("argv,message", [
    (["export", "x.onnx", "--data", "digits", "-o", "y.onnx"], "cannot become a PyTorch module"),
    (["prune", "lenet5", "--arch", "lenet5"], "drop --arch"),
    (["quantize", "missing.dsz", "--data", "digits"], "does not exist"),
    (["compress", "lenet5", "--recipe", "r.yaml", "--out", "o", "--arch", "lenet5"], "drop --arch"),
    (["compress", "--recipe", "r.yaml"], "required: --out"),
    (["prune", "lenet5", "-o", "p.onnx"], "deepslim export writes ONNX"),
    (["quantize", "lenet5", "--data", "digits", "-o", "q.txt"], "-o writes .pt, .pth, .pt2, .dsz files"),
    (["pack", "lenet5", "-o", "p.pt"], "-o writes .dsz files"),
    (["export", "lenet5", "-o", "p.pt"], "-o writes .onnx files"),
])  # fmt: skip
def test_refusals_are_one_line_with_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.onnx").write_bytes(b"")
    (tmp_path / "r.yaml").write_text("data: digits\nstages: [encode]\n")
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


NET = """import torch.nn as nn


def build(hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


def test_compress_takes_a_users_architecture_weights_and_options(capsys, files, tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "r.yaml").write_text("stages:\n  - prune: {sparsity: 0.5}\n")
    model = ds.load_model(f"{tmp_path}/net.py:build")
    ds.fit(model, files["data"], epochs=1, lr=0.01)
    trained = ds.evaluate(model, files["data"].test).accuracy
    assert trained > 0.5  # far from a fresh model's ~0.1: the weights are recognisable by their accuracy
    torch.save(model.state_dict(), tmp_path / "w.pt")

    def compress(*argv):
        code, out, err = run(capsys, "compress", *argv, "--data", "digits", "--recipe", tmp_path / "r.yaml", "--json")
        assert code == 0, err
        return json.loads(out)["stages"][0]

    assert compress(f"{tmp_path}/net.py:build", "--weights", tmp_path / "w.pt", "--out", tmp_path / "a")[
        "accuracy"] == trained  # fmt: skip
    assert compress(tmp_path / "w.pt", "--arch", f"{tmp_path}/net.py:build", "--out", tmp_path / "b")[
        "accuracy"] == trained  # fmt: skip
    assert compress(f"{tmp_path}/net.py:build", "-O", "hidden=8", "--out", tmp_path / "c")["params"] == 64 * 8 + 8 + 90
    # an archive of a user model unpacks only when the factory is named again (never imported implicitly)
    archive = ds.save_model(model, tmp_path / "m.dsz", example_input=files["data"].example_input)
    code, _, err = run(capsys, "unpack", archive, "-o", tmp_path / "u.pt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--arch" in err and "net.py:build" in err
    for ext in ("pt", "pt2"):
        code, _, err = run(capsys, "unpack", archive, "--arch", f"{tmp_path}/net.py:build", "-o", tmp_path / f"u.{ext}")
        assert code == 0, err
        back = ds.load_model(tmp_path / f"u.{ext}", **({"arch": f"{tmp_path}/net.py:build"} if ext == "pt" else {}))
        x = files["data"].example_input.repeat(4, 1, 1, 1)
        assert back(x).shape == (4, 10)
