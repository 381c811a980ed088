"""``export_fused_int8`` and the ordinary verbs write one file where their features overlap: with the embeddings kept
fp32, no search and no smoothing, ``export_fused_int8(model, config=FusedInt8Config(split_outliers=1,
float_layers=("encoder.embeddings",)))`` is graph for graph what ``quantize_`` (dynamic, the same outlier channel) +
``export_onnx`` write — they share the export, fusion, splitting and quantization code. What keeps it a driver of its
own is what the ordinary path cannot express, and the default shows the first of those: int8 embedding tables."""

import copy

import onnx
import pytest

import deepslim as ds
from deepslim.export import FusedInt8Config, export_fused_int8
from tests.export.test_int8_dynamic_verbs import _batch, _local_bert

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
pytest.importorskip("onnxruntime")


def test_the_ordinary_verbs_write_export_fused_int8s_graph_with_fp32_embeddings_and_no_search(tmp_path):
    model = _local_bert(tmp_path / "bert", outliers=True)
    calib, example = [_batch(s) for s in range(3)], _batch(9, n=2)
    quantized = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(bits=8, split_outliers=1, scale_inputs=0),
                             calib_data=calib)  # fmt: skip
    verbs = ds.export_onnx(quantized, tmp_path / "verbs.onnx", example_input=example, calib_data=calib)
    names = ["input", "input_1"]  # export_onnx's input names
    fused = export_fused_int8(model, tmp_path / "fused.onnx", example_input=example, check_inputs=calib,
                              calib_inputs=calib, input_names=names,
                              config=FusedInt8Config(split_outliers=1, float_layers=("encoder.embeddings",)))
    assert fused.split_channels == {"encoder.encoder.layer.0.output.dense": [7],
                                    "encoder.encoder.layer.1.output.dense": [36]}  # fmt: skip
    assert onnx.load(str(verbs.path)).graph == onnx.load(str(fused.path)).graph  # nodes, int8 weights, scales
    default = export_fused_int8(model, tmp_path / "default.onnx", example_input=example, check_inputs=calib,
                                calib_inputs=calib, input_names=names, config=FusedInt8Config(split_outliers=1))
    ops = {n.op_type for n in onnx.load(str(default.path)).graph.node}
    assert "QEmbedLayerNormalization" in ops  # int8 embedding tables: quantize_ has no int8 nn.Embedding
    assert "QEmbedLayerNormalization" not in {n.op_type for n in onnx.load(str(verbs.path)).graph.node}
