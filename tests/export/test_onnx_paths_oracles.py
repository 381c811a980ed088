"""ONNX export paths the zoo does not reach: a parametrized (masked) model is written with its decoded weights only,
and a quantized model whose dynamo export fails is written by the TorchScript exporter with PyTorch's own
fake-quantization operator, still as an integer QDQ graph."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize

import deepslim as ds


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _run(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_a_masked_model_is_written_with_its_decoded_weights_only_and_stays_masked(tmp_path):
    model, x = _mlp(), torch.randn(4, 6)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.75))
    expected = model(x).detach().numpy()
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=x)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(result.path)).graph.initializer}
    weights = sorted((a for a in inits.values() if a.ndim == 2), key=lambda a: a.size)  # the two weight matrices
    assert len(inits) == 4 and [w.size for w in weights] == [48, 96]  # two weights, two biases: no mask, no original
    assert [int((w == 0).sum()) for w in weights] == [36, 72]  # 75% zeros: the masked weight, decoded
    assert np.array_equal(np.sort(weights[1].ravel()), np.sort(model[0].weight.detach().numpy().ravel()))
    np.testing.assert_allclose(_run(result.path, x), expected, rtol=1e-5, atol=1e-6)
    assert parametrize.is_parametrized(model[0], "weight") and parametrize.is_parametrized(model[2], "weight")
    assert float((model[0].parametrizations.weight.original == 0).float().mean()) < 0.1  # the original kept aside


class Residual(nn.Module):
    """Its residual addition gets an activation point of its own (the layers' inputs are quantized by the layers)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(h + self.b(h)))


def test_a_quantized_model_falls_back_to_the_torchscript_exporter_with_native_fake_quantization(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = Residual().eval(), torch.randn(32, 6)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x])
    expected = model(x).detach().numpy()
    real = torch.onnx.export
    tried = []

    def no_dynamo(*args, dynamo=True, **kwargs):  # the dynamo exporter fails on this model (as on Swin's attention)
        tried.append(dynamo)
        if dynamo:
            raise RuntimeError("dynamo export refused by the test")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    result = ds.export_onnx(model, tmp_path / "q.onnx", example_input=x)
    assert tried == [True, True, False] and result.dynamic_batch
    assert len(model.deepslim_points) == 3  # activation points (the addition among them): TorchScript knows only
    # PyTorch's own fake-quantization operator, not deepslim's
    assert result.format == "qdq-int8" and result.quantized_layers == result.integer_layers == 3
    graph = onnx.load(str(result.path)).graph
    batch = [v.type.tensor_type.shape.dim[0].dim_param for v in (*graph.input, *graph.output)]
    assert batch == ["batch", "batch"]  # one symbol: the output's batch is the input's
    assert result.to_dict()["dynamic_batch"] is True and result.to_dict()["format"] == "qdq-int8"
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 2
    got = _run(result.path, x)
    assert result.cosine >= 0.999 and np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
