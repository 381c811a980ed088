"""Model files from strangers: crafted .pt and .pt2 files are refused before any of their code runs.

Each crafted file carries a payload that creates a marker file when it runs. The tests that open a crafted file with
``torch.export.load`` itself show that the payload is real (the marker appears); deepslim must refuse the same file
with a one-line ModelLoadError, and the marker must not appear.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.cli import main
from deepslim.models._safe import verify_checkpoint, verify_pt2


class _Payload:
    """Unpickling this runs ``open(marker, "w")`` (what a malicious file would do with os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _evil_save(marker: Path, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf, **kwargs)
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip, letting ``edit`` change its members (names without the archive's root folder)."""
    with zipfile.ZipFile(src) as zin:
        root = zin.namelist()[0].split("/")[0]
        members = {info.filename[len(root) + 1 :]: zin.read(info) for info in zin.infolist()}
    edit(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name, data in members.items():
            zout.writestr(f"{root}/{name}", data)
    return dst


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("pt2") / "base.pt2"
    ds.save_model(model, path, example_input=torch.randn(2, 4))
    return path, model


def _sample_inputs(m, marker):
    m["data/sample_inputs/model.pt"] = _evil_save(marker)


def _pickled_weight(m, marker):
    config = json.loads(m["data/weights/model_weights_config.json"])
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    m["data/weights/model_weights_config.json"] = json.dumps(config).encode()
    m["data/weights/" + entry["path_name"]] = _evil_save(marker)


def _legacy_weights(m, marker):
    m["data/weights/model.pt"] = _evil_save(marker)


def _legacy_constants(m, marker):
    m["data/constants/model.pt"] = _evil_save(marker)


def _opaque_constant(m, marker):
    config = json.loads(m["data/constants/model_constants_config.json"])
    config["config"]["c"] = {"path_name": "opaque_obj_0", "use_pickle": True, "tensor_meta": None, "is_param": False}
    m["data/constants/model_constants_config.json"] = json.dumps(config).encode()
    m["data/constants/opaque_obj_0"] = pickle.dumps(_Payload(marker))


def _guard_code(m, marker):
    program = json.loads(m["models/model.json"])
    program["guards_code"] = [f"open({str(marker)!r}, 'w').close() is None"]
    m["models/model.json"] = json.dumps(program).encode()


def _sympy_expression(m, marker):
    text = m["models/model.json"].decode()
    evil = f"Symbol(str(open('{marker}', 'w').close()) + "
    crafted = re.sub(r'"expr_str": "Symbol\(', lambda _: f'"expr_str": "{evil}', text, count=1)
    assert crafted != text
    m["models/model.json"] = crafted.encode()


# each way torch.export.load runs code from a file; all of them ran the payload in PyTorch 2.13
EXPLOITS = [_sample_inputs, _pickled_weight, _legacy_weights, _legacy_constants, _opaque_constant, _guard_code,
            _sympy_expression]  # fmt: skip


@pytest.mark.parametrize("craft", EXPLOITS, ids=lambda f: f.__name__.strip("_"))
def test_each_crafted_pt2_runs_code_in_torch_but_deepslim_refuses_it(program, tmp_path, craft):
    base, _ = program
    marker = tmp_path / "marker"
    crafted = _rewrite(base, tmp_path / "crafted.pt2", lambda m: craft(m, marker))
    with contextlib.suppress(Exception):  # torch may fail after the payload ran
        torch.export.load(crafted).module()(torch.randn(2, 4))
    assert marker.exists(), "the crafted file is not a working exploit, so the test below proves nothing"
    marker.unlink()
    with pytest.raises(ds.ModelLoadError, match="re-export it with deepslim save_model") as info:
        ds.load_model(crafted)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_pt2_swapped_for_a_crafted_one_after_the_check_is_never_loaded(program, tmp_path, monkeypatch):
    base, model = program
    marker = tmp_path / "marker"
    crafted = _rewrite(base, tmp_path / "crafted.pt2", lambda m: _sample_inputs(m, marker))
    target = tmp_path / "model.pt2"
    target.write_bytes(base.read_bytes())
    import deepslim.models._safe as safe

    checked = safe.verify_pt2

    def check_then_swap(path, data=None):  # an attacker replaces the file between the check and the load
        checked(path, data)
        target.write_bytes(crafted.read_bytes())

    monkeypatch.setattr(safe, "verify_pt2", check_then_swap)
    loaded = ds.load_model(target)
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), model(x))  # the checked (safe) bytes were loaded
    assert not marker.exists()
    with pytest.raises(ds.ModelLoadError, match="re-export it"):  # the bytes are what is checked, not the path
        verify_pt2(base, crafted.read_bytes())


@pytest.mark.parametrize("craft", [_sample_inputs, _guard_code], ids=["sample_inputs", "guard_code"])
def test_the_cli_refuses_a_crafted_pt2_in_one_line_with_exit_2(program, tmp_path, capsys, craft):
    base, _ = program
    marker = tmp_path / "marker"
    crafted = _rewrite(base, tmp_path / "crafted.pt2", lambda m: craft(m, marker))
    code = main(["profile", str(crafted)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "deepslim save_model" in err, err
    assert not marker.exists()


def test_members_torch_would_not_unpickle_safely_are_refused_by_name(program, tmp_path):
    base, _ = program
    marker = tmp_path / "marker"

    def bare_pickle(m):
        m["data/sample_inputs/model.pt"] = pickle.dumps(_Payload(marker), protocol=2)

    def torchscript(m):
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), buf)  # torch.load hands these to torch.jit.load
        m["data/sample_inputs/model.pt"] = buf.getvalue()

    def compiled(m):
        m["data/aotinductor/model/model.so"] = b"\x7fELF"

    def call_os(m):
        program_json = json.loads(m["models/model.json"])
        program_json["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
        m["models/model.json"] = json.dumps(program_json).encode()

    def quoted_name(m):
        m["models/model.json"] = m["models/model.json"].replace(b'"0.weight"', b'"0.w\\")+(\\""')

    cases = {bare_pickle: "is not a torch.save zip", torchscript: "TorchScript", compiled: "not part of a torch.export",
             call_os: "'torch.os.system', which is not a PyTorch operator", quoted_name: "quotes"}  # fmt: skip
    for edit, message in cases.items():
        with pytest.raises(ds.ModelLoadError, match=message):
            verify_pt2(_rewrite(base, tmp_path / f"{edit.__name__}.pt2", edit))
    assert not marker.exists()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_bombs_and_escaping_paths_are_refused_before_inflating(tmp_path):
    bomb = tmp_path / "bomb.pt2"
    bomb.write_bytes(_zip({"archive/models/model.json": b" " * (64 << 20)}, zipfile.ZIP_DEFLATED))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ds.ModelLoadError, match="zip bomb"):
        ds.load_model(bomb)
    escape = tmp_path / "escape.pt2"
    escape.write_bytes(_zip({"archive/../../evil": b"x"}))
    with pytest.raises(ds.ModelLoadError, match="leaves the archive"):
        ds.load_model(escape)
    text = tmp_path / "text.pt2"
    text.write_text("hello")
    with pytest.raises(ds.ModelLoadError, match="not a readable zip"):
        verify_pt2(text)


def test_a_pt2_that_deepslim_saved_still_loads_and_runs_any_batch(program):
    base, model = program
    verify_pt2(base)
    loaded = ds.load_model(base)
    for batch in (1, 5):
        x = torch.randn(batch, 4)
        torch.testing.assert_close(loaded(x), model(x))


# -- .pt checkpoints -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    path.write_bytes(_evil_save(marker, _use_new_zipfile_serialization=not legacy))
    with pytest.raises(ds.ModelLoadError) as info:
        ds.load_model(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ds.ModelLoadError, match="builtins.exec" if not legacy else "not a zip checkpoint"):
        verify_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(ds.ModelLoadError):
        ds.load_model("lenet5", weights=path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_checkpoint_pickles_are_scanned_at_every_protocol(tmp_path, protocol):
    good, evil = tmp_path / "good.pt", tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "meta": {"n": 1, "names": ["a"], "s": {1, 2}}}, good, pickle_protocol=protocol)
    verify_checkpoint(good)
    evil.write_bytes(_evil_save(tmp_path / "marker", pickle_protocol=protocol))
    with pytest.raises(ds.ModelLoadError, match="would import builtins.exec"):
        verify_checkpoint(evil)
    assert not (tmp_path / "marker").exists()


def test_a_symbolic_expression_with_a_huge_power_is_refused_before_sympy_computes_it(program, tmp_path):
    base, _ = program

    def huge(m):
        doc = m["models/model.json"].decode()
        crafted = re.sub(r'"expr_str": "Symbol\(', '"expr_str": "10**10**10 + Symbol(', doc, count=1)
        assert crafted != doc
        m["models/model.json"] = crafted.encode()

    crafted = _rewrite(base, tmp_path / "crafted.pt2", huge)
    with pytest.raises(ds.ModelLoadError, match="huge number"):
        ds.load_model(crafted)


def test_an_onnx_file_whose_external_data_leaves_its_folder_is_refused_in_one_line(tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    weight = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    io_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", io_info[:1], io_info[1:], [weight])
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert main(["profile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "points outside the directory" in err
    with pytest.raises(onnx.checker.ValidationError):  # what deepslim relies on: onnx refuses to read outside
        onnx.load(str(path))
