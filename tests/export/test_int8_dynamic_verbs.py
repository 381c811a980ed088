"""The ordinary verbs give a BERT encoder the fast int8 file: ``quantize_(model, LinearQuantConfig(bits=8),
calib_data=...)`` resolves ``calibration='auto'`` to dynamic int8 for an encoder ONNX Runtime fuses, and
``export_onnx`` writes ONNX Runtime's fused graph (QAttention, integer MatMuls) that computes what the quantized
PyTorch model computes; everything else (a convnet) calibrates exactly as before; bad combinations are clear errors."""

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import Calibration, QuantMixin
from deepslim.errors import ConfigError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
ort = pytest.importorskip("onnxruntime")


def _local_bert(path, *, outliers: bool = False):
    """A 2-layer BERT directory loaded through ``hf:PATH``; ``outliers`` plants one wide GELU channel (7 of layer
    0's feed-forward block) and one wide LayerNorm channel (5, read by layer 1's up projection)."""
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False)
    if outliers:
        with torch.no_grad():
            up = bert.encoder.layer[0].intermediate.dense
            up.weight[7] *= 30.0
            up.bias[7] = 20.0
            bert.encoder.layer[1].attention.output.LayerNorm.weight[5] = 25.0
    bert.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    return ds.load_model(f"hf:{path}").eval()


def _batch(seed: int, n: int = 6, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 120, (n, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1::2, 8:] = 0
    return ids, mask


def test_the_ordinary_verbs_give_a_local_bert_the_fused_dynamic_int8_file(tmp_path):
    model = _local_bert(tmp_path / "bert")
    calib = [{"input_ids": ids, "attention_mask": mask} for ids, mask in map(_batch, range(3))]  # as load_data gives
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
    report = ds.quantization_report(model)
    assert report.calibration == "dynamic" and len(report.quantized) == 12
    assert all(enc.startswith("int8 w per-channel / u8 act dynamic") for _, enc in report.quantized)
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=1), calib_data=calib)
    assert result.format == "fused-int8" and result.quantized_layers == result.integer_layers == 12
    ops = {(n.domain, n.op_type) for n in onnx.load(str(result.path)).graph.node}
    assert ("com.microsoft", "QAttention") in ops and ("", "MatMulInteger") in ops
    assert ("", "LayerNormalization") in ops and ("", "MatMul") in ops  # the fp32 outlier path
    assert ("com.microsoft", "SkipLayerNormalization") not in ops  # ORT's is a scalar loop: Add + LayerNormalization
    ids, mask = _batch(42, n=5)  # another batch size, padding included
    got = ds.export.onnx.run_onnx(result.path, (ids.numpy(), mask.numpy()))
    with torch.no_grad():
        want = model(ids, mask).numpy()
    assert np.abs(got - want).max() < 1e-5  # the same arithmetic: per-batch u8 inputs, s8 per-channel weights


def test_dynamic_quantization_of_an_input_is_onnx_runtimes_dynamic_quantize_linear():
    from onnx import TensorProto, helper

    from deepslim.compress.quantize._dynamic import dynamic_u8

    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in (("y", TensorProto.UINT8),
                               ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))])  # fmt: skip
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), providers=["CPUExecutionProvider"])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(4, 7, 33, generator=g) * 3, torch.rand(200, generator=g) + 0.5, -torch.rand(50, generator=g),
              torch.tensor([-1.0, 0.0, 0.5, 2.5, 254.0 / 255])):  # fmt: skip
        y, s, z = sess.run(None, {"x": x.numpy()})
        expected = (y.astype(np.float32) - np.float32(z)) * s
        assert np.array_equal(dynamic_u8(x).numpy(), expected)


def test_the_widest_channels_are_split_off_and_the_file_splits_the_same_ones(tmp_path):
    model = _local_bert(tmp_path / "bert", outliers=True)
    ref = copy.deepcopy(model)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, split_outliers=1, split_inputs=1),
                 calib_data=[_batch(s) for s in range(2)])  # fmt: skip
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}
    up0, down0 = (layers[f"encoder.encoder.layer.0.{p}.dense"] for p in ("intermediate", "output"))
    assert up0.split_out.tolist() == [7] and down0.split_in.tolist() == [7] and down0.split_rows
    assert layers["encoder.encoder.layer.1.intermediate.dense"].split_in.tolist() == [5]
    ids, mask = _batch(7)
    with torch.no_grad():  # the planted channels cost the int8 model most of its fidelity without the split
        plain = copy.deepcopy(model)
        for m in plain.modules():
            if isinstance(m, QuantMixin):
                m.split_in = m.split_out = None
        assert torch.nn.functional.cosine_similarity(model(ids, mask), ref(ids, mask)).min() > \
            torch.nn.functional.cosine_similarity(plain(ids, mask), ref(ids, mask)).min()  # fmt: skip
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=(ids, mask))
    names = {n.name for n in onnx.load(str(result.path)).graph.node}
    assert "/encoder/encoder/layer.0/output/dense/MatMul_outlier_add" in names
    assert "/encoder/encoder/layer.1/intermediate/dense/MatMul_outlier_in_add" in names
    assert result.max_abs_error < 1e-5


def test_by_default_the_widest_up_projection_inputs_are_scaled_down_in_the_model_and_the_file(tmp_path):
    model = _local_bert(tmp_path / "bert", outliers=True)
    ref = copy.deepcopy(model)
    calib = [_batch(s) for s in range(2)]
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)  # split_outliers 1, scale_inputs 2
    up1 = model.get_submodule("encoder.encoder.layer.1.intermediate.dense")
    scaled = [i for i, s in enumerate(up1.in_scale.tolist()) if s != 1.0]
    assert 5 in scaled and up1.in_scale[5] > 1 and up1.split_in is None  # the planted channel, narrowed
    amax = torch.zeros(32)
    hook = ref.get_submodule("encoder.encoder.layer.1.intermediate.dense").register_forward_pre_hook(
        lambda m, a: amax.copy_(torch.maximum(amax, a[0].abs().reshape(-1, 32).amax(0))))  # fmt: skip
    with torch.no_grad():
        for ids, mask in calib:
            ref(ids, mask)
    hook.remove()
    assert torch.isclose(up1.in_scale[5], amax[5] / (4 * amax.median()))  # 4x the median channel's range
    with torch.no_grad():  # in float the scaling changes nothing: (x / s) . (w . s)
        up1.dynamic = False
        plain_up = nn.Linear(32, 64)
        plain_up.load_state_dict({"weight": up1.weight * up1.in_scale, "bias": up1.bias})
        x = torch.randn(3, 32)
        assert torch.allclose(plain_up(x / up1.in_scale), torch.nn.functional.linear(x, up1.weight, up1.bias),
                              atol=1e-5)  # fmt: skip
        up1.dynamic = True
    ids, mask = _batch(7)
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=(ids, mask))
    names = {n.name for n in onnx.load(str(result.path)).graph.node}
    assert "/encoder/encoder/layer.1/intermediate/dense/MatMul_in_scale" in names
    assert result.max_abs_error < 1e-5
    assert "(input channels [5" in dict(ds.quantization_report(model).quantized)[
        "encoder.encoder.layer.1.intermediate.dense"]  # fmt: skip


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_a_convnet_under_auto_calibrates_as_minmax_does():  # as before auto: test_quantize_auto_golden.py
    torch.manual_seed(0)
    net = _Net().eval()
    calib = [torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    auto = ds.quantize_(copy.deepcopy(net), ds.LinearQuantConfig(bits=8), calib_data=calib)
    minmax = ds.quantize_(copy.deepcopy(net), ds.LinearQuantConfig(bits=8, calibration="minmax"), calib_data=calib)
    assert ds.quantization_report(auto).calibration == "minmax" == ds.quantization_report(minmax).calibration
    assert ("fc", "int8 w per-channel / u8 act") in ds.quantization_report(auto).quantized  # the report as before
    a, b = auto.state_dict(), minmax.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(auto(calib[0]), minmax(calib[0]))
    assert ds.LinearQuantConfig().calibration is Calibration.AUTO


def test_the_config_round_trips_through_json_with_the_new_fields():
    dynamic = ds.LinearQuantConfig(calibration="dynamic", split_outliers=0, split_inputs=3, scale_inputs=0)
    for config in (ds.LinearQuantConfig(), dynamic):
        doc = config.to_dict()
        assert ds.LinearQuantConfig.from_dict(doc) == config
    assert ds.LinearQuantConfig().to_dict()["calibration"] == "auto"
    assert ds.LinearQuantConfig().channel_settings() == (1, 0, 2)
    assert ds.LinearQuantConfig(split_inputs=2).channel_settings() == (1, 2, 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"calibration": "dynamic", "qat": True}, "cannot be combined with qat=True"),
    ({"calibration": "dynamic", "activation_bits": None}, "cannot be combined with activation_bits=None"),
    ({"calibration": "dynamic", "bits": 4}, "cannot be combined with 4-bit weights"),
    ({"calibration": "dynamic", "overrides": {"fc": 6}}, "cannot be combined with 6-bit weights"),
    ({"calibration": "minmax", "split_outliers": 1}, "scale_inputs need calibration='dynamic'"),
    ({"split_inputs": -1}, "split_inputs must be a whole number >= 0"),
    ({"split_inputs": 1, "scale_inputs": 2}, "split_inputs and scale_inputs treat the same channels"),
])  # fmt: skip
def test_bad_dynamic_combinations_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ds.LinearQuantConfig(**kwargs)


def test_dynamic_int8_of_a_convnet_or_where_no_encoder_fuses_is_refused_by_name_and_leaves_the_model_alone():
    net = _Net().eval()
    before = copy.deepcopy(net.state_dict())
    calib = [torch.randn(4, 3, 10, 10)]
    with pytest.raises(ConfigError, match=r"conv \(Conv2d\) is not one: use calibration='minmax'"):
        ds.quantize_(net, ds.LinearQuantConfig(calibration="dynamic"), calib_data=calib)
    assert not any(isinstance(m, QuantMixin) for m in net.modules())  # left in float
    after = net.state_dict()  # the batch norm not folded into the convolution
    assert type(net.bn) is nn.BatchNorm2d and after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ConfigError, match="this model's calibration is 'minmax'"):
        ds.quantize_(net, ds.LinearQuantConfig(split_outliers=1), calib_data=calib)  # auto is minmax here
    assert type(net.bn) is nn.BatchNorm2d and torch.equal(net.conv.bias, before["conv.bias"])
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ConfigError, match="needs a Hugging Face BERT-style sentence encoder"):
        ds.quantize_(mlp, ds.LinearQuantConfig(calibration="dynamic"), calib_data=[torch.randn(4, 5, 6)])
    assert not any(isinstance(m, QuantMixin) for m in mlp.modules())


def test_a_query_quantized_without_its_key_and_value_is_refused_as_dynamic_and_auto_gives_minmax(tmp_path):
    model = _local_bert(tmp_path / "bert")
    skip = {"re:.*layer\\.1\\.attention\\.self\\.(key|value)": None}
    with pytest.raises(ConfigError, match="layer.1.attention.self.query is quantized without .*self.key: dynamic "
                                          "int8 fuses .* quantize all three or none"):  # fmt: skip
        ds.quantize_(model, ds.LinearQuantConfig(calibration="dynamic", overrides=skip), calib_data=[_batch(0)])
    assert not any(isinstance(m, QuantMixin) for m in model.modules())  # left in float
    ds.quantize_(model, ds.LinearQuantConfig(overrides=skip), calib_data=[_batch(0)])  # e.g. a sensitivity trial
    assert ds.quantization_report(model).calibration == "minmax"
    assert not any(m.dynamic for m in model.modules() if isinstance(m, QuantMixin))


def test_auto_is_dynamic_only_for_an_encoder_onnx_runtime_fuses(tmp_path):
    from deepslim.compress.quantize._dynamic import resolve
    from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_

    model = _local_bert(tmp_path / "bert")
    auto = ds.LinearQuantConfig()
    assert resolve(model, auto) is Calibration.DYNAMIC
    assert resolve(model, ds.LinearQuantConfig(bits=4)) is Calibration.MINMAX  # ORT's dynamic kernels are 8-bit
    assert resolve(model, ds.LinearQuantConfig(qat=True)) is Calibration.MINMAX
    assert resolve(model, ds.LinearQuantConfig(calibration="percentile")) is Calibration.PERCENTILE
    merged = merge_tokens_(copy.deepcopy(model), MergeTokensConfig(r=1))  # a merging graph is not fused
    assert resolve(merged, auto) is Calibration.MINMAX
    assert resolve(ds.create_model("vit_tiny"), auto) is Calibration.MINMAX  # the zoo's own transformer
