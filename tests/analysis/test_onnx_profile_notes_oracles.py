"""What profiling an ONNX file with a free batch dimension says: the dimension's name (or '?' when it has none) and
that it was profiled at 1; an input shape given leaves nothing to say; any other free dimension is refused by name."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deepslim as ds


def _conv_file(path, dims):
    w = numpy_helper.from_array(torch.randn(4, 3, 3, 3).numpy(), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(("batch", "shown"), [("N", "'N'"), (None, "'?'")], ids=["named", "unnamed"])
def test_a_free_batch_dimension_is_named_in_the_note_and_profiled_at_one(tmp_path, batch, shown):
    prof = ds.profile(_conv_file(tmp_path / "m.onnx", [batch, 3, 8, 8]))
    assert prof.warnings == (f"input 'x': free batch dimension {shown} profiled at 1",)
    assert prof.macs == 4 * 6 * 6 * 27  # batch 1, 3x3x3 kernels, 6x6 outputs


def test_a_given_input_shape_leaves_no_note_and_sets_the_batch(tmp_path):
    prof = ds.profile(_conv_file(tmp_path / "m.onnx", ["N", 3, 8, 8]), input_shape=(2, 3, 8, 8))
    assert prof.warnings == () and prof.macs == 2 * 4 * 6 * 6 * 27


def test_another_free_dimension_is_refused_naming_it(tmp_path):
    path = _conv_file(tmp_path / "m.onnx", ["N", 3, "H", None])
    with pytest.raises(ds.ConfigError, match=r"input 'x' has symbolic dimensions \(H, \?\); give its shape"):
        ds.profile(path)


def test_a_computing_node_moves_its_bytes_and_a_reshape_moves_none(tmp_path):
    w = numpy_helper.from_array(torch.randn(4, 3, 3, 3).numpy(), "w")
    shape = numpy_helper.from_array(torch.tensor([0, -1]).numpy(), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Reshape", ["y", "shape"], ["z"], name="flat")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [z], [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    conv, flat = ds.profile(tmp_path / "m.onnx").layers
    assert (conv.input_bytes, conv.output_bytes, conv.weight_bytes) == (3 * 8 * 8 * 4, 4 * 6 * 6 * 4, 4 * 27 * 4)
    assert (flat.input_bytes, flat.output_bytes, flat.macs) == (0, 0, 0)  # a view: nothing moved


def test_an_operator_it_cannot_count_is_refused_naming_it_and_the_flag_that_counts_it_as_zero(tmp_path):
    w = numpy_helper.from_array(torch.randn(4, 3, 3, 3).numpy(), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Mystery", ["y"], ["z"], name="odd", domain="com.example")]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [z], [w])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), tmp_path / "m.onnx")
    with pytest.raises(ds.UnsupportedOpError) as err:
        ds.profile(tmp_path / "m.onnx")
    assert str(err.value) == ("cannot count ONNX operator com.example.Mystery (node odd); pass strict=False "
                              "(CLI: --allow-unknown-ops) to count it as zero MACs")  # fmt: skip
    assert ds.profile(tmp_path / "m.onnx", strict=False).warnings == (
        "counted as zero MACs: com.example.Mystery (node odd)",)
