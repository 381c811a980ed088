"""A time profile's blocks come in model order: the nodes outside blocks first, then blocks by number (blocks.10
after blocks.9, not after blocks.1 as text would sort them)."""

from deepslim.analysis.blocks import OUTSIDE, NodeTime, TimeProfile


def test_blocks_are_listed_outside_first_then_in_numeric_order():
    def node(block, group, us):
        return NodeTime(name=f"n{block}{group}", op_type="MatMul", time_us=us, module="", block=block, group=group)

    nodes = (node("blocks.10", "ffn", 3.0), node("blocks.9", "attention", 2.0), node("", "embeddings", 1.0),
             node("blocks.2", "ffn", 4.0), node("blocks.10", "attention", 5.0))  # fmt: skip
    prof = TimeProfile(model="m", nodes=nodes, run_us=20.0, runs=3, threads=1)
    rows = prof.by_block()
    assert [r.block for r in rows] == [OUTSIDE, "blocks.2", "blocks.9", "blocks.10"]
    assert [r.total_us for r in rows] == [1.0, 4.0, 2.0, 8.0]
    assert rows[3].group_us["attention"] == 5.0 and rows[3].group_us["ffn"] == 3.0


def test_timed_nodes_the_graph_does_not_name_take_the_label_before_them_or_embeddings_first():
    from deepslim.analysis.blocks import NodeLabel, time_profile

    labels = {"mm": NodeLabel("blocks.0.attn", "blocks.0", "attention")}
    times = [("ort_inserted_0", "Cast", 1.0), ("mm", "MatMul", 2.0), ("ort_inserted_1", "Add", 3.0)]
    prof = time_profile("m", times, labels, run_us=6.0, runs=2, threads=1)
    assert [(n.block, n.group) for n in prof.nodes] == [("", "embeddings"), ("blocks.0", "attention"),
                                                        ("blocks.0", "attention")]  # fmt: skip
    assert prof.by_group() == {"embeddings": 1.0, "attention": 5.0, "ffn": 0.0, "other": 0.0}
    assert prof.warnings == ("2 timed nodes not in the executed graph, labelled as the node before them: "
                             "ort_inserted_0, ort_inserted_1",)  # fmt: skip


def test_an_unscoped_node_takes_the_latest_block_among_its_inputs_or_the_last_block_seen():
    from deepslim.analysis.blocks import NodeLabel, _inherit

    assert _inherit([], "blocks.3") == NodeLabel("", "blocks.3", "other")
    same = [NodeLabel("blocks.2.ffn", "blocks.2", "ffn"), NodeLabel("blocks.1.ffn", "blocks.1", "ffn")]
    assert _inherit(same, "blocks.9") == NodeLabel("", "blocks.2", "ffn")  # first input from the latest block
    residual = [NodeLabel("blocks.1.ffn", "blocks.1", "ffn"), NodeLabel("blocks.10.attn", "blocks.10", "attention")]
    assert _inherit(residual, "") == NodeLabel("", "blocks.10", "other")  # numeric order: 10 after 1


def test_a_printed_profile_is_the_table_a_blank_line_and_the_summary():
    import torch
    from torch import nn

    import deepslim as ds

    lines = str(ds.profile(nn.Sequential(nn.Linear(4, 3)), torch.randn(1, 4))).split("\n")
    assert lines[0].split() == ["layer", "type", "output", "params", "MACs", "weights", "act", "out", "MAC/B"]
    assert lines[2].split() == ["0", "Linear", "1x3", "15", "12", "60", "B", "12", "B", "0.1"]
    assert lines[3] == "" and lines[4] == "model Sequential  input 1x4"
    assert lines[5] == "params 15  MACs 12 (12)  other ops 0" and len(lines) == 7
