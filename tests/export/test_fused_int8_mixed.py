"""Mixed precision in the fused int8 export: projections named by their PyTorch modules stay fp32 bit for bit, the
chosen set round-trips through the config and reproduces the file, and splitting the widest GELU channel into an
fp32 path keeps the fp32 function while making int8 closer to it."""

import json

import numpy as np
import pytest
import torch

from deepslim.errors import ConfigError
from tests import _hf_models as hf
from tests.export.test_torchscript_int8 import _batch, _tiny_encoder

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")
FFN0 = "encoder.encoder.layer.0.output.dense"
FFN0_NODE = "/encoder/encoder/layer.0/output/dense/MatMul"  # TorchScript's scope names


def _outlier_model():
    model = _tiny_encoder()
    with torch.no_grad():  # one GELU channel of layer 0 far wider than the rest: what splitting is for
        model.encoder.encoder.layer[0].intermediate.dense.bias[3] += 12.0
    return model


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from deepslim.export import _torchscript as ts

    work = tmp_path_factory.mktemp("mixed")
    model = _outlier_model()
    ids, mask = _batch()
    ts._export_fp32(model, (ids, mask), work / "fp32.onnx", ["input_ids", "attention_mask"])
    ts._fuse(work / "fp32.onnx", work / "fused.onnx", 4, 32)
    return model, work, [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}]


def _export(model, path, config):
    from deepslim.export._torchscript import export_fused_int8

    return export_fused_int8(model, path, example_input=_batch(2), check_inputs=[_batch()], config=config)


def _weights(path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.name: (n.op_type, inits.get(n.input[1])) for n in graph.node if len(n.input) > 1}


@needs_hf
def test_layers_are_named_by_their_pytorch_modules_attention_by_its_self_module(fused):
    from deepslim.export._mixed_int8 import layer_nodes

    _, work, _ = fused
    layers = layer_nodes(work / "fused.onnx")
    layer0 = "encoder.encoder.layer.0."
    assert list(layers)[1:5] == [layer0 + "attention.self", layer0 + "attention.output.dense",
                                 layer0 + "intermediate.dense", FFN0]  # fmt: skip
    assert len(layers) == 9 and layers["encoder.encoder.layer.1.attention.self"] == "Attention_1"
    assert layers["encoder.embeddings"] == "EmbedLayerNormalization_0"  # its tables are quantized too


@needs_hf
def test_a_projection_kept_float_is_bit_identical_to_the_fp32_one(fused, tmp_path):
    from deepslim.export._dynamic_int8 import plain_layer_norms
    from deepslim.export._mixed_int8 import FusedInt8Config
    from deepslim.export._torchscript import _run

    model, work, feeds = fused
    r = _export(model, tmp_path / "one.onnx", FusedInt8Config(float_layers=(FFN0,)))
    node = FFN0_NODE
    op, weight = _weights(tmp_path / "one.onnx")[node]
    assert op == "MatMul" and r.float_nodes == (node,)
    np.testing.assert_array_equal(weight, _weights(work / "fused.onnx")[node][1])
    np.testing.assert_array_equal(weight, model.encoder.encoder.layer[0].output.dense.weight.detach().numpy().T)
    assert sum(o in ("DynamicQuantizeMatMul", "MatMulInteger") for o, _ in _weights(tmp_path / "one.onnx").values())
    everything = _export(model, tmp_path / "all.onnx", FusedInt8Config(float_layers=("re:.*",)))
    assert len(everything.float_nodes) == 9  # every projection fp32: the very fp32 graph's outputs
    plain = tmp_path / "fused-plain.onnx"  # the fp32 graph with the int8 file's Add + LayerNormalization
    plain.write_bytes((work / "fused.onnx").read_bytes())
    assert plain_layer_norms(plain) == 4
    np.testing.assert_array_equal(_run(tmp_path / "all.onnx", feeds), _run(plain, feeds))


@needs_hf
def test_the_searched_set_round_trips_through_the_config_and_reproduces_the_file(fused, tmp_path):
    from deepslim.export._mixed_int8 import FusedInt8Config
    from deepslim.export._torchscript import _run

    model, _, feeds = fused
    base = _export(model, tmp_path / "base.onnx", FusedInt8Config())
    one = _export(model, tmp_path / "one.onnx", FusedInt8Config(float_layers=(FFN0,)))  # the widened channel's
    target = (base.cosine_mean + one.cosine_mean) / 2  # all int8 misses it: the search must keep some fp32
    assert one.cosine_mean > base.cosine_mean
    r = _export(model, tmp_path / "a.onnx", FusedInt8Config(min_cosine=target, max_float=9))
    assert r.cosine_mean >= target and r.float_nodes and len(r.sensitivity) == 9
    gains = [row.gain_per_mweight for row in r.sensitivity]
    assert gains == sorted(gains, reverse=True)
    row = next(t for t in r.sensitivity if t.layer == FFN0)  # against the file exported with only it in fp32
    assert row.cosine_mean == pytest.approx(one.cosine_mean, abs=1e-6)
    assert row.gain == pytest.approx(one.cosine_mean - base.cosine_mean, abs=1e-6)
    assert row.gain_per_mweight == pytest.approx(row.gain / row.weights * 1e6) and row.weights == 64 * 32
    assert list(r.config.float_layers) == [row.layer for row in r.sensitivity][: len(r.float_nodes)]
    from deepslim.export._torchscript import fused_int8_sensitivity

    table = fused_int8_sensitivity(model, example_input=_batch(2), check_inputs=[_batch()])  # the same, no file
    assert [(t.layer, t.cosine_mean) for t in table] == [(t.layer, t.cosine_mean) for t in r.sensitivity]
    assert json.loads(json.dumps(row.to_dict())) == {"layer": FFN0, "cosine_mean": row.cosine_mean,
                                                     "cosine_min": row.cosine_min, "gain": row.gain,
                                                     "weights": row.weights, "gain_per_mweight": row.gain_per_mweight}
    with pytest.raises(AttributeError):
        row.gain = 1.0  # a frozen record  # type: ignore[misc]
    again = FusedInt8Config.from_dict(json.loads(json.dumps(r.config.to_dict())))
    assert again == r.config and again.min_cosine == 0.0
    rr = _export(model, tmp_path / "b.onnx", again)
    assert rr.float_nodes == r.float_nodes and rr.cosine_mean == r.cosine_mean
    np.testing.assert_array_equal(_run(tmp_path / "b.onnx", feeds), _run(tmp_path / "a.onnx", feeds))


@needs_hf
def test_splitting_the_widest_channel_keeps_the_fp32_function_and_helps_int8(fused, tmp_path):
    from deepslim.export._mixed_int8 import FusedInt8Config, outlier_nodes, split_outliers
    from deepslim.export._torchscript import _run

    model, work, feeds = fused
    split = split_outliers(work / "fused.onnx", tmp_path / "split.onnx", feeds, 1)
    assert split[FFN0] == [3]  # the widened channel
    assert len(outlier_nodes(tmp_path / "split.onnx")) == 8  # up, GELU, down, add per layer
    np.testing.assert_allclose(_run(tmp_path / "split.onnx", feeds), _run(work / "fused.onnx", feeds), atol=1e-5)
    plain = _export(model, tmp_path / "plain.onnx", FusedInt8Config())
    r = _export(model, tmp_path / "s.onnx", FusedInt8Config(split_outliers=1))
    assert r.split_channels == split and r.cosine_mean > plain.cosine_mean
    kinds = {n: op for n, (op, _) in _weights(tmp_path / "s.onnx").items()}
    assert kinds[f"{FFN0_NODE}_outlier_down"] == "MatMul"  # the outlier path stays fp32


@needs_hf
def test_bad_mixed_precision_settings_are_refused_with_what_to_do(fused, tmp_path):
    from deepslim.export._mixed_int8 import FusedInt8Config
    from deepslim.export._torchscript import export_fused_int8

    model = fused[0]
    with pytest.raises(ConfigError, match=r"matches no quantizable projection; there are: .*layer\.0\.output\.dense"):
        _export(model, tmp_path / "x.onnx", FusedInt8Config(float_layers=("layer.9.output.dense",)))
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ConfigError, match="not both"):
        export_fused_int8(model, tmp_path / "x.onnx", example_input=_batch(2), config=FusedInt8Config(), min_cosine=0.9)
    with pytest.raises(ConfigError, match=r"select must be one of \['sensitivity', 'ffn_first'\], got 'random'"):
        FusedInt8Config(select="random")
    with pytest.raises(ConfigError, match=r"select must be one of 'sensitivity', 'ffn_first', got 'GAIN'"):
        FusedInt8Config.from_dict({"select": "GAIN"})
    with pytest.raises(ConfigError, match="float_layers"):
        FusedInt8Config.from_dict({"float_layers": "layer.0"})
    with pytest.raises(ConfigError, match="float_layers must be a list"):
        FusedInt8Config(float_layers="layer.0")  # not split into letters
    for bad in ({"max_float": 2.5}, {"split_outliers": True}, {"split_inputs": -1}):
        with pytest.raises(ConfigError, match="must be a whole number"):
            FusedInt8Config(**bad)
    with pytest.raises(ConfigError, match="smooth cannot be combined"):
        FusedInt8Config(smooth=0.5, split_outliers=1)  # the smoothing Mul would hide the blocks: no silent no-op


@needs_hf
def test_splitting_the_widest_layernorm_channel_keeps_the_fp32_function_and_helps_int8(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepslim.export import _torchscript as ts
    from deepslim.export._mixed_int8 import FusedInt8Config, outlier_nodes, split_inputs

    model = _tiny_encoder()
    with torch.no_grad():  # channel 5 of the LayerNorm feeding layer 0's up projection far wider than the rest
        model.encoder.encoder.layer[0].attention.output.LayerNorm.weight[5] = 30.0
    ids, mask = _batch()
    feeds = [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}]
    ts._export_fp32(model, (ids, mask), tmp_path / "fp32.onnx", ["input_ids", "attention_mask"])
    ts._fuse(tmp_path / "fp32.onnx", tmp_path / "fused.onnx", 4, 32)
    with pytest.raises(ConfigError, match="below the hidden width"):
        split_inputs(tmp_path / "fused.onnx", tmp_path / "in.onnx", feeds, 10_000)
    split = split_inputs(tmp_path / "fused.onnx", tmp_path / "in.onnx", feeds, 1)
    assert split["encoder.encoder.layer.0.intermediate.dense"] == [5] and len(split) == 2  # one per layer
    assert len(outlier_nodes(tmp_path / "in.onnx")) == 8  # mask, gather, rank-k MatMul, add per layer
    np.testing.assert_allclose(ts._run(tmp_path / "in.onnx", feeds), ts._run(tmp_path / "fused.onnx", feeds), atol=1e-5)
    plain = _export(model, tmp_path / "plain.onnx", FusedInt8Config())
    r = _export(model, tmp_path / "s.onnx", FusedInt8Config(split_inputs=1))
    assert r.split_channels == split and r.cosine_mean > plain.cosine_mean


def test_select_is_an_enum_that_round_trips_through_json_and_loads_the_old_strings():
    from deepslim.export._mixed_int8 import FloatSelection, FusedInt8Config

    assert FusedInt8Config().select is FloatSelection.GAIN_PER_WEIGHT
    for member in FloatSelection:
        config = FusedInt8Config(select=member, min_cosine=0.99, float_layers=("re:.*output.dense",))
        data = json.loads(json.dumps(config.to_dict()))
        assert data["select"] == member.value and FusedInt8Config.from_dict(data) == config
    old = FusedInt8Config.from_dict({"select": "ffn_first", "min_cosine": 0.995})  # a session-7 JSON config
    assert old.select is FloatSelection.FFN_OUTPUTS and FusedInt8Config(select="sensitivity") == FusedInt8Config()


@needs_hf
def test_the_int8_weights_are_quantized_per_output_channel(fused, tmp_path):
    import onnx
    from onnx import numpy_helper

    from deepslim.export import _torchscript as ts

    model, work, _ = fused
    ts._quantize(work / "fused.onnx", tmp_path / "q.onnx", [])
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    where = {"DynamicQuantizeMatMul": 2, "QAttention": 4, "MatMulInteger": 3}  # b_scale, weight_scale, b_zero_point
    scales = [inits[n.input[where[n.op_type]]] for n in graph.node
              if n.op_type in where and len(n.input) > where[n.op_type] and n.input[where[n.op_type]] in inits]
    assert scales, sorted({n.op_type for n in graph.node})
    # one scale per output column (per channel), not one per tensor: a whole-tensor scale loses the small columns
    assert all(np.asarray(s).size > 1 for s in scales), [np.asarray(s).size for s in scales]
