"""The coding package registers the .dsz format and compressed-layer storage with ``models``
(:mod:`deepslim.models.formats`), which imports no ``compress`` module: loading still works as before, in a fresh
process too, and without the registrations a file that needs them is refused by name."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import deepslim as ds
from deepslim.models import formats


def test_a_dsz_archive_loads_through_load_model_in_a_fresh_process(tmp_path):
    model = ds.load_model("lenet300")
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.5))
    path = ds.save_model(model, tmp_path / "m.dsz")
    x = torch.randn(2, 784)
    torch.save(model(x).detach(), tmp_path / "y.pt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch\nfrom deepslim.models import load_model\n"
            f"m = load_model({str(path)!r})\nx = torch.load({str(tmp_path / 'x.pt')!r})\n"
            f"y = torch.load({str(tmp_path / 'y.pt')!r})\nsys.exit(0 if torch.equal(m(x), y) else 3)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_coding_package_registers_the_archive_and_the_layer_states():
    assert formats.archive_format(".dsz", "x").suffix == ".dsz"
    states = formats.layer_states()
    assert states is not None and states.layer_kinds(torch.nn.Linear(2, 2)) == {}


def test_without_the_registrations_files_that_need_them_are_refused_by_name(tmp_path, monkeypatch):
    model = ds.load_model("lenet300")
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, activation_bits=None))
    ds.save_model(model, tmp_path / "q.pt")
    ds.save_model(model, tmp_path / "q.dsz")
    monkeypatch.setattr(formats, "_ARCHIVES", {})
    monkeypatch.setattr(formats, "_LAYER_STATES", [])
    with pytest.raises(ds.ModelLoadError, match=r"q\.dsz: no reader or writer for \.dsz files .* import deepslim"):
        ds.load_model(tmp_path / "q.dsz")
    with pytest.raises(ds.ModelLoadError, match=r"q\.pt holds compressed layers, .* import deepslim"):
        ds.load_model(tmp_path / "q.pt")
    plain = ds.load_model("lenet300")  # a plain model needs none of it
    ds.save_model(plain, tmp_path / "p.pt")
    back = ds.load_model(tmp_path / "p.pt")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), back.state_dict().values(), strict=True))
