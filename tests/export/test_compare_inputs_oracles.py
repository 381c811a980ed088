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
