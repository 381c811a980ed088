"""The QDQ rewrite's topological sort: nodes come out after their inputs whatever order they went in, and a node
whose input nothing produces is refused by name (the first one stuck), never written as a broken graph."""

import pytest
from onnx import helper

from deepslim.errors import ExportError
from deepslim.export.qdq import _toposort


def _n(name, ins, outs):
    return helper.make_node("Relu", ins, outs, name=name)


def test_nodes_are_sorted_after_their_inputs():
    nodes = [_n("c", ["b"], ["c"]), _n("a", ["x"], ["a"]), _n("b", ["a", ""], ["b"])]  # "" is an omitted input
    assert [n.name for n in _toposort(nodes, {"x"})] == ["a", "b", "c"]


def test_a_node_whose_input_nothing_produces_is_refused_naming_the_first_one_stuck():
    nodes = [_n("a", ["x"], ["a"]), _n("lost", ["nowhere"], ["l"]), _n("after", ["l"], ["y"])]
    with pytest.raises(ExportError) as err:
        _toposort(nodes, {"x"})
    assert str(err.value) == "QDQ rewrite produced a graph with a cycle or a missing input at lost"
