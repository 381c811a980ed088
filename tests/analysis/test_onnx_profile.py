import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deepslim as ds


def _graph_model(path, *, batch="N", custom=False):
    w = numpy_helper.from_array(torch.randn(8, 3, 3, 3).numpy(), "w")
    fc = numpy_helper.from_array(torch.randn(8 * 6 * 6, 10).numpy(), "fc")
    shape = numpy_helper.from_array(torch.tensor([0, -1]).numpy(), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"),
    ]
    if custom:
        nodes.append(helper.make_node("Mystery", ["y"], ["z"], name="odd", domain="com.example"))
    out = "z" if custom else "y"
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y_info = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], [w, fc, shape])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def test_hand_built_graph_golden(tmp_path):
    prof = ds.profile(_graph_model(tmp_path / "g.onnx", batch=2))
    assert prof.source == "onnx"
    assert prof.layer("conv").macs == 2 * 8 * 6 * 6 * 27
    assert prof.layer("fc").macs == 2 * 288 * 10
    assert prof.params == 8 * 27 + 288 * 10  # int64 shape constants are not parameters
    assert prof.layer("relu").other_ops == 2 * 288
    # peak: input (2*3*8*8*4 = 1536 B) + conv output (2*288*4 = 2304 B) while the conv runs; then conv + relu output
    assert prof.peak_activation_bytes == 2304 * 2


def test_a_free_batch_is_profiled_at_one_and_other_symbolic_dims_need_input_shape(tmp_path):
    path = _graph_model(tmp_path / "g.onnx")
    free = ds.profile(path)
    assert free.macs == 8 * 6 * 6 * 27 + 288 * 10 and any("profiled at 1" in w for w in free.warnings)
    assert ds.profile(path, input_shape=(2, 3, 8, 8)).macs == 2 * free.macs
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(model, str(tmp_path / "h.onnx"))
    with pytest.raises(ds.ConfigError, match="symbolic dimensions .height.*input_shape"):
        ds.profile(tmp_path / "h.onnx")
    assert ds.profile(tmp_path / "h.onnx", input_shape=(1, 3, 8, 8)).macs == free.macs
    with pytest.raises(ds.ConfigError, match="4 dimensions"):
        ds.profile(path, input_shape=(3, 8, 8))


def test_custom_operator_refused_unless_lenient(tmp_path):
    path = _graph_model(tmp_path / "c.onnx", batch=1, custom=True)
    with pytest.raises(ds.UnsupportedOpError, match="com.example.Mystery"):
        ds.profile(path)
    assert ds.profile(path, strict=False).warnings


def test_bad_files(tmp_path):
    with pytest.raises(ds.ModelLoadError, match="does not exist"):
        ds.profile(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ds.ModelLoadError, match="not a readable ONNX model"):
        ds.profile(tmp_path / "junk.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_model_matches_pytorch_profile(tmp_path):
    model = ds.create_model("lenet5", input_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    torch.onnx.export(model, (x,), tmp_path / "l.onnx", dynamo=False)
    onnx_prof, torch_prof = ds.profile(tmp_path / "l.onnx"), ds.profile(model, x)
    assert onnx_prof.macs == torch_prof.macs == 537_000
    assert onnx_prof.params == torch_prof.params  # no batch norm to fold
