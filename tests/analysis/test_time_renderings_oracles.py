"""Golden renderings of a measured ONNX Runtime time profile: the block table (blocks in numeric order, the nodes
outside blocks first, "-" for an empty group, shares of the nodes' total), the summary lines and the record — and
the same for a profile without nodes (no division by zero)."""

from __future__ import annotations

from deepslim.analysis.blocks import NodeTime, TimeProfile

NODES = (NodeTime("g", "Gather", 120.0, "embeddings", "", "embeddings"),
         NodeTime("m1", "MatMul", 300.0, "layers.0.attn.query", "layers.0", "attention"),
         NodeTime("m2", "MatMul", 450.5, "layers.0.fc1", "layers.0", "ffn"),
         NodeTime("m3", "MatMul", 80.0, "layers.10.fc2", "layers.10", "ffn"),
         NodeTime("m4", "MatMul", 70.0, "layers.2.fc2", "layers.2", "ffn"),
         NodeTime("a", "Add", 29.5, "pool", "", "other"))  # fmt: skip

TABLE = """\
block             embeddings ms  attention ms  ffn ms  other ms  total ms   share
----------------  -------------  ------------  ------  --------  --------  ------
(outside blocks)          0.120             -       -     0.029     0.149   14.2%
layers.0                      -         0.300   0.451         -     0.750   71.5%
layers.2                      -             -   0.070         -     0.070    6.7%
layers.10                     -             -   0.080         -     0.080    7.6%
total                     0.120         0.300   0.601     0.029     1.050  100.0%

measured in ONNX Runtime: enc.onnx, 2 thread(s), median of 50 runs: run 1.100 ms, nodes 1.050 ms
time by group: embeddings 11.4%  attention 28.6%  ffn 57.2%  other 2.8%
warning: ran on 1 core"""


def test_the_measured_block_table_and_summary_are_golden():
    assert str(TimeProfile("enc.onnx", NODES, 1100.0, 50, 2, ("ran on 1 core",))) == TABLE


def test_the_time_record_has_groups_with_shares_blocks_in_order_and_every_node():
    d = TimeProfile("enc.onnx", NODES, 1100.0, 50, 2, ("ran on 1 core",)).to_dict()
    assert {k: d[k] for k in ("model", "runs", "threads", "run_us", "node_us", "warnings")} == {
        "model": "enc.onnx", "runs": 50, "threads": 2, "run_us": 1100.0, "node_us": 1050.0,
        "warnings": ["ran on 1 core"]}  # fmt: skip
    assert d["groups"] == {"embeddings": {"us": 120.0, "share": 120 / 1050}, "attention": {"us": 300.0,
                           "share": 300 / 1050}, "ffn": {"us": 600.5, "share": 600.5 / 1050},
                           "other": {"us": 29.5, "share": 29.5 / 1050}}  # fmt: skip
    assert d["blocks"] == [
        {"block": "(outside blocks)", "embeddings": 120.0, "attention": 0.0, "ffn": 0.0, "other": 29.5,
         "total": 149.5},
        {"block": "layers.0", "embeddings": 0.0, "attention": 300.0, "ffn": 450.5, "other": 0.0, "total": 750.5},
        {"block": "layers.2", "embeddings": 0.0, "attention": 0.0, "ffn": 70.0, "other": 0.0, "total": 70.0},
        {"block": "layers.10", "embeddings": 0.0, "attention": 0.0, "ffn": 80.0, "other": 0.0, "total": 80.0},
    ]  # fmt: skip
    assert d["nodes"][2] == {"name": "m2", "op_type": "MatMul", "time_us": 450.5, "module": "layers.0.fc1",
                             "block": "layers.0", "group": "ffn"}  # fmt: skip
    assert [n["name"] for n in d["nodes"]] == ["g", "m1", "m2", "m3", "m4", "a"]


def test_a_profile_without_nodes_renders_zero_shares():
    prof = TimeProfile("e.onnx", (), 5.0, 3, 1)
    assert str(prof) == (
        "block  embeddings ms  attention ms  ffn ms  other ms  total ms  share\n"
        "-----  -------------  ------------  ------  --------  --------  -----\n"
        "total              -             -       -         -     0.000   0.0%\n\n"
        "measured in ONNX Runtime: e.onnx, 1 thread(s), median of 3 runs: run 0.005 ms, nodes 0.000 ms\n"
        "time by group: embeddings 0.0%  attention 0.0%  ffn 0.0%  other 0.0%")  # fmt: skip
    d = prof.to_dict()
    assert d["node_us"] == 0 and d["blocks"] == [] and d["nodes"] == [] and d["warnings"] == []
    assert d["groups"] == {g: {"us": 0.0, "share": 0.0} for g in ("embeddings", "attention", "ffn", "other")}
