"""Every file deepslim writes, it reads back: zoo and user models through .pt, .pt2 and .dsz, compressed layers
included, with a dynamic batch in programs and the preprocessing recorded beside the weights."""

import json
import logging
import zlib

import pytest
import torch

import deepslim as ds
from deepslim.models._registry import FACTORY_ATTR, INPUT_ATTR, PREPROCESSING_ATTR

USER_NET = '''
import pathlib
import torch
from torch import nn

pathlib.Path(__file__).with_name("imported.marker").touch()  # proves when deepslim ran this file


class Net(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width * 16, classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.max_pool2d(self.features(x), 2), 1))


def build(width=8, classes=3):
    return Net(width, classes)
'''
X = torch.randn(5, 1, 8, 8)


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A factory module in tmp_path, named by a relative path (as a user types it), and its import marker."""
    (tmp_path / "my_net.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    return "my_net.py:build", tmp_path / "imported.marker"


def _user_model(spec, **options):
    torch.manual_seed(0)
    model = ds.load_model(spec, **options)
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.features[1].running_mean.uniform_(-1, 1)
        model.features[1].running_var.uniform_(0.5, 2)
    return model.eval()


def _same_outputs(a, b, x=X):
    with torch.no_grad():
        ya, yb = a.eval()(x), b(x) if isinstance(b, torch.fx.GraphModule) else b.eval()(x)
    assert torch.equal(ya, yb), f"outputs differ by {(ya - yb).abs().max()}"


@pytest.mark.parametrize("suffix", [".pt", ".dsz", ".pt2"])
def test_a_user_model_round_trips_through_every_format_exactly(user, tmp_path, suffix):
    spec, _ = user
    model = _user_model(spec, width=6)
    path = ds.save_model(model, tmp_path / f"m{suffix}", example_input=X)
    back = ds.load_model(path, arch=spec) if suffix != ".pt2" else ds.load_model(path)
    _same_outputs(model, back)
    if suffix != ".pt2":
        assert getattr(back, FACTORY_ATTR) == {"factory": spec, "options": {"width": 6},
                                               "sha256": getattr(model, FACTORY_ATTR)["sha256"]}  # fmt: skip
        sa, sb = model.state_dict(), back.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert getattr(back, INPUT_ATTR) == {"shape": [5, 1, 8, 8], "dtype": "float32"}


@pytest.mark.parametrize("suffix", [".pt", ".dsz"])
def test_a_file_naming_a_factory_is_refused_without_arch_and_runs_no_code(user, tmp_path, suffix):
    spec, marker = user
    path = ds.save_model(_user_model(spec), tmp_path / f"m{suffix}")
    marker.unlink()
    with pytest.raises(ds.ModelLoadError, match=r"built by my_net\.py:build.*pass the architecture with "
                                                r"--arch my_net\.py:build"):  # fmt: skip
        ds.load_model(path)
    with pytest.raises(ds.ModelLoadError, match="--arch my_net.py:build"):
        ds.load_model(path, weights=None, arch=None)
    assert not marker.exists()  # the factory's file was never imported
    ds.load_model(path, arch=spec)
    assert marker.exists()


def test_a_changed_factory_source_is_a_warning_not_an_error(user, tmp_path, caplog):
    spec, _ = user
    model = _user_model(spec)
    ds.save_model(model, tmp_path / "m.pt")
    (tmp_path / "my_net.py").write_text(USER_NET + "\n# edited\n")
    with caplog.at_level(logging.WARNING):
        back = ds.load_model(tmp_path / "m.pt", arch=spec)
    assert "source has changed" in caplog.text and "my_net.py:build" in caplog.text
    _same_outputs(model, back)


@pytest.mark.parametrize("suffix", [".pt", ".dsz"])
def test_a_channel_pruned_user_model_reloads_at_its_new_size(user, tmp_path, suffix):
    spec, _ = user
    model = _user_model(spec, width=8)
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=X)
    assert model.features[0].out_channels == 4
    back = ds.load_model(ds.save_model(model, tmp_path / f"m{suffix}"), arch=spec)
    assert back.features[0].out_channels == 4 and back.head.in_features == model.head.in_features
    _same_outputs(model, back)


def _calib():
    return [(torch.randn(8, 1, 8, 8),) for _ in range(2)]


COMPRESSIONS = {
    "masked": lambda m: ds.prune_(m, ds.MagnitudePruneConfig(sparsity=0.7)),
    "clustered": lambda m: ds.cluster_(ds.prune_(m, ds.MagnitudePruneConfig(sparsity=0.5)), ds.KMeansConfig(bits=3)),
    "int8-weights": lambda m: ds.quantize_(m, ds.LinearQuantConfig(bits=8, activation_bits=None)),
    # 4-bit activations on an untrained model miss the fidelity check (what is tested here is the round trip)
    "int4-asym-act4": lambda m: ds.quantize_(m, ds.LinearQuantConfig(bits=4, per_channel=False, symmetric=False,
                                                                      activation_bits=4, accept_low_fidelity=True),
                                             calib_data=_calib()),
    "ternary": lambda m: ds.quantize_(m, ds.TernaryConfig()),
    "fp16": lambda m: ds.quantize_(m, ds.Float16Config()),
}


@pytest.mark.parametrize("case", sorted(COMPRESSIONS))
def test_compressed_models_round_trip_through_a_checkpoint(user, tmp_path, case):
    spec, _ = user
    zoo = ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8).eval()
    for model, arch in ((zoo, None), (_user_model(spec), spec)):
        COMPRESSIONS[case](model)
        path = ds.save_model(model, tmp_path / "m.pt")
        back = ds.load_model(path, arch=arch)
        _same_outputs(model, back)
        again = ds.save_model(back, tmp_path / "again.pt")  # what was loaded saves to the same weights
        first, second = (torch.load(p, weights_only=True)["state_dict"] for p in (path, again))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_weights_loads_a_compressed_checkpoint_into_the_named_architecture(user, tmp_path):
    spec, _ = user
    model = _user_model(spec)
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=X)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, activation_bits=None))
    ds.save_model(model, tmp_path / "q.pt")
    _same_outputs(model, ds.load_model(spec, weights=tmp_path / "q.pt"))


def _factorized():
    model = ds.create_model("lenet300", in_features=64).eval()
    ds.factorize_(model, ds.SVDConfig(rank_ratio=0.5))
    assert isinstance(model.fc1, torch.nn.Sequential)  # the layer tree changed: only a program holds it
    return model


PROGRAMS = {
    "lenet5": lambda: ds.create_model("lenet5"),
    "resnet20": lambda: ds.create_model("resnet20"),
    "vit_tiny": lambda: ds.create_model("vit_tiny", dim=32, depth=1, num_heads=2, mlp_dim=32),
    "bert_mini": lambda: ds.create_model("bert_mini", vocab_size=100, seq_len=16, dim=32, depth=1, mlp_dim=32),
    "factorized": _factorized,
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_take_any_batch_size(tmp_path, name):
    torch.manual_seed(0)
    model = PROGRAMS[name]().eval()
    example = (torch.randn(1, 64) if name == "factorized" else
               ds.models._registry.recorded_example_input(model, 1))  # fmt: skip
    ds.save_model(model, tmp_path / "m.pt2", example_input=example)  # saved from a batch of one
    program = ds.load_model(tmp_path / "m.pt2")
    for batch in (1, 8):
        x = example.expand(batch, *example.shape[1:]).clone()
        if x.is_floating_point():
            x.normal_()
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_linearly_quantized_archive_unpacks_to_a_program(user, tmp_path):
    spec, _ = user
    zoo = ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8).eval()
    for model, arch in ((zoo, None), (_user_model(spec), spec)):
        # 4-bit activations of an untrained model miss the fidelity check; the file round trip is what is tested
        ds.quantize_(model, ds.LinearQuantConfig(bits=8, activation_bits=4, accept_low_fidelity=True),
                     calib_data=_calib())
        ds.save_model(model, tmp_path / "q.dsz", example_input=X[:1])
        decoded = ds.load_model(tmp_path / "q.dsz", arch=arch)
        ds.save_model(decoded, tmp_path / "q.pt2")  # the example input comes from the zoo or the archive's record
        program = ds.load_model(tmp_path / "q.pt2")
        for batch in (1, 8):
            _same_outputs(model, program, torch.randn(batch, 1, 8, 8))


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".dsz"])
def test_preprocessing_travels_with_every_file(tmp_path, suffix):
    model = ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8).eval()
    pre = ds.data.Preprocessing(mean=(0.25,), std=(0.5,)).to_dict()
    setattr(model, PREPROCESSING_ATTR, pre)
    back = ds.load_model(ds.save_model(model, tmp_path / f"m{suffix}", example_input=X))
    assert getattr(back, PREPROCESSING_ATTR) == pre
    _same_outputs(model, back)
    bare = ds.load_model(ds.save_model(ds.create_model("lenet5"), tmp_path / f"bare{suffix}"))
    assert getattr(bare, PREPROCESSING_ATTR, None) is None


def test_version_1_checkpoints_still_load(tmp_path):
    options = {"num_classes": 7, "in_channels": 1, "input_size": 8}
    model = ds.create_model("lenet5", **options).eval()
    ds.prune_(model, ds.ChannelPruneConfig(ratio=0.5), example_input=X)
    payload = {"format": "deepslim-checkpoint", "version": 1, "arch": {"name": "lenet5", "options": options},
               "state_dict": model.state_dict(), "resized": True}  # fmt: skip
    torch.save(payload, tmp_path / "v1.pt")
    _same_outputs(model, ds.load_model(tmp_path / "v1.pt"))
    torch.save({**payload, "version": 3}, tmp_path / "v3.pt")
    with pytest.raises(ds.ModelLoadError, match="version 3 is not supported"):
        ds.load_model(tmp_path / "v3.pt")


BAD_RECORDS = {
    "factory": ("factory", {"factory": 42}),
    "factory-two-lines": ("factory", {"factory": "x.py:build\n\x1b[2Jpass --arch evil.py:run", "options": {}}),
    "input": ("input", {"shape": [1, -3], "dtype": "float32"}),
    "input-dtype": ("input", {"shape": [1, 3], "dtype": "load"}),
    "input-huge": ("input", {"shape": [1, 3, 100_000, 100_000], "dtype": "float32"}),  # 120 GB if made
    "preprocessing": ("preprocessing", {"kind": "standardize", "mean": [0.0], "std": [0.0]}),
    "arch": ("architecture", {"name": ["resnet20"]}),
    "points": ("quantization points", {"method": "minmax", "points": {"p0": {"scale": -1.0, "zero": 0,
                                                                           "enabled": True}}}),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_malformed_records_are_refused_by_name(tmp_path, case):
    what, value = BAD_RECORDS[case]
    key = case.split("-")[0]
    model = ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8)
    path = ds.save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, key: value}, path)
    message = f"malformed {what} record|std values must be positive"
    with pytest.raises(ds.ModelLoadError, match=message):
        ds.load_model(path)
    with pytest.raises(ds.ArchiveError, match=message):
        ds.decode(_with_manifest(ds.encode(model), lambda m: {**m, key: value}))


def _with_manifest(blob, change):
    """The archive with its manifest changed (and its lengths and checksum made right again)."""
    import struct

    from deepslim.compress.coding.archive import HEADER_BYTES

    magic, version, flags, m_len, p_len, _ = struct.unpack_from("<8sHHIQI", blob)
    manifest = change(json.loads(zlib.decompress(blob[HEADER_BYTES : HEADER_BYTES + m_len])))
    packed = zlib.compress(json.dumps(manifest).encode())
    body = packed + blob[HEADER_BYTES + m_len :]
    return struct.pack("<8sHHIQI", magic, version, flags, len(packed), p_len, zlib.crc32(body)) + body


def test_a_calibrated_residual_network_round_trips_with_its_activation_points(tmp_path):
    pytest.importorskip("deepslim.compress.quantize._points")  # the points arrive with issue 12's quantization
    torch.manual_seed(0)
    model = ds.create_model("resnet20", num_classes=10).eval()
    calib = [(torch.randn(8, 3, 32, 32),) for _ in range(2)]
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
    x = torch.randn(2, 3, 32, 32)
    for suffix in (".pt", ".dsz"):
        back = ds.load_model(ds.save_model(model, tmp_path / f"q{suffix}"))
        assert len(back.deepslim_points) == len(model.deepslim_points) > 0
        _same_outputs(model, back, x)


def test_a_model_with_a_fixed_batch_is_exported_at_that_batch_with_a_warning(tmp_path, caplog):
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(x.view(1, 16))  # this model cannot take another batch size

    model = Fixed().eval()
    x = torch.randn(1, 16)
    with caplog.at_level(logging.WARNING):
        program = ds.load_model(ds.save_model(model, tmp_path / "f.pt2", example_input=x))
    assert "takes only batch size 1" in caplog.text
    _same_outputs(model, program, x)


def test_a_plain_state_dict_loads_into_a_named_factory(user, tmp_path):
    spec, _ = user
    model = _user_model(spec, width=5)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ds.ModelLoadError, match="pass arch=NAME"):
        ds.load_model(tmp_path / "sd.pt")
    _same_outputs(model, ds.load_model(tmp_path / "sd.pt", arch=spec, width=5))


def test_a_user_model_with_its_own_weight_norm_keeps_its_parametrization(tmp_path, monkeypatch):
    source = "import torch\nfrom torch.nn.utils.parametrizations import weight_norm\n\n\ndef build():\n" \
             "    return torch.nn.Sequential(weight_norm(torch.nn.Linear(4, 3)))\n"
    (tmp_path / "wn.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    model = ds.load_model("wn.py:build").eval()
    back = ds.load_model(ds.save_model(model, tmp_path / "wn.pt"), arch="wn.py:build")
    sa, sb = model.state_dict(), back.state_dict()
    assert "0.parametrizations.weight.original0" in sb and all(torch.equal(sa[k], sb[k]) for k in sa)
    _same_outputs(model, back, torch.randn(2, 4))
