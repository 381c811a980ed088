"""SmoothQuant of the feed-forward output projections in the fused int8 export: the smoothed fp32 graph computes
the same function (a Mul before each projection, its weight rows scaled back), the scale follows the formula, and the
fp32 fallback still finds the smoothed projections."""

import numpy as np
import pytest
import torch

from tests import _hf_models as hf
from tests.export.test_torchscript_int8 import _batch, _tiny_encoder

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from deepslim.export import _torchscript as ts

    work = tmp_path_factory.mktemp("smooth")
    model = _tiny_encoder()
    with torch.no_grad():  # one input channel of the first projection far wider than the rest: what smoothing is for
        model.encoder.encoder.layer[0].intermediate.dense.bias[3] += 8.0
    ids, mask = _batch()
    ts._export_fp32(model, (ids, mask), work / "fp32.onnx", ["input_ids", "attention_mask"])
    ts._fuse(work / "fp32.onnx", work / "fused.onnx", 4, 32)
    feeds = [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}]
    return ts, work, feeds


@needs_hf
def test_smoothing_inserts_a_mul_per_projection_and_keeps_the_fp32_function(fused):
    import onnx

    ts, work, feeds = fused
    n = ts._smooth(work / "fused.onnx", work / "smoothed.onnx", feeds, 0.5)
    assert n == 2  # one feed-forward output projection per layer
    graph = onnx.load(str(work / "smoothed.onnx")).graph
    muls = [node for node in graph.node if node.name.endswith("_smooth")]
    assert len(muls) == 2
    order = [node.name for node in graph.node]
    for mul in muls:
        (reader,) = [node for node in graph.node if mul.output[0] in node.input]
        assert reader.op_type == "MatMul" and order.index(mul.name) < order.index(reader.name)
    assert ts._ffn_outputs(work / "smoothed.onnx") == ts._ffn_outputs(work / "fused.onnx")  # fallback still finds them
    before, after = ts._run(work / "fused.onnx", feeds), ts._run(work / "smoothed.onnx", feeds)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)


@needs_hf
def test_the_scale_is_activation_range_over_weight_range_balanced_by_alpha(fused):
    import onnx
    from onnx import numpy_helper

    from deepslim.export import _mixed_int8 as mixed

    ts, work, feeds = fused
    ts._smooth(work / "fused.onnx", work / "smoothed1.onnx", feeds, 1.0)
    name = ts._ffn_outputs(work / "fused.onnx")[0]
    (node,) = [n for n in onnx.load(str(work / "fused.onnx")).graph.node if n.name == name]
    amax = mixed.channel_max(work / "fused.onnx", [node.input[0]], feeds)[node.input[0]]
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(work / "smoothed1.onnx")).graph.initializer}
    # alpha = 1: s = max|x|, so every smoothed input channel has range 1
    np.testing.assert_allclose(1.0 / inits[f"{name}_smooth"], np.clip(amax, 1e-5, None), rtol=1e-5)
    assert amax.argmax() == 3  # the widened channel
