"""Graph lookups of the integer export on hand-written ONNX graphs: the fused graph's quantizable nodes by PyTorch
module (deepslim.export._mixed_int8.layer_nodes) and the QDQ rewrite's constant folding of initializers, Constant
nodes and Casts of them (deepslim.export.qdq._Graph.constant)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deepslim.export._mixed_int8 import layer_nodes
from deepslim.export.qdq import _Graph


def _model(nodes, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fused_nodes_are_listed_by_module_the_attention_by_its_self_module_or_its_own_name(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "enc.layer.0.output.dense.weight")
    table = numpy_helper.from_array(np.ones((4, 4), np.float32), "bert.embeddings.word_embeddings.weight")
    nodes = [
        helper.make_node("EmbedLayerNormalization", ["ids", "seg", "bert.embeddings.word_embeddings.weight"], ["e"],
                         name="EmbedLayerNorm_0", domain="com.microsoft"),
        helper.make_node("EmbedLayerNormalization", ["ids", "seg", "other_table"], ["e2"], name="Emb_1",
                         domain="com.microsoft"),
        helper.make_node("Attention", ["e"], ["a"], name="Attention_0", domain="com.microsoft"),
        helper.make_node("MatMul", ["a", "enc.layer.0.output.dense.weight"], ["m"],
                         name="/enc/layer.0/attention/output/dense/MatMul"),
        helper.make_node("Attention", ["e"], ["a2"], name="Attention_1", domain="com.microsoft"),
        helper.make_node("Add", ["a2", "a2"], ["s"], name="/enc/layer.1/attention/output/Add"),  # no MatMul reads it
        helper.make_node("Attention", ["e"], ["a3"], name="Attention_2", domain="com.microsoft"),  # not read at all
        helper.make_node("MatMul", ["m", "x"], ["y0"], name="/enc/layer.0/act/MatMul"),  # weight not constant
        helper.make_node("MatMul", ["m", "enc.layer.0.output.dense.weight"], ["y"],
                         name="/enc/layer.0/output/dense_outlier_down/MatMul"),  # the outlier path: not listed
    ]
    path = tmp_path / "fused.onnx"
    onnx.save(_model(nodes, [w, table]), str(path))
    assert layer_nodes(path) == {
        "bert.embeddings": "EmbedLayerNorm_0",
        "Emb_1": "Emb_1",
        "enc.layer.0.attention.self": "Attention_0",
        "enc.layer.0.attention.output.dense": "/enc/layer.0/attention/output/dense/MatMul",
        "Attention_1": "Attention_1",
        "Attention_2": "Attention_2",
    }


def test_constants_fold_through_initializers_constant_nodes_and_casts_to_uint8_or_float():
    init = numpy_helper.from_array(np.array([1.7, 200.0], np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([3, 4], np.int64))),
        helper.make_node("Cast", ["c"], ["c_u8"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["c"], ["c_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w"], ["w_u8"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["x"], ["x_f"], to=TensorProto.FLOAT),  # a graph input: not a constant
        helper.make_node("Relu", ["w"], ["r"]),
    ]
    g = _Graph(_model(nodes, [init]))
    assert np.array_equal(g.constant("w"), np.array([1.7, 200.0], np.float32))
    assert g.constant("c").tolist() == [3, 4]
    u8 = g.constant("c_u8")
    assert u8.dtype == np.uint8 and u8.tolist() == [3, 4]
    f = g.constant("c_f")
    assert f.dtype == np.float32 and f.tolist() == [3.0, 4.0]
    assert g.constant("w_u8").dtype == np.uint8 and g.constant("w_u8").tolist() == [1, 200]
    assert g.constant("x_f") is None and g.constant("r") is None and g.constant("nothing") is None
