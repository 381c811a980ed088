"""ONNX export refuses what ONNX Runtime cannot run with the whole message: the layer, its bit width and why."""

import pytest
import torch
from torch import nn

import deepslim as ds


def test_export_names_the_first_layer_with_non_8_bit_activations(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    ds.quantize_(model, ds.LinearQuantConfig(bits=4, activation_bits=4), calib_data=[(torch.randn(4, 1, 8, 8),)])
    with pytest.raises(ds.ExportError, match=r"^integer export takes 8-bit activations; 0 has 4-bit \(ONNX Runtime's "
                                             r"integer kernels are 8-bit\)$"):  # fmt: skip
        ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(1, 1, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
