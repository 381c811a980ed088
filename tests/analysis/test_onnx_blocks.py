"""The measured block view: per-node times from ONNX Runtime's profiler mapped back to blocks and to attention / FFN /
embeddings / other (deepslim.analysis.blocks, deepslim.analysis.onnx_profile.time_onnx)."""

from __future__ import annotations

import json

import pytest
import torch
from onnx import TensorProto, helper

from deepslim.analysis.blocks import OUTSIDE, classify, label_nodes, node_times, run_times, time_profile
from deepslim.analysis.onnx_profile import time_onnx
from deepslim.errors import ConfigError, ModelLoadError


@pytest.mark.parametrize("path, expected", [
    ("encoder.embeddings.word_embeddings", ("", "embeddings")),
    ("patch_embed", ("", "embeddings")),
    ("head", ("", "other")),
    ("", ("", "other")),
    ("encoder.encoder.layer.0.attention.self.query", ("encoder.encoder.layer.0", "attention")),
    ("encoder.encoder.layer.3.attention.output.LayerNorm", ("encoder.encoder.layer.3", "attention")),
    ("encoder.encoder.layer.3.intermediate.dense", ("encoder.encoder.layer.3", "ffn")),
    ("encoder.encoder.layer.3.output.dense", ("encoder.encoder.layer.3", "ffn")),
    ("blocks.0.ln1", ("blocks.0", "attention")),
    ("blocks.11.ln2", ("blocks.11", "ffn")),
    ("blocks.2.mlp.0", ("blocks.2", "ffn")),
    ("blocks.2", ("blocks.2", "other")),
    ("vit.encoder.layer.1.layernorm_before", ("vit.encoder.layer.1", "attention")),
    ("vit.encoder.layer.1.attention.attention.value", ("vit.encoder.layer.1", "attention")),
    ("transformer.h.4.mlp.c_fc", ("transformer.h.4", "ffn")),
])  # fmt: skip
def test_module_paths_are_classified_into_a_block_and_a_group(path, expected):
    assert classify(path) == expected


def _node(op: str, inputs: list[str], outputs: list[str], name: str, scopes: list[str] | None = None):
    node = helper.make_node(op, inputs, outputs, name=name)
    if scopes is not None:
        prop = node.metadata_props.add()
        prop.key, prop.value = "pkg.torch.onnx.name_scopes", repr(scopes)
    return node


def _graph(nodes):
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])  # fmt: skip


def _executed_and_original():
    """A two-block encoder as ONNX Runtime ran it (fused names, dynamo metadata, TorchScript names, unscoped
    nodes), and the exported graph it came from."""
    executed = _graph([
        _node("Cast", ["x"], ["x32"], "Cast_inserted"),                                     # unscoped, before blocks
        _node("Gather", ["x32"], ["emb"], "/embed/Gather"),                                   # TorchScript name
        _node("MatMul", ["emb"], ["qkv"], "node_qkv", ["", "blocks.0", "blocks.0.attn", "blocks.0.attn.qkv", "linear"]),
        _node("Softmax", ["qkv"], ["p"], "node_softmax", ["", "softmax"]),                    # root scope: dataflow
        _node("Add", ["emb", "p"], ["h"], "node_add_res"),                                    # residual: other
        _node("FusedMatMul", ["h"], ["f1"], "Fused_0"),                                       # traced via original
        _node("Gelu", ["f1"], ["f2"], "Gelu_0"),                                              # output name has path
        _node("Attention", ["f2"], ["a10"], "Attention_0"),                                   # output name has path
        _node("Add", ["a10", "f2"], ["h10"], "node_add_10", ["", "blocks.10", "add"]),
        _node("Gemm", ["h10"], ["logits"], "/head/Gemm"),
        _node("Softmax", ["logits"], ["out"], "Softmax_after"),                               # unscoped, after blocks
    ])  # fmt: skip
    executed.node[6].output[0] = "/blocks.0/mlp/act/Gelu_output_0"
    executed.node[7].input[0] = "/blocks.0/mlp/act/Gelu_output_0"
    executed.node[8].input[1] = "/blocks.0/mlp/act/Gelu_output_0"
    executed.node[7].output[0] = "/blocks.10/attention/self/Reshape_output_0"
    executed.node[8].input[0] = "/blocks.10/attention/self/Reshape_output_0"
    original = _graph([_node("MatMul", ["h"], ["f1"], "/blocks.0/mlp/fc1/MatMul")])
    return executed, original


EXPECTED_LABELS = {
    "Cast_inserted": ("", "", "embeddings"),
    "/embed/Gather": ("embed", "", "embeddings"),
    "node_qkv": ("blocks.0.attn.qkv", "blocks.0", "attention"),
    "node_softmax": ("", "blocks.0", "attention"),
    "node_add_res": ("", "blocks.0", "other"),
    "Fused_0": ("blocks.0.mlp.fc1", "blocks.0", "ffn"),
    "Gelu_0": ("blocks.0.mlp.act", "blocks.0", "ffn"),
    "Attention_0": ("blocks.10.attention.self", "blocks.10", "attention"),
    "node_add_10": ("blocks.10", "blocks.10", "other"),
    "/head/Gemm": ("head", "", "other"),
    "Softmax_after": ("", "", "other"),
}


def test_executed_nodes_are_traced_back_to_their_block_and_group():
    executed, original = _executed_and_original()
    labels = label_nodes(executed, original)
    assert {k: (v.module, v.block, v.group) for k, v in labels.items()} == EXPECTED_LABELS


def test_a_fused_node_without_the_exported_graph_falls_back_to_dataflow():
    executed, _ = _executed_and_original()
    labels = label_nodes(executed)  # no original: Fused_0's producer path is unknown
    assert (labels["Fused_0"].block, labels["Fused_0"].group) == ("blocks.0", "other")  # reads the residual stream


def _events(times: dict[str, list[float]], runs_us: list[float]):
    """ORT profile events: each node once per run, in order, plus the session's model_run events."""
    events = [{"cat": "Session", "name": "model_loading_uri", "dur": 999}]
    for r in range(len(runs_us)):
        for name, durs in times.items():
            events.append({"cat": "Node", "name": f"{name}_kernel_time", "dur": durs[r],
                           "args": {"op_name": name.split("_")[0].strip("/")}})  # fmt: skip
            events.append({"cat": "Node", "name": f"{name}_fence_before", "dur": 1000})  # not a kernel: ignored
        events.append({"cat": "Session", "name": "model_run", "dur": runs_us[r]})
    return events


def test_node_times_are_medians_after_the_warmup_runs():
    events = _events({"a": [900, 10, 30, 20], "b": [800, 5, 6, 7]}, [5000, 100, 300, 200])
    assert node_times(events, skip=1) == [("a", "a", 20.0), ("b", "b", 6.0)]
    assert node_times(events[:11], skip=0) == [("a", "a", 455.0), ("b", "b", 402.5)]  # two runs: the mean of both
    assert sorted(run_times(events, skip=1)) == [100.0, 200.0, 300.0]


def test_the_block_view_sums_measured_times_per_block_and_group():
    executed, original = _executed_and_original()
    names = list(EXPECTED_LABELS)
    us = {n: [1000.0, float(10 * (i + 1))] for i, n in enumerate(names)}  # node i takes 10*(i+1) µs after warm-up
    us["ReorderOutput"] = [1000.0, 1.0]  # a node the runtime inserted under a name the graph does not have
    events = _events(us, [9000.0, 700.0])
    prof = time_profile("m.onnx", node_times(events, skip=1), label_nodes(executed, original), run_us=700.0, runs=1,
                        threads=1)  # fmt: skip
    assert prof.by_group() == {"embeddings": 30.0, "attention": 30 + 40 + 80, "ffn": 60 + 70, "other": 50 + 90 + 100
                               + 110 + 1}  # fmt: skip
    rows = {b.block: b.group_us for b in prof.by_block()}
    assert [b.block for b in prof.by_block()] == [OUTSIDE, "blocks.0", "blocks.10"]  # numeric order, outside first
    assert rows[OUTSIDE] == {"embeddings": 30.0, "attention": 0.0, "ffn": 0.0, "other": 100 + 110 + 1}
    assert rows["blocks.0"] == {"embeddings": 0.0, "attention": 70.0, "ffn": 130.0, "other": 50.0}
    assert rows["blocks.10"] == {"embeddings": 0.0, "attention": 80.0, "ffn": 0.0, "other": 90.0}
    assert prof.node_us == sum(10 * (i + 1) for i in range(len(names))) + 1
    assert prof.warnings and "ReorderOutput" in prof.warnings[0]  # labelled as the node before it (Softmax_after)
    text = str(prof)
    assert "blocks.10" in text and "0.080" in text and "total" in text
    assert json.loads(json.dumps(prof.to_dict()))["groups"]["ffn"]["us"] == 130.0


class _TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from deepslim.models.transformer import PreNormBlock

        self.embed = torch.nn.Linear(4, 16)
        self.blocks = torch.nn.Sequential(PreNormBlock(16, 2, 32, 0.0), PreNormBlock(16, 2, 32, 0.0))
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x))[:, 0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_time_onnx_measures_an_exported_encoder_block_by_block(tmp_path):
    path = tmp_path / "enc.onnx"
    torch.onnx.export(_TinyEncoder().eval(), (torch.randn(2, 5, 4),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    prof = time_onnx(path, batch_size=3, runs=3, warmup=1)
    assert [b.block for b in prof.by_block()] == [OUTSIDE, "blocks.0", "blocks.1"]
    by_block = {b.block: b.group_us for b in prof.by_block()}
    for block in ("blocks.0", "blocks.1"):
        assert by_block[block]["attention"] > 0 and by_block[block]["ffn"] > 0
    assert by_block[OUTSIDE]["embeddings"] > 0 and by_block[OUTSIDE]["other"] > 0  # embed; head
    gemms = [n for n in prof.nodes if n.module.endswith("mlp.0")]
    assert gemms and all(n.group == "ffn" for n in gemms)
    assert abs(sum(prof.by_group().values()) - prof.node_us) < 1e-6
    assert prof.runs == 3 and prof.run_us > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_time_onnx_refuses_a_missing_file_and_unusable_settings(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        time_onnx(tmp_path / "none.onnx")
    path = tmp_path / "seq.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(2, 3, 4),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}})  # fmt: skip
    with pytest.raises(ConfigError, match="symbolic dimensions"):
        time_onnx(path)
    with pytest.raises(ConfigError, match="runs >= 1"):
        time_onnx(path, runs=0)
    assert time_onnx(path, input_shape=(2, 3, 4), runs=2, warmup=0).nodes  # the shape given: it runs
