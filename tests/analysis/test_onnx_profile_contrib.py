"""ONNX Runtime's own operators (``com.microsoft``) in ``deepslim.profile(FILE.onnx)``: each MAC-carrying one counts
what the same arithmetic costs written as standard operators or in PyTorch (ONNX Runtime runs each graph, so the
graph means what the count assumes); an operator it cannot count and a matrix product whose shapes stay unknown are
named, never counted as zero in silence; ``profile FILE --time`` still times a file whose count refuses."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deepslim as ds
from deepslim.cli import main

ort = pytest.importorskip("onnxruntime")
MS = helper.make_opsetid("com.microsoft", 1)


def _save(path, nodes, inputs, outputs, inits=(), opsets=(MS,)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *opsets]), path)
    return path


def _run(path, **feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize(("trans_a", "trans_batch_a", "perm"), [(0, 1, (1, 0, 2)), (1, 0, (0, 2, 1)),
                                                                 (1, 1, (1, 2, 0))])  # fmt: skip
def test_fused_matmul_counts_what_the_transpose_and_matmul_it_replaces_count(tmp_path, trans_a, trans_batch_a, perm):
    rng = np.random.default_rng(0)
    stored = [0, 0, 0]
    for axis, size in zip(perm, (2, 3, 4), strict=True):  # A as stored: transposed by perm it is (batch, M, K)
        stored[axis] = size
    a = rng.standard_normal(stored).astype(np.float32)
    b = rng.standard_normal([2, 4, 6]).astype(np.float32)
    fused = _save(tmp_path / "f.onnx", [helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="fm",
                                                         domain="com.microsoft", transA=trans_a,
                                                         transBatchA=trans_batch_a)],
                  [("a", stored)], ["y"], [("b", b)])  # fmt: skip
    plain = _save(tmp_path / "p.onnx", [helper.make_node("Transpose", ["a"], ["t"], perm=list(perm)),
                                        helper.make_node("MatMul", ["t", "b"], ["y"], name="mm")],
                  [("a", stored)], ["y"], [("b", b)], opsets=())  # fmt: skip
    assert np.allclose(_run(fused, a=a), _run(plain, a=a), atol=1e-5)  # the attributes mean what the count reads
    assert ds.profile(fused).layer("fm").macs == ds.profile(plain).layer("mm").macs == 2 * 3 * 6 * 4


class _Attention(torch.nn.Module):
    """What com.microsoft.Attention computes: x @ W + b split into Q, K, V of (q, q, v) columns, per head
    softmax(QKᵀ / sqrt(d)) V."""

    def __init__(self, weight, bias, heads, sizes):
        super().__init__()
        self.weight, self.bias, self.heads, self.sizes = torch.tensor(weight), torch.tensor(bias), heads, sizes

    def forward(self, x):
        q, k, v = torch.split(torch.matmul(x, self.weight) + self.bias, self.sizes, dim=-1)
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1)
        return torch.matmul(att, v).transpose(1, 2).reshape(b, s, -1)


@pytest.mark.parametrize("sizes", [(8, 8, 8), (8, 8, 4)])
def test_fused_attention_counts_the_projection_and_both_attention_products_as_pytorch_does(tmp_path, sizes):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal([6, sum(sizes)]).astype(np.float32)
    bias = rng.standard_normal([sum(sizes)]).astype(np.float32)
    attrs = {"num_heads": 2} | ({"qkv_hidden_sizes": list(sizes)} if sizes[2] != sizes[0] else {})
    path = _save(tmp_path / "a.onnx", [helper.make_node("Attention", ["x", "w", "b"], ["y"], name="att",
                                                        domain="com.microsoft", **attrs)],
                 [("x", [2, 5, 6])], ["y"], [("w", weight), ("b", bias)])  # fmt: skip
    x = rng.standard_normal([2, 5, 6]).astype(np.float32)
    module = _Attention(weight, bias, 2, list(sizes))
    with torch.no_grad():
        assert np.allclose(_run(path, x=x), module(torch.tensor(x)).numpy(), atol=1e-5)
    counted = ds.profile(path).layer("att").macs
    assert counted == ds.profile(module, torch.tensor(x)).macs == 2 * 5 * 6 * sum(sizes) + 2 * 5 * 5 * (8 + sizes[2])


def test_multi_head_attention_counts_qk_and_pv_over_the_key_length(tmp_path):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ([1, 5, 8], [1, 7, 8], [1, 7, 4]))
    path = _save(tmp_path / "m.onnx", [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], name="mha",
                                                        domain="com.microsoft", num_heads=2)],
                 [("q", [1, 5, 8]), ("k", [1, 7, 8]), ("v", [1, 7, 4])], ["y"])  # fmt: skip
    heads = [t.reshape(1, -1, 2, t.shape[-1] // 2).transpose(0, 2, 1, 3) for t in (q, k, v)]
    att = heads[0] @ heads[1].transpose(0, 1, 3, 2) / np.sqrt(4)
    att = np.exp(att - att.max(-1, keepdims=True))
    want = ((att / att.sum(-1, keepdims=True)) @ heads[2]).transpose(0, 2, 1, 3).reshape(1, 5, 4)
    assert np.allclose(_run(path, q=q, k=k, v=v), want, atol=1e-5)
    assert ds.profile(path).layer("mha").macs == 5 * 7 * (8 + 4)


def _product_graph(op, **attrs):
    """(node, inputs, initializers) for a (5 x 8) by (8 x 6) product written as ``op``."""
    rng = np.random.default_rng(0)
    a = ("a", [1, 5, 8])
    w8 = rng.integers(-100, 100, [8, 6]).astype(np.int8)
    scale, zero = np.float32(0.05), np.uint8(128)
    table = {
        "DynamicQuantizeMatMul": (["a", "w8", "s"], [a], [("w8", w8), ("s", scale)]),
        "MatMulIntegerToFloat": (["a8", "w8", "sa", "s", "za"], [a], [("w8", w8), ("s", scale)]),
        "FusedGemm": (["a", "w", "c"], [("a", [8, 5])], [("w", rng.standard_normal([8, 6]).astype(np.float32)),
                                                         ("c", np.zeros(6, np.float32))]),
        "QGemm": (["a8", "s", "z", "w8", "s", "zw", "c"], [], [("w8", w8), ("s", scale), ("z", zero),
                                                               ("zw", np.int8(0)), ("c", np.zeros(6, np.int32))]),
    }  # fmt: skip
    names, inputs, inits = table[op]
    nodes = [helper.make_node(op, names, ["y"], name="prod", domain="com.microsoft", **attrs)]
    if op == "MatMulIntegerToFloat":  # a u8 input with its own scale
        nodes.insert(0, helper.make_node("DynamicQuantizeLinear", ["a"], ["a8", "sa", "za"]))
    if op == "QGemm":  # a u8 (K, M) input, transposed by transA
        nodes.insert(0, helper.make_node("QuantizeLinear", ["a", "s", "z"], ["a8"]))
        inputs = [("a", [8, 5])]
    return nodes, inputs, inits


@pytest.mark.parametrize(("op", "attrs"), [("DynamicQuantizeMatMul", {}), ("MatMulIntegerToFloat", {}),
                                           ("FusedGemm", {"transA": 1, "activation": "Relu"}),
                                           ("QGemm", {"transA": 1})])  # fmt: skip
def test_onnx_runtimes_matrix_products_count_output_times_the_summed_dimension(tmp_path, op, attrs):
    nodes, inputs, inits = _product_graph(op, **attrs)
    path = _save(tmp_path / "p.onnx", nodes, inputs, ["y"], inits)
    feed = {"a": np.random.default_rng(1).standard_normal(inputs[0][1]).astype(np.float32)}
    assert _run(path, **feed).size == 5 * 6  # ONNX Runtime reads the graph as a (5 x 8) by (8 x 6) product
    assert ds.profile(path).layer("prod").macs == 5 * 6 * 8


def test_a_fused_convolution_counts_what_the_convolution_and_relu_it_replaces_count(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal([4, 3, 3, 3]).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    fused = _save(tmp_path / "f.onnx", [helper.make_node("FusedConv", ["x", "w", "b"], ["y"], name="conv",
                                                         domain="com.microsoft", activation="Relu")],
                  [("x", [1, 3, 8, 8])], ["y"], [("w", w), ("b", b)])  # fmt: skip
    plain = _save(tmp_path / "p.onnx", [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
                                        helper.make_node("Relu", ["c"], ["y"])],
                  [("x", [1, 3, 8, 8])], ["y"], [("w", w), ("b", b)], opsets=())  # fmt: skip
    x = rng.standard_normal([1, 3, 8, 8]).astype(np.float32)
    assert np.allclose(_run(fused, x=x), _run(plain, x=x), atol=1e-5)
    assert ds.profile(fused).layer("conv").macs == ds.profile(plain).layer("conv").macs == 4 * 6 * 6 * 27


def test_an_onnx_runtime_operator_it_cannot_count_is_refused_by_name_and_its_normalizations_cost_no_macs(tmp_path):
    ln = _save(tmp_path / "ln.onnx", [helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"],
                                                       name="skip_ln", domain="com.microsoft")],
               [("x", [1, 4, 8]), ("s", [1, 4, 8])], ["y"], [("g", np.ones(8, np.float32)),
                                                             ("b", np.zeros(8, np.float32))])  # fmt: skip
    assert ds.profile(ln).layer("skip_ln").macs == 0 and ds.profile(ln).layer("skip_ln").other_ops == 32
    node = helper.make_node("CDist", ["x", "w"], ["y"], name="cd", domain="com.microsoft")
    cdist = _save(tmp_path / "cd.onnx", [node],
                  [("x", [4, 8])], ["y"], [("w", np.ones([3, 8], np.float32))])  # fmt: skip
    with pytest.raises(ds.UnsupportedOpError, match=r"^cannot count ONNX operator com.microsoft.CDist \(node cd\)"):
        ds.profile(cdist)  # before: counted as 0 MACs without a word
    assert ds.profile(cdist, strict=False).warnings == ("counted as zero MACs: com.microsoft.CDist (node cd)",)


def test_a_product_whose_shapes_stay_unknown_is_named_not_counted_as_zero(tmp_path):
    nodes = [helper.make_node("Mystery", ["x"], ["h"], name="odd", domain="com.example"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]  # fmt: skip
    path = _save(tmp_path / "u.onnx", nodes, [("x", [1, 4, 8])], ["y"], [("w", np.ones([8, 3], np.float32))],
                 opsets=(helper.make_opsetid("com.example", 1),))  # fmt: skip
    with pytest.raises(ds.UnsupportedOpError) as err:
        ds.profile(path)  # before: an IndexError from the MatMul's unknown input shape
    assert str(err.value) == ("cannot count ONNX operator com.example.Mystery (node odd); no shape known for MatMul "
                              "(node mm: tensor h); pass strict=False (CLI: --allow-unknown-ops) to count it as zero "
                              "MACs")  # fmt: skip
    lenient = ds.profile(path, strict=False)
    assert (
        lenient.macs == 0
        and lenient.warnings[-1] == "counted as zero MACs: no shape known for MatMul (node mm: tensor h)"
    )
    assert lenient.warnings[0].startswith("ONNX Runtime could not run the file to measure 2 tensor shapes")


def test_profile_time_still_times_a_file_whose_count_refuses_and_says_so_on_one_line(tmp_path, capsys):
    w = np.random.default_rng(0).standard_normal([8, 3]).astype(np.float32)
    node = helper.make_node("Einsum", ["x", "w"], ["y"], name="ein", equation="bij,jk->bik")
    path = _save(tmp_path / "e.onnx", [node],
                 [("x", [1, 4, 8])], ["y"], [("w", w)], opsets=())  # fmt: skip
    assert main(["profile", str(path)]) == 2
    assert "cannot count ONNX operator Einsum (node ein)" in capsys.readouterr().err
    assert main(["profile", str(path), "--time", "--runs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("MACs not counted: cannot count ONNX operator Einsum (node ein)") == 1
    assert "total" in printed  # the measured table
