"""The block view's naming rules, one at a time, on hand-written names and graphs (deepslim.analysis.blocks):
module paths from TorchScript-style names and from the dynamo exporter's scopes, the order of the fallbacks, the
classification's less common words, the profile events' edge cases and the JSON record."""

import json

import pytest
from onnx import helper

from deepslim.analysis.blocks import (
    OUTSIDE,
    NodeLabel,
    _path_from_name,
    _path_from_scopes,
    _scoped_path,
    block_key,
    classify,
    label_nodes,
    node_path,
    node_times,
    run_times,
    time_profile,
)


@pytest.mark.parametrize(("name", "path"), [
    ("/encoder/layer.0/attention/self/query/MatMul", "encoder.layer.0.attention.self.query"),
    ("/blocks/blocks.0/attn/Softmax", "blocks.0.attn"),  # a Sequential's child replaces its parent
    ("/blocks/blocks.0/blocks.0.mlp/Add", "blocks.0.mlp"),
    ("/blocksx/blocks.1/Add", "blocksx.blocks.1"),  # 'blocks.1' does not start with 'blocksx.'
    ("//a//b/Relu", "a.b"),  # empty pieces are skipped
    ("/Relu", ""),
    ("MatMul_3", ""),  # not a scoped name
    ("", ""),
])  # fmt: skip
def test_torchscript_names_give_the_module_path_without_the_operator(name, path):
    assert _path_from_name(name) == path


@pytest.mark.parametrize(("value", "path"), [
    ("['', 'blocks', 'blocks.0', 'blocks.0.attn', 'softmax']", "blocks.0.attn"),
    ("['', 'blocks', 'blocks.0', '_native_op']", "blocks.0"),  # the last entry is the operator, not a module
    ("['', 'blocks', '_private', 'add']", ""),  # the deepest module is a private one: unknown
    ("['add']", ""),
    ("[]", ""),
    ("['', 3, 'blocks.1', 'mul']", "blocks.1"),
    ("['', 'blocks.2', 7, 'mul']", "blocks.2"),  # non-strings are skipped
    ("{'not': 'a list'}", ""),
    ("not python", ""),
    ("['unclosed'", ""),
])  # fmt: skip
def test_dynamo_scopes_give_the_deepest_public_module(value, path):
    assert _path_from_scopes(value) == path


def _node(name, outputs=("y",), inputs=(), scopes=None, op="Add"):
    node = helper.make_node(op, list(inputs), list(outputs), name=name)
    if scopes is not None:
        helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": scopes, "other.key": "['', 'nope', 'x']"})
    return node


def test_a_nodes_scope_metadata_wins_over_its_name_and_an_unusable_scope_falls_back_to_the_name():
    assert node_path(_node("/enc/layer.1/Add", scopes="['', 'blocks.4', 'blocks.4.mlp', 'add']")) == "blocks.4.mlp"
    assert node_path(_node("/enc/layer.1/Add", scopes="['add']")) == "enc.layer.1"
    assert node_path(_node("Add_7", scopes="garbage")) == ""
    only_other = _node("Add_7")
    helper.set_metadata_props(only_other, {"other.key": "['', 'blocks.1', 'add']"})
    assert node_path(only_other) == ""  # only the exporter's scope key is read


def test_an_executed_node_is_named_by_itself_then_the_exported_node_then_its_output_tensor():
    by_name, by_tensor = {"Fused": "blocks.1.attn"}, {"t_out": "blocks.2.mlp", "t2": "blocks.3.mlp"}
    assert _scoped_path(_node("/own/layer.0/Add", ("t_out",)), by_name, by_tensor) == "own.layer.0"
    assert _scoped_path(_node("Fused", ("t_out",)), by_name, by_tensor) == "blocks.1.attn"
    assert _scoped_path(_node("New", ("", "t_out", "t2")), by_name, by_tensor) == "blocks.2.mlp"  # first named
    assert _scoped_path(_node("New", ("/blocks.5/mlp/fc1/out",)), by_name, by_tensor) == "blocks.5.mlp.fc1"
    # the exported graph's tensor names come before the scope written in a tensor's own name
    assert _scoped_path(_node("New", ("/x/y/z", "t2")), by_name, by_tensor) == "blocks.3.mlp"
    assert _scoped_path(_node("New", ("plain",)), by_name, by_tensor) == ""


def test_label_nodes_reads_the_exported_graphs_names_and_output_tensors():
    original = helper.make_graph([_node("/embed/Gather", ("e",)),
                                  _node("/blocks.0/attn/MatMul", ("a",)),
                                  _node("unscoped", ("u",)),
                                  _node("/blocks.1/mlp/MatMul", ("m", ""))], "g", [], [])  # fmt: skip
    executed = helper.make_graph([_node("r0", ("e",)), _node("/blocks.0/attn/MatMul", ("a2",)),
                                  _node("x", ("q",), ("a2",)), _node("r1", ("m",)), _node("", ("h",), ("m",))],
                                 "g", [], [])  # fmt: skip
    labels = label_nodes(executed, original)
    assert labels == {
        "r0": NodeLabel("embed", "", "embeddings"),
        "/blocks.0/attn/MatMul": NodeLabel("blocks.0.attn", "blocks.0", "attention"),
        "x": NodeLabel("", "blocks.0", "attention"),  # reads the attention output of the same block
        "r1": NodeLabel("blocks.1.mlp", "blocks.1", "ffn"),
        "Add_4": NodeLabel("", "", "other"),  # unnamed, after the last block: the head
    }


def test_a_graph_without_blocks_is_embeddings_until_nothing_then_other():
    executed = helper.make_graph([_node("a", ("t",)), _node("/head/Gemm", ("h",), ("t",))], "g", [], [])
    assert label_nodes(executed) == {"a": NodeLabel("", "", "embeddings"), "/head/Gemm": NodeLabel("head", "", "other")}


@pytest.mark.parametrize(("path", "expected"), [
    ("0.attn", ("", "other")),  # a leading number is not a block
    ("model.Embeddings.proj", ("", "embeddings")),  # case-insensitive
    ("h.0.SelfAttention.q", ("h.0", "attention")),
    ("h.0.c_attn", ("h.0", "attention")),
    ("layers.2.norm1", ("layers.2", "attention")),
    ("layers.2.out_proj", ("layers.2", "attention")),
    ("layers.2.k_proj", ("layers.2", "attention")),
    ("layers.2.norm2", ("layers.2", "ffn")),
    ("layers.2.FFN.w1", ("layers.2", "ffn")),
    ("layers.2.feed_forward.w1", ("layers.2", "ffn")),
    ("layers.2.dense_4h_to_h", ("layers.2", "ffn")),
    ("layers.2.ln_2", ("layers.2", "ffn")),
    ("layers.2.drop", ("layers.2", "other")),
    ("layers.2.3.embed", ("layers.2", "other")),  # the block ends at the first number
])  # fmt: skip
def test_less_common_module_words_are_classified_by_the_same_rules(path, expected):
    assert classify(path) == expected


def test_block_keys_sort_the_outside_row_first_and_numbers_numerically():
    assert block_key("") == block_key(OUTSIDE) == (0,)
    assert block_key("blocks.10") == (1, (1, 0, "blocks"), (0, 10, ""))
    names = ["layer.10", "blocks.2", "blocks.10", OUTSIDE, "blocks.9"]
    assert sorted(names, key=block_key) == [OUTSIDE, "blocks.2", "blocks.9", "blocks.10", "layer.10"]


def test_profile_events_without_kernels_or_runs_and_too_few_runs_for_the_warmup():
    events = [{"cat": "Node", "name": "a_kernel_time", "dur": 8},
              {"cat": "Node", "name": "a_kernel_time", "dur": 2},
              {"cat": "Node", "name": "b_kernel_time", "dur": 5, "args": {"op_name": "Relu"}},
              {"cat": "Kernel", "name": "c_kernel_time", "dur": 1},
              {"name": "d_kernel_time", "dur": 1},
              {"cat": "Session", "name": "model_run", "dur": 30},
              {"cat": "Session", "name": "session_initialization", "dur": 99},
              {"cat": "Node", "name": "model_run", "dur": 77}]  # fmt: skip
    assert node_times(events) == [("a", "", 5.0), ("b", "Relu", 5.0)]  # two times: their mean; no op name: ''
    assert node_times(events, skip=5) == [("a", "", 5.0), ("b", "Relu", 5.0)]  # all warm-up: all kept
    assert node_times(events, skip=1) == [("a", "", 2.0), ("b", "Relu", 5.0)]
    assert run_times(events) == [30.0] and run_times(events, skip=3) == [30.0]
    assert run_times([]) == []


def test_more_than_five_unnamed_nodes_are_listed_five_and_an_ellipsis():
    times = [(f"n{i}", "Add", 1.0) for i in range(7)]
    prof = time_profile("m.onnx", times, {}, run_us=9.0, runs=2, threads=1)
    assert prof.warnings == ("7 timed nodes not in the executed graph, labelled as the node before them: "
                             "n0, n1, n2, n3, n4 ...",)  # fmt: skip
    assert all((n.module, n.block, n.group) == ("", "", "embeddings") for n in prof.nodes)
    five = time_profile("m.onnx", times[:5], {}, run_us=9.0, runs=2, threads=1)
    assert five.warnings[0].endswith(": n0, n1, n2, n3, n4")


def test_the_json_record_has_every_block_group_and_node_with_shares_of_the_node_time():
    labels = {"e": NodeLabel("embed", "", "embeddings"), "a": NodeLabel("b.1.attn", "b.1", "attention"),
              "f": NodeLabel("b.1.mlp", "b.1", "ffn")}  # fmt: skip
    prof = time_profile("m.onnx", [("e", "Gather", 1.0), ("a", "MatMul", 3.0), ("f", "Gemm", 4.0)], labels,
                        run_us=10.0, runs=5, threads=2)  # fmt: skip
    d = json.loads(json.dumps(prof.to_dict()))
    assert {k: d[k] for k in ("model", "runs", "threads", "run_us", "node_us", "warnings")} == {
        "model": "m.onnx", "runs": 5, "threads": 2, "run_us": 10.0, "node_us": 8.0, "warnings": []}
    assert d["groups"] == {"embeddings": {"us": 1.0, "share": 0.125}, "attention": {"us": 3.0, "share": 0.375},
                           "ffn": {"us": 4.0, "share": 0.5}, "other": {"us": 0.0, "share": 0.0}}  # fmt: skip
    assert d["blocks"] == [
        {"block": OUTSIDE, "embeddings": 1.0, "attention": 0.0, "ffn": 0.0, "other": 0.0, "total": 1.0},
        {"block": "b.1", "embeddings": 0.0, "attention": 3.0, "ffn": 4.0, "other": 0.0, "total": 7.0}]
    assert d["nodes"][1] == {"name": "a", "op_type": "MatMul", "time_us": 3.0, "module": "b.1.attn", "block": "b.1",
                             "group": "attention"}  # fmt: skip
    empty = time_profile("m.onnx", [], {}, run_us=0.0, runs=1, threads=1).to_dict()
    assert empty["node_us"] == 0 and empty["groups"]["ffn"] == {"us": 0.0, "share": 0.0}  # no division by zero
