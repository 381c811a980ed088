"""The integer export is correct on every model it accepts, or refuses: batch norm left to the exporter, linears on
3-D inputs (MatMul), shared initializers, any batch size; the documented path (quantize_ with calib_data, then
export_onnx with nothing more) quantizes the residual additions like ONNX Runtime's own quantizer and computes what
the fake-quantized model computes; a disagreeing file is an error, not a file."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.export.onnx import ort_session


def _optimized_ops(path, tmp_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _randomize_bn_(model):
    """Non-trivial batch-norm statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 1.5 - 0.5)  # some negative
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        return self.fc(x.mean((2, 3)))


class TinyEncoder(nn.Module):
    """Linears on (B, L, D) inputs: the exporter writes them as MatMul with a transposed weight."""

    def __init__(self, d=32):
        super().__init__()
        self.ln, self.up, self.down, self.head = nn.LayerNorm(d), nn.Linear(d, 64), nn.Linear(64, d), nn.Linear(d, 5)

    def forward(self, x):  # (B, L, D)
        x = x + self.down(torch.relu(self.up(self.ln(x))))
        return self.head(x.mean(1))


def _check_batches(model, path, shape, batches=(1, 8), atol=1e-4, min_cos=0.999):
    sess = ort_session(path, threads=1)
    for b in batches:
        x = torch.randn(b, *shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert _cosine(got, ref) > min_cos and np.abs(got - ref).max() < atol * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("name,shape,options", [
    ("lenet5", (1, 28, 28), {}), ("resnet20", (3, 32, 32), {}), ("vit_tiny", (3, 32, 32), {"depth": 2}),
])  # fmt: skip
def test_fp32_and_int8_files_take_any_batch_size(name, shape, options, tmp_path):
    torch.manual_seed(0)
    model = ds.create_model(name, **options).eval()
    res = ds.export_onnx(model, tmp_path / "f.onnx", example_input=torch.randn(1, *shape))
    dim = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert res.dynamic_batch and dim.dim_param and not dim.HasField("dim_value")
    _check_batches(model, res.path, shape)
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=[(torch.randn(8, *shape),)])
    q = ds.export_onnx(model, tmp_path / "q.onnx", example_input=torch.randn(1, *shape))
    assert q.format == "qdq-int8" and q.dynamic_batch
    # the integer file against the fake-quantized model (a random ViT's tiny residual stream, renormalized by layer
    # norms, turns the few codes that float rounding flips into visible noise: cosine ~0.99 there, 0.9999 elsewhere)
    _check_batches(model, q.path, shape, atol=0.3, min_cos=0.98 if name == "vit_tiny" else 0.999)


@pytest.mark.parametrize("fold", [False, True])
def test_batch_norm_convnet_int8_file_matches_the_quantized_model(fold, tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn_(ConvBN().eval())
    calib = [(torch.randn(16, 3, 12, 12),) for _ in range(2)]
    ds.quantize_(model, ds.LinearQuantConfig(fold_batchnorm=fold), calib_data=calib)
    x = torch.randn(32, 3, 12, 12)
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=x)
    got = ort_session(res.path, threads=1).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert _cosine(got, ref) > 0.999 and (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert res.integer_layers == res.quantized_layers == 3
    assert "QLinearConv" in _optimized_ops(res.path, tmp_path)


def test_linears_on_3d_inputs_run_integer_kernels(tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    calib = [(torch.randn(8, 6, 32),) for _ in range(2)]
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=calib)
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 6, 32))
    assert res.integer_layers == res.quantized_layers == 3 and not res.float_layers
    ops = _optimized_ops(res.path, tmp_path)
    assert sum(op in ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger") for op in ops) == 2
    weights = {i.name: i for i in onnx.load(str(res.path)).graph.initializer}
    assert weights["up.weight__q"].data_type == onnx.TensorProto.INT8 and list(weights["up.weight__q"].dims) == [32, 64]
    _check_batches(model, res.path, (6, 32), atol=0.02)


def test_weight_only_layers_are_not_counted_as_integer(tmp_path):
    model = TinyEncoder().eval()
    ds.quantize_(model, ds.LinearQuantConfig(activation_bits=None))
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(1, 6, 32))
    assert res.quantized_layers == 3 and res.integer_layers == 0 and "run in float" in res.warnings[-1]


def test_documented_path_quantizes_additions_and_matches_the_fake_quant_model(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn_(ds.create_model("resnet20")).eval()
    calib = [(torch.randn(16, 3, 32, 32),) for _ in range(2)]
    float_model = __import__("copy").deepcopy(model)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
    x = torch.randn(16, 3, 32, 32)
    res = ds.export_onnx(model, tmp_path / "q.onnx", example_input=x)  # no second data argument
    assert not res.warnings and res.integer_layers == res.quantized_layers
    ops = _optimized_ops(res.path, tmp_path)
    assert ops.count("QLinearAdd") == 9 and "Add" not in ops  # every residual addition runs in integers
    got = ort_session(res.path, threads=1).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref, ref_float = model(x).numpy(), float_model(x).numpy()
    assert _cosine(got, ref) > 0.9995 and (got.argmax(1) == ref.argmax(1)).all()
    assert _cosine(got, ref_float) > 0.98  # and the quantized model is still the float one
    # the fake-quantized PyTorch model quantizes those additions itself
    assert len(model.deepslim_points) >= 9 and all(p.enabled for p in model.deepslim_points.values())


def test_batch_of_two_example_and_calibration(tmp_path):
    model = ds.create_model("resnet20").eval()
    calib = [(torch.randn(2, 3, 32, 32),)]
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=calib)
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 3, 32, 32), calib_data=calib)
    assert res.cosine > 0.999 and res.top1_agreement == 1.0


def test_shared_initializers_survive_the_rewrite(tmp_path):
    """Two layers reading one deduplicated zero bias: rewriting the first must not delete what the second reads."""
    from onnx import TensorProto, helper, numpy_helper

    from deepslim.export.qdq import quantized_layers, write_qdq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    for conv in (model[0], model[2]):
        conv.bias.data.zero_()
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=[(torch.rand(8, 4, 5, 5),)])
    layers = quantized_layers(model)
    w = {n: numpy_helper.from_array(lq.weight, f"{n}.weight") for n, lq in layers.items()}
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "shared_zero_bias")
    nodes = [helper.make_node("Conv", ["input", "0.weight", "shared_zero_bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "2.weight", "shared_zero_bias"], ["output"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4, 5, 5])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4, 5, 5])],
                              [*w.values(), bias])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "f.onnx")
    assert write_qdq(tmp_path / "f.onnx", tmp_path / "q.onnx", layers) == []
    onnx.checker.check_model(str(tmp_path / "q.onnx"))
    x = torch.rand(3, 4, 5, 5)
    got = ort_session(tmp_path / "q.onnx", threads=1).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 0.02


def test_a_disagreeing_file_is_an_error_naming_the_worst_layer(tmp_path, monkeypatch):
    from deepslim.export import qdq

    model = ConvBN().eval()
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=[(torch.randn(8, 3, 12, 12),)])
    real = qdq._weight_codes

    def wrong_conv2(lq, m):  # the kind of bug the parity check exists for: codes written for the wrong weight
        codes, scale, zero = real(lq, m)
        return (codes[::-1].copy(), scale, zero) if lq.name == "conv2" else (codes, scale, zero)

    monkeypatch.setattr(qdq, "_weight_codes", wrong_conv2)
    with pytest.raises(ds.ExportError, match=r"disagrees .*cosine .*agreement .*worst layer conv2"):
        ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(16, 3, 12, 12))
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())


def test_metadata_records_version_and_preprocessing(tmp_path):
    from deepslim.data import Preprocessing
    from deepslim.models._registry import PREPROCESSING_ATTR

    model = ds.create_model("lenet5").eval()
    pre = Preprocessing(mean=(0.1307,), std=(0.3081,)).to_dict()
    setattr(model, PREPROCESSING_ATTR, pre)
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(1, 1, 28, 28))
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert props["deepslim.version"] == ds.__version__
    assert json.loads(props["deepslim.preprocessing"]) == pre
    assert Preprocessing.from_dict(json.loads(props["deepslim.preprocessing"])).to_dict() == pre
    plain = ds.export_onnx(ds.create_model("lenet5").eval(), tmp_path / "p.onnx",
                           example_input=torch.randn(1, 1, 28, 28))
    assert "deepslim.preprocessing" not in {p.key for p in onnx.load(str(plain.path)).metadata_props}


def test_conv_subclasses_quantize_or_are_refused_by_name(tmp_path):
    class MyConv(nn.Conv2d):  # keeps Conv2d's forward
        pass

    class SameConv(nn.Conv2d):  # a forward of its own
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    model = nn.Sequential(MyConv(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(1, 3, 6, 6))
    ds.quantize_(model.eval(), ds.LinearQuantConfig(), calib_data=[(torch.randn(4, 3, 6, 6),)])
    assert isinstance(model[0], MyConv) and ("0", "int8 w per-channel / u8 act") in ds.quantization_report(
        model).quantized  # fmt: skip
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 3, 6, 6))
    assert res.integer_layers == 2 and res.cosine > 0.999
    with pytest.raises(ds.UnsupportedModelError, match=r"0: SameConv overrides the forward.*overrides=\{'0': None\}"):
        ds.quantize_(nn.Sequential(SameConv(3, 8, 3)), ds.LinearQuantConfig(activation_bits=None))


def test_untraceable_models_get_a_way_out_in_the_folding_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    with pytest.raises(ds.UnsupportedModelError, match=r"fold_batchnorm=False"):
        ds.quantize_(Branchy().eval(), ds.LinearQuantConfig(), calib_data=[(torch.randn(2, 3, 8, 8),)])
    model = ds.quantize_(Branchy().eval(), ds.LinearQuantConfig(fold_batchnorm=False),
                         calib_data=[(torch.randn(2, 3, 8, 8),)])  # fmt: skip
    assert not hasattr(model, "deepslim_points")  # untraceable: additions stay float in the model and in the file


def test_quantizing_twice_keeps_every_point_distinct(tmp_path):
    model = ds.create_model("resnet20").eval()
    calib = [(torch.randn(8, 3, 32, 32),)]
    ds.quantize_(model, ds.LinearQuantConfig(overrides={"fc": None}), calib_data=calib)
    first = dict(model.deepslim_points)
    ds.quantize_(model, ds.LinearQuantConfig(), calib_data=calib)  # now the classifier too
    assert all(model.deepslim_points[n] is p for n, p in first.items())  # the old points keep their names
    res = ds.export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(4, 3, 32, 32))
    assert res.integer_layers == res.quantized_layers == 20 and res.cosine > 0.999
