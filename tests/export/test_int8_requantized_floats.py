"""A float layer that ONNX Runtime would run as per-tensor int8 anyway is named in the export's warnings.

ONNX Runtime's WeightBiasQuantization (1.22 and later) quantizes the float weights of a Conv whose input is dequantized
(one scale) and whose output reaches a quantizer without branching: a layer kept in float that reads a quantized
tensor shared with an int8 layer and feeds an int8 layer runs on an integer kernel with per-tensor weights. The
oracle is ONNX Runtime's own optimized graph: it has one integer kernel more than the quantized layers exactly
when the warning names a layer."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.export.qdq import requantized_floats


class Shared(nn.Module):
    """t = relu(a(x)) is read by b (float) and d (int8); b feeds c (int8) through a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(t))) + self.d(t)


class PoolAfter(Shared):
    """As Shared, with a max pool between b's ReLU and c: ONNX Runtime moves c's quantizer up across it (review R2
    M2: the first rule stopped at the pool and missed b)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.a(x))
        return self.c(self.p(torch.relu(self.b(t)))) + self.p(self.d(t))


class Chain(nn.Module):
    """a (int8) -> b (float) -> c (int8): b reads a's output alone, unquantized."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _integer_kernels(path, tmp_path) -> int:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sum(n.op_type == "QLinearConv" for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


@pytest.mark.parametrize(("cls", "requantized"), [(Shared, ["b"]), (PoolAfter, ["b"]), (Chain, [])])
def test_a_float_layer_onnx_runtime_requantizes_is_named_and_only_that_one(cls, requantized, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    calib = [(torch.randn(8, 3, 10, 10),)]
    ds.quantize_(model, ds.LinearQuantConfig(overrides={"b": None}), calib_data=calib)
    path = tmp_path / "m.onnx"
    result = ds.export_onnx(model, path, example_input=torch.randn(1, 3, 10, 10), calib_data=calib)
    assert requantized_floats(path) == requantized
    named = [w for w in result.warnings if "per-tensor int8 in ONNX Runtime" in w]
    assert len(named) == len(requantized) and all("e.g. b:" in w for w in named)
    # the oracle: ONNX Runtime's optimized graph runs one integer kernel per quantized layer, plus the requantized
    assert _integer_kernels(path, tmp_path) == result.integer_layers + len(requantized)
