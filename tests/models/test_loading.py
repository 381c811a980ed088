import pickle

import pytest
import torch

import deepslim as ds


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = ds.create_model("resnet20", num_classes=7)
    path = ds.save_model(model, tmp_path / "m.pt")
    back = ds.load_model(path)
    assert _same_weights(model, back)
    assert back.fc.out_features == 7  # the architecture options travel with the checkpoint
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp files left behind


def test_plain_state_dict_needs_arch(tmp_path):
    model = ds.create_model("lenet300", in_features=64)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ds.ModelLoadError, match="pass arch=NAME.*lenet300.*or file.py:factory"):
        ds.load_model(tmp_path / "sd.pt")
    back = ds.load_model(tmp_path / "sd.pt", arch="lenet300", in_features=64)
    assert _same_weights(model, back)


def test_weights_option_and_shape_mismatch(tmp_path):
    model = ds.create_model("lenet300", in_features=64)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    assert _same_weights(model, ds.load_model("lenet300", in_features=64, weights=tmp_path / "ckpt.pt"))
    with pytest.raises(ds.ModelLoadError, match="different shape.*fc1.weight"):
        ds.load_model("lenet300", weights=tmp_path / "ckpt.pt")  # default in_features=784


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    legacy = tmp_path / "evil.pt"
    with open(legacy, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh, protocol=2)
    with pytest.raises(ds.ModelLoadError, match="not a zip checkpoint .a legacy PyTorch pickle"):
        ds.load_model(legacy)
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"state_dict": Evil()}, zipped)
    with pytest.raises(ds.ModelLoadError, match="import builtins.print when unpickled"):
        ds.load_model(zipped)
    assert "pwned" not in capsys.readouterr().out


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ds.ModelLoadError, match="not a zip checkpoint"):
        ds.load_model(tmp_path / "junk.pt")
    with pytest.raises(ds.ModelLoadError, match="does not exist"):
        ds.load_model(tmp_path / "missing.pt")
    with pytest.raises(ds.ModelLoadError, match="cannot become a PyTorch module"):
        ds.load_model("model.onnx")


def test_python_factory(tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch\n\ndef make(width=4):\n    return torch.nn.Linear(3, width)\n\nNOT_A_MODEL = 3\n")
    model = ds.load_model(f"{src}:make", width=6)
    assert isinstance(model, torch.nn.Linear) and model.out_features == 6
    with pytest.raises(ds.ModelLoadError, match="no callable 'other'.*make"):
        ds.load_model(f"{src}:other")
    with pytest.raises(ds.ConfigError, match="does not take"):
        ds.load_model(f"{src}:make", depth=2)
    (tmp_path / "bad.py").write_text("def make():\n    return 42\n")
    with pytest.raises(ds.ModelLoadError, match="not a torch.nn.Module"):
        ds.load_model(f"{tmp_path / 'bad.py'}:make")


def test_exported_program_round_trip(tmp_path):
    model = ds.create_model("lenet5", input_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    ds.save_model(model, tmp_path / "m.pt2", example_input=x)
    loaded = ds.load_model(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded(x), model(x))
    assert ds.profile(loaded, x).macs == ds.profile(model, x).macs
    data = ds.load_data("digits")  # a loaded program evaluates like any model (it refuses .eval(); we cope)
    assert ds.evaluate(loaded, data.test).accuracy == ds.evaluate(model, data.test).accuracy


def test_save_pt2_needs_example_input_and_writes_nothing_on_failure(tmp_path):
    custom = torch.nn.Sequential(torch.nn.Linear(4, 3))  # records no input shape (a zoo model brings its own)
    with pytest.raises(ds.ConfigError, match="needs example_input.*records no input shape"):
        ds.save_model(custom, tmp_path / "m.pt2")
    model = ds.create_model("lenet5", input_size=8)
    with pytest.raises(ds.ModelLoadError, match="torch.export cannot capture"):
        ds.save_model(model, tmp_path / "m.pt2", example_input=torch.randn(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
    ds.save_model(model, tmp_path / "zoo.pt2")  # the zoo's example input
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(ds.load_model(tmp_path / "zoo.pt2")(x), model.eval()(x))
