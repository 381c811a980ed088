"""``deepslim.profile`` of a Hugging Face BERT's ONNX files counts what ``deepslim.profile`` of the PyTorch model
counts: the fp32 file exactly (ONNX shape inference leaves its products' shapes symbolic; one ONNX Runtime run
measures them), and the fused int8 file (QAttention, MatMulInteger, EmbedLayerNormalization, where shape inference
stops) up to the one outlier channel per feed-forward projection that the PyTorch int8 layer computes twice; the CLI
profiles and times the int8 file, and ``time_onnx`` labels every layer's attention and feed-forward time."""

import copy
import os

import pytest
import torch

import deepslim as ds
from deepslim.analysis.onnx_profile import time_onnx
from deepslim.cli import main
from deepslim.compress.quantize import QuantMixin
from tests.export.test_int8_dynamic_verbs import _local_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
pytest.importorskip("onnxruntime")

B, T, H, I = 1, 12, 32, 64  # batch, tokens, width, feed-forward width


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-layer config-built BERT loaded through ``hf:PATH``, its int8 twin, and both exported files."""
    path = tmp_path_factory.mktemp("bert")
    model = _local_bert(path / "bert")  # hidden 32, 4 heads, feed-forward 64, 2 layers
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.randint(5, 120, (4, T), generator=gen), torch.ones(4, T, dtype=torch.long)) for _ in range(2)]
    int8 = ds.quantize_(copy.deepcopy(model), ds.LinearQuantConfig(bits=8), calib_data=calib)
    fp_file = ds.export_onnx(model, path / "fp.onnx", example_input=calib[0]).path
    result = ds.export_onnx(int8, path / "q.onnx", example_input=calib[0], calib_data=calib)
    assert result.format == "fused-int8"
    return model, int8, fp_file, result.path


def _example():
    return torch.randint(5, 120, (B, T), generator=torch.Generator().manual_seed(1)), torch.ones(B, T, dtype=torch.long)


def test_the_exported_fp32_bert_counts_exactly_what_the_pytorch_model_counts(files):
    model, _, fp_file, _ = files
    counted = ds.profile(fp_file, input_shape=(B, T))
    per_layer = B * (4 * T * H * H + 2 * T * T * H + 2 * T * H * I)  # Q, K, V, O; QKᵀ and PV; the FFN
    assert counted.macs == ds.profile(model, _example()).macs == 2 * per_layer  # before the fix: 41,472 here
    assert not any("zero MACs" in w for w in counted.warnings)
    products = sorted(layer.macs for layer in counted.layers if layer.type == "MatMul")
    assert products == sorted([B * T * T * H] * 4 + [B * T * H * H] * 8 + [B * T * H * I] * 4)


def test_the_fused_int8_bert_counts_its_attention_and_linear_layers(files):
    model, int8, _, q_file = files
    counted = ds.profile(q_file, input_shape=(B, T))  # before the fix: an IndexError
    attention = [layer.macs for layer in counted.layers if layer.type == "QAttention"]
    assert attention == [B * T * H * 3 * H + 2 * B * T * T * H] * 2  # the Q/K/V projection, QKᵀ and PV
    assert {layer.type for layer in counted.layers if layer.macs} == {"QAttention", "MatMulInteger", "MatMul"}
    assert counted.macs == ds.profile(model, _example()).macs  # the file computes each split channel once
    # the PyTorch int8 layer multiplies the whole width in int8 and the split outlier channels again in float
    split = sum(B * T * (len(m.split_out) * m.in_features if m.split_out is not None else 0) +
                B * T * (len(m.split_in) * m.out_features if m.split_in is not None else 0)
                for m in int8.modules() if isinstance(m, QuantMixin))  # fmt: skip
    assert split > 0 and ds.profile(int8, _example()).macs - counted.macs == split
    three = ds.profile(q_file, input_shape=(3, T))  # the mask's batch is named as the ids' batch: it follows
    assert three.macs == 3 * counted.macs and three.warnings == ()


def test_the_cli_profiles_and_times_the_fused_int8_file(files, capsys):
    q_file = str(files[3])
    assert main(["profile", q_file, "--input-shape", f"{B},{T}"]) == 0  # before the fix: exit 1, IndexError
    assert main(["profile", q_file, "--time", "--runs", "2", "--input-shape", f"{B},{T}"]) == 0
    printed = capsys.readouterr().out
    assert "encoder.encoder.layer.1" in printed and "MACs not counted" not in printed


def test_time_onnx_labels_every_layer_of_the_fused_int8_file_with_attention_and_ffn_time(files):
    timed = time_onnx(files[3], input_shape=(B, T), runs=2, warmup=1)
    layers = {b.block: b.group_us for b in timed.by_block() if b.block.startswith("encoder.encoder.layer.")}
    assert sorted(layers) == ["encoder.encoder.layer.0", "encoder.encoder.layer.1"]
    assert all(groups.get("attention", 0) > 0 and groups.get("ffn", 0) > 0 for groups in layers.values())
    fused = [(n.block, n.group) for n in timed.nodes if n.op_type == "QAttention"]  # traced back by output tensor
    assert fused == [("encoder.encoder.layer.0", "attention"), ("encoder.encoder.layer.1", "attention")]
    assert {n.group for n in timed.nodes if n.block} == {"attention", "ffn"}  # no node of a layer left as other
