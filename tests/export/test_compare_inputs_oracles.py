"""compare() of two ONNX files given only an input shape feeds each file in its own input dtype, as benchmark()
does: two token-id models (int64 inputs, symbolic batch and sequence) are measured, not refused for a float feed."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deepslim as ds


def _token_model(path):
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32), "emb")
    node = helper.make_node("Gather", ["emb", "ids"], ["y"], name="lookup")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", [ids], [y], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_two_token_id_files_are_compared_at_the_given_shape_in_their_own_dtype(tmp_path):
    """Before the fix compare() built a float tensor from input_shape for files too: ONNX Runtime refused it
    ("Unexpected input data type. Actual: (tensor(float)), expected: (tensor(int64))")."""
    path = _token_model(tmp_path / "ids.onnx")
    result = ds.compare(path, path, input_shape=(2, 8), rounds=1, block=2)
    assert result.a.runs == result.b.runs == 2 and result.a.runtime == result.b.runtime == "onnxruntime"
    assert result.a.median_ms > 0 and result.b.median_ms > 0
    with pytest.raises(ds.DeepSlimError, match=r"symbolic input shape .*give input_shape"):
        ds.compare(path, path, rounds=1, block=1)  # the sequence length is free: the shape is needed


def _relu_file(path, dims, elem=TensorProto.FLOAT):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    x = helper.make_tensor_value_info("x", elem, dims)
    y = helper.make_tensor_value_info("y", elem, None)
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)  # fmt: skip
    return path


def test_a_file_is_fed_its_static_shape_or_batch_one_for_a_free_batch(tmp_path):
    from deepslim.export.bench import _onnx_feed

    static = _onnx_feed(_relu_file(tmp_path / "s.onnx", [3, 5]), None, None)
    assert static.shape == (3, 5) and static.dtype == np.float32  # a fixed batch of 3 is measured at 3
    free = _onnx_feed(_relu_file(tmp_path / "f.onnx", ["batch", 5]), None, None)
    assert free.shape == (1, 5)  # a free batch at 1
    assert _onnx_feed(tmp_path / "f.onnx", None, (4, 5)).shape == (4, 5)


def test_an_unreadable_onnx_file_is_refused_with_the_command_that_writes_one(tmp_path):
    from deepslim.export.bench import _input_spec

    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ds.ModelLoadError, match=r"not a readable ONNX model .*; export it again "
                                               r"\(deepslim export MODEL -o FILE\.onnx\)$"):  # fmt: skip
        _input_spec(tmp_path / "junk.onnx")
