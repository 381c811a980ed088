"""The export's parity diagnosis names the layer whose output really differs between ONNX Runtime and PyTorch."""

import re

import torch
from torch import nn

import deepslim as ds
from deepslim.export.onnx import _worst_layer


def test_the_worst_layer_is_judged_on_its_output_before_an_in_place_activation_overwrites_it(tmp_path):
    # a float model: ONNX Runtime computes what PyTorch does, so every layer agrees; the hook must keep a copy of the
    # convolution's output, whose negative half the in-place ReLU6 right after it zeroes (the view it kept read 0.88)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(1, 1, 8, 8)
    ds.export_onnx(model, tmp_path / "f.onnx", example_input=x)
    note = _worst_layer(model, tmp_path / "f.onnx", (x,))
    assert float(re.search(r"cosine ([0-9.]+)", note).group(1)) > 0.9999, note


def test_the_worst_layer_note_names_the_layer_and_is_empty_when_no_layer_is_found_in_the_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    ds.export_onnx(model, tmp_path / "f.onnx", example_input=x)
    assert re.fullmatch(r"; worst layer 0 \(cosine 1\.0+\)", _worst_layer(model, tmp_path / "f.onnx", (x,)))
    assert not (tmp_path / "f.onnx.probe.onnx").exists()  # the probe file is removed
    other = nn.Sequential(nn.ReLU()).eval()  # no layer of the model in the file's weights
    assert _worst_layer(other, tmp_path / "f.onnx", (x,)) == ""
    renamed = nn.Sequential(nn.Identity(), nn.Linear(4, 3)).eval()  # "1" is not "0": no layer matches
    assert _worst_layer(renamed, tmp_path / "f.onnx", (x,)) == ""
    wider = nn.Sequential(nn.Linear(4, 5)).eval()  # found by name, but its output is not the file's shape
    assert _worst_layer(wider, tmp_path / "f.onnx", (x,)) == ""
