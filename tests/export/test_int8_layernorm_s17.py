"""The dynamic int8 file normalizes with ONNX's ``LayerNormalization`` after plain ``Add``s, never ONNX Runtime's
``SkipLayerNormalization``, whose CPU kernel is a scalar loop (~3x the time of Add + LayerNormalization per element,
20-24 % of all-MiniLM-L6-v2's int8 time at every batch and length, session 17): the rewrite computes the same sums in
the same order, ONNX Runtime's session optimizer does not fuse it back, and the file still agrees with the quantized
PyTorch model."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deepslim as ds
from deepslim.export._dynamic_int8 import plain_layer_norms

ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")


def _skip_ln_file(path, *, bias: bool, total: bool, stats: bool = False):
    """One SkipLayerNormalization (hidden 8) on (batch, 3, 8) inputs; optional bias and sum output (both read)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) + 1, "gamma"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 3, "bias")]  # fmt: skip
    outs = ["y", "mean" if stats else "", "", "sum" if total else ""]
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"] + (["bias"] if bias else []),
                            outs, name="sln", domain="com.microsoft", epsilon=1e-5)  # fmt: skip
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, 8]) for n in ("x", "skip")]
    graph = helper.make_graph([node], "g", value, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outs if o], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft",
                                                                                                     1)])  # fmt: skip
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(path, feeds, optimized=None):
    opts = ort.SessionOptions()
    if optimized:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(("bias", "total"), [(True, False), (True, True), (False, True)])
def test_a_skip_layer_norm_becomes_add_and_layer_norm_with_the_same_outputs(tmp_path, bias, total):
    path = _skip_ln_file(tmp_path / "m.onnx", bias=bias, total=total)
    rng = np.random.default_rng(1)
    feeds = {n: (rng.standard_normal((4, 3, 8)) * 5).astype(np.float32) for n in ("x", "skip")}
    want = _run(path, feeds)
    assert plain_layer_norms(path) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops == (["Add", "Add"] if bias else ["Add"]) + ["LayerNormalization"]
    got = _run(path, feeds, optimized=tmp_path / "opt.onnx")
    for g, w in zip(got, want, strict=True):  # the normalized output and (when read) the sum, in the same order
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5)
    if total:
        np.testing.assert_array_equal(got[-1], want[-1])
    kept = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "SkipLayerNormalization" not in kept and "LayerNormalization" in kept  # not fused back


def test_a_skip_layer_norm_whose_statistics_are_read_is_left_alone(tmp_path):
    path = _skip_ln_file(tmp_path / "m.onnx", bias=True, total=False, stats=True)
    assert plain_layer_norms(path) == 0
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["SkipLayerNormalization"]


def test_the_dynamic_int8_file_of_a_bert_has_no_skip_layer_norm_and_agrees_with_pytorch(tmp_path):
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                                           [f"w{i}" for i in range(115)]))  # fmt: skip
    model = ds.load_model(f"hf:{tmp_path / 'bert'}").eval()
    gen = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(5, 120, (6, 12), generator=gen), "attention_mask": torch.ones(6, 12,
              dtype=torch.long)} for _ in range(3)]  # fmt: skip
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=calib)
    example = (calib[0]["input_ids"][:1], calib[0]["attention_mask"][:1])
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=example, calib_data=calib)
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 4  # 2 per layer
    ids = torch.randint(5, 120, (5, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1::2, 9:] = 0
    got = _run(result.path, {"input": ids.numpy(), "input_1": mask.numpy()}, optimized=tmp_path / "opt.onnx")[0]
    assert "SkipLayerNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    with torch.no_grad():
        want = model(ids, mask).numpy()
    assert np.abs(got - want).max() < 1e-5
