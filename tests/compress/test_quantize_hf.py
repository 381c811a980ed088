"""int8 post-training quantization of Hugging Face models torch.fx cannot trace: batch norm folds through
torch.export, the layers quantize, and the integer ONNX file runs them on integer kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import fold_batchnorm_
from deepslim.compress.quantize.linear import QuantMixin
from deepslim.errors import UnsupportedModelError
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


def _bns(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@needs_hf
def test_batch_norm_folds_on_an_hf_resnet_through_torch_export_and_the_output_is_unchanged():
    model, x = hf.build("resnet")
    with torch.no_grad():
        want = model(*x)
    with pytest.raises(UnsupportedModelError, match="calib_data"):
        fold_batchnorm_(model)  # fx cannot trace it, and there is no example to capture it with
    folded = fold_batchnorm_(model, x)
    assert folded and not _bns(model)
    with torch.no_grad():
        assert torch.allclose(model(*x), want, atol=1e-4)


@needs_hf
def test_a_model_without_batch_norm_skips_folding_without_a_trace():
    model, _ = hf.build("bert")
    assert fold_batchnorm_(model) == []


@needs_hf
def test_int8_ptq_of_an_hf_resnet_quantizes_its_residual_additions_through_torch_export(tmp_path):
    """fx cannot trace the model: the points come from a torch.export capture, as hooks, and the integer file runs
    every layer and every residual addition on integer kernels while computing what the fake-quant model computes."""
    import copy

    import onnx
    import onnxruntime as ort

    from deepslim.compress.quantize._hooked_points import PointHook

    model, x = hf.build("resnet")
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x[0]])
    assert not _bns(model)
    hooked = {n for n, m in model.named_modules() if any(isinstance(h, PointHook) for h in m._forward_hooks.values())}
    adds = {"model.resnet.encoder.stages.0.layers.0.activation", "model.resnet.encoder.stages.1.layers.0.activation"}
    assert adds <= hooked  # the results of both residual additions (after their ReLU)
    assert all(p.enabled and float(p.scale) != 1.0 for p in model.deepslim_points.values())  # calibrated
    twin = copy.deepcopy(model)  # a copy's hooks run the copy's points
    with torch.no_grad():
        next(iter(twin.deepslim_points.values())).scale.mul_(3)
        assert not torch.equal(twin(*x), model(*x))
    result = ds.export_onnx(model, tmp_path / "r.onnx", example_input=x[0])
    assert result.format == "qdq-int8" and result.quantized_layers == result.integer_layers == 7
    assert result.cosine >= 0.999
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(result.path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearAdd") == 2 and ops.count("QLinearConv") == 6


@needs_hf
def test_a_refused_quantization_of_an_untraceable_model_removes_its_hooks():
    from deepslim.compress.quantize import QuantizationError
    from deepslim.compress.quantize._hooked_points import PointHook

    model, x = hf.build("resnet")
    with torch.no_grad():
        want = model(*x)
    with pytest.raises(QuantizationError, match="the model is left in float"):
        ds.quantize_(model, ds.LinearQuantConfig(bits=2), calib_data=[x[0]])
    assert not any(isinstance(h, PointHook) for m in model.modules() for h in m._forward_hooks.values())
    assert not hasattr(model, "deepslim_points") and not any(isinstance(m, QuantMixin) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(*x), want, atol=1e-4)  # batch norms stay folded: the same function


@needs_hf
def test_int8_ptq_of_bert_with_two_inputs_quantizes_every_linear_and_runs_them_all_on_integer_kernels(tmp_path):
    model, (ids, mask) = hf.build("bert")
    with torch.no_grad():
        want = model(ids, mask)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[(ids, mask, torch.zeros(len(ids)))])
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantMixin)]
    assert quantized == linears
    calibrated = [float(m.act_scale) != 1.0 for m in model.modules() if isinstance(m, QuantMixin)]  # 1 = never seen
    assert all(calibrated)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(model(ids, mask).flatten(), want.flatten(), 0) > 0.99
    result = ds.export_onnx(model, tmp_path / "b.onnx", example_input=(ids, mask))
    assert result.format == "qdq-int8" and result.integer_layers == result.quantized_layers == len(linears)
    assert result.cosine >= 0.98


@needs_hf
def test_int8_ptq_of_a_weight_norm_audio_model_exports_its_weight_norm_convolution_as_an_integer_layer(tmp_path):
    model, x = hf.build("wav2vec2")
    conv = model.model.wav2vec2.encoder.pos_conv_embed.conv
    assert hasattr(conv, "parametrizations")  # weight_norm
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x[0]])
    assert isinstance(conv, QuantMixin) and not hasattr(conv, "parametrizations")
    result = ds.export_onnx(model, tmp_path / "w.onnx", example_input=x[0])
    assert result.format == "qdq-int8" and result.integer_layers > 0 and result.cosine >= 0.98


@needs_hf
def test_gpt2_conv1d_layers_quantize_per_output_column_and_export_as_integer_kernels(tmp_path):
    model, (ids, mask) = hf.build("gpt2")
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    w_before = {n: model.get_submodule(n).weight.detach().clone() for n in conv1d}
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[(ids, mask)])
    assert len(conv1d) == 8 and all(isinstance(model.get_submodule(n), QuantMixin) for n in conv1d)
    layer = model.get_submodule(conv1d[0])
    codes, scale, zero, axis = layer.weight_codes()
    w = w_before[conv1d[0]]  # (in, out): one scale per output column, max |w| / 127 (symmetric int8)
    assert axis == 1 and codes.shape == w.shape and torch.all(zero == 0)
    torch.testing.assert_close(scale, w.abs().amax(0) / 127)
    torch.testing.assert_close(layer.quantized_weight(), (codes.float() * scale[None, :]))
    x = torch.randn(2, 5, w.shape[0])
    layer.act_bits = None  # the weight alone: x @ W_q + b, against plain arithmetic
    torch.testing.assert_close(layer.forward(x), x @ (codes.float() * scale[None, :]) + layer.bias)  # no output point
    layer.act_bits = 8
    result = ds.export_onnx(model, tmp_path / "g.onnx", example_input=(ids, mask))
    assert result.quantized_layers == 9 and result.integer_layers == 9 and result.cosine >= 0.98
