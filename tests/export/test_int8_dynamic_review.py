"""Dynamic int8's edges (review of issue 17): a BERT whose feed-forward activation ONNX Runtime does not fuse to
BiasGelu still exports under the default settings; gradients pass through dynamic layers (straight-through, as the
static fake-quant); the opset refusal says what to pass; a bf16 model runs; an Observer refuses auto/dynamic; an empty
batch is a DataError."""

import copy

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import Calibration, QuantMixin
from deepslim.errors import ConfigError, DataError, ExportError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
pytest.importorskip("onnxruntime")


def _local_bert(path, **config):
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40, **config)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                              [f"w{i}" for i in range(115)]))  # fmt: skip
    return ds.load_model(f"hf:{path}").eval()


def _batch(seed, n=6, t=12):
    ids = torch.randint(5, 120, (n, t), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1::2, 8:] = 0
    return ids, mask


@pytest.mark.parametrize("act", ["relu", "gelu_new"])
def test_a_bert_without_exact_gelu_quantizes_with_no_split_channels_and_exports(tmp_path, act):
    model = _local_bert(tmp_path / "bert", hidden_act=act)
    calib = [_batch(s) for s in range(2)]
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
    layers = [m for m in model.modules() if isinstance(m, QuantMixin)]
    assert len(layers) == 12 and all(m.dynamic for m in layers)
    assert all(m.split_in is None and m.split_out is None and m.in_scale is None for m in layers)
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=1), calib_data=calib)
    assert result.format == "fused-int8" and result.max_abs_error < 1e-4
    with pytest.raises(ConfigError, match="exact GELU, hidden_act='gelu'"):
        ds.quantize_(_local_bert(tmp_path / "b2", hidden_act=act), ds.LinearQuantConfig(split_outliers=1),
                     calib_data=calib)  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    float_model = _local_bert(tmp_path_factory.mktemp("bert"))
    quantized = ds.quantize_(copy.deepcopy(float_model), ds.LinearQuantConfig(bits=8),
                             calib_data=[_batch(s) for s in range(2)])  # fmt: skip
    return float_model, quantized


def test_gradients_flow_through_dynamic_layers_as_through_the_float_ones(pair):
    grads = []
    for model in pair:
        model.zero_grad()
        y = model(*_batch(3))  # unit-length embeddings: a fixed random direction of them, not their norm
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        grads.append({n: m.weight.grad for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantMixin))
                      and n.startswith("encoder.encoder.layer")})  # fmt: skip
    float_grads, int8_grads = grads
    assert len(int8_grads) == 12
    for name, g in int8_grads.items():  # was exactly 0: round() has no gradient
        assert g is not None and g.abs().max() > 0, name
        assert torch.nn.functional.cosine_similarity(g.flatten(), float_grads[name].flatten(), dim=0) > 0.99, name


def test_the_dynamic_forward_is_unchanged_by_the_straight_through_estimator():
    from deepslim.compress.quantize._dynamic import dynamic_u8

    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = dynamic_u8(x)
    with torch.no_grad():
        scale = (x.max() - x.min()) / 255.0
        zero = torch.round(-x.min() / scale)
        want = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    assert torch.equal(y, want)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_opset_17_and_the_default_are_accepted_and_another_is_refused_with_what_to_pass(pair, tmp_path):
    _, model = pair
    ok = ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=1), opset=17)
    assert ok.format == "fused-int8"
    with pytest.raises(ExportError, match="always written at opset 17; opset=16 cannot be honoured: pass opset=17"):
        ds.export_onnx(model, tmp_path / "n.onnx", example_input=_batch(9, n=1), opset=16)
    assert not (tmp_path / "n.onnx").exists()


def test_a_dynamic_model_with_scaled_channels_runs_in_bfloat16(tmp_path):
    model = _local_bert(tmp_path / "bert")
    with torch.no_grad():  # one wide LayerNorm channel: layer 1's up projection scales it down (in_scale)
        model.get_submodule("encoder.encoder.layer.1.attention.output.LayerNorm").weight[5] = 25.0
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[_batch(s) for s in range(2)])
    assert model.get_submodule("encoder.encoder.layer.1.intermediate.dense").in_scale[5] > 1
    half = copy.deepcopy(model).to(torch.bfloat16)
    ids, mask = _batch(4)
    with torch.no_grad():
        got, want = half(ids, mask), model(ids, mask)
    assert got.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(got.float(), want).min() > 0.98


@pytest.mark.parametrize("method", [Calibration.AUTO, Calibration.DYNAMIC])
def test_an_observer_refuses_auto_and_dynamic(method):
    from deepslim.compress.quantize.observers import Observer

    with pytest.raises(ConfigError, match=f"not '{method.value}': resolve calibration='auto' first"):
        Observer(method, 8)


def test_an_empty_batch_is_a_data_error():
    from deepslim.compress.quantize._dynamic import dynamic_u8

    with pytest.raises(DataError, match=r"empty input \(shape \(0, 12, 32\)\)"):
        dynamic_u8(torch.zeros(0, 12, 32))
