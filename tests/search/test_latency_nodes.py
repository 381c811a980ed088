"""The node-level latency table: a model's optimized ONNX Runtime graph, node by node (deepslim.search.node_table)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepslim.search import SearchSpace, check_table
from deepslim.search._layer_onnx import layer_graph
from deepslim.search.latency import STAT, LatencyTable, LayerKey, TableCheck
from deepslim.search.node_table import GRAPH_NODE, PREFIX, NodeTable
from tests.search._tiny import digits, fake_ms, tiny_net


def _fake_nodes(keys: list[str]):
    """A splitter that returns ``keys`` as the graph's nodes, and a timer (ms = the key's length) that logs calls."""
    calls: list[list[str]] = []

    def splitter(path, shape, work):
        return [{"key": k, "op": k.split(":")[0], "file": f"{work}/{i}.onnx", "feeds": ""} for i, k in enumerate(keys)]

    def timer(nodes, work):
        calls.append([n["key"] for n in nodes])
        return [float(len(n["key"])) for n in nodes]

    return splitter, timer, calls


def test_a_model_costs_the_sum_of_its_nodes_and_each_distinct_node_is_timed_once_across_models():
    splitter, timer, calls = _fake_nodes(["Conv:a", "Relu:bb", "Conv:a"])
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])
    nodes = NodeTable(table, splitter=splitter, timer=timer)
    assert nodes.raw_file("m.onnx", (1, 1, 8, 8)) == 6 + 7 + 6  # the repeated node counts twice, is timed once
    assert calls == [["Conv:a", "Relu:bb"]] * 2  # one batch, timed as twins (which agree: no re-timing)
    assert table.entries[PREFIX + "Relu:bb"] == 7.0 and table.measured == 2
    assert nodes.raw_file("other.onnx", (1, 1, 8, 8)) == 19 and len(calls) == 2  # nothing new to time


def test_each_node_of_a_graph_adds_the_measured_cost_of_one_more_node_once_timed_and_cached(tmp_path):
    """An entry is its one-node graph less a trivial one-node graph, so each node's own dispatch inside a whole graph
    is left out: the prediction adds :data:`GRAPH_NODE` (a fake deterministic 0.25 ms here) once per node, measured
    once per cache."""
    splitter, timer, calls = _fake_nodes(["Conv:a", "Relu:bb", "Conv:a", "QuantizeLinear:q"])
    measured: list[str] = []

    def graph_node(work):
        measured.append(work)
        return 0.25

    table = LatencyTable(cache_dir=tmp_path)
    nodes = NodeTable(table, splitter=splitter, timer=timer, graph_node=graph_node)
    assert nodes.raw_file("m.onnx", (1, 4)) == 6 + 7 + 6 + 16 + 4 * 0.25
    assert len(measured) == 2 and table.entries[GRAPH_NODE] == 0.25 and table.measured == 3 + 1  # twins
    assert nodes.raw_file("m.onnx", (1, 4)) == 35 + 1.0 and len(measured) == 2  # cached: measured once
    again = NodeTable(LatencyTable(cache_dir=tmp_path), splitter=splitter, timer=timer, graph_node=graph_node)
    assert again.raw_file("m.onnx", (1, 4)) == 36.0 and len(measured) == 2 and again.table.measured == 0
    assert nodes.custom and NodeTable(LatencyTable(), splitter=splitter, timer=timer).graph_node is None


def test_the_real_timers_spread_their_rounds_over_the_window(tmp_path):
    """``_timer.py`` and ``_node_timer.py`` idle between rounds so that the last starts ``window_s`` after the first
    (a minimum then comes from outside a slow stretch of a shared machine)."""
    import time

    import onnx

    from deepslim.search._node_timer import time_nodes
    from deepslim.search._timer import time_files

    key = LayerKey("conv2d", (1, 4, 6, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1))
    path = tmp_path / "layer.onnx"
    onnx.save(layer_graph(key), str(path))
    np.savez(tmp_path / "feeds.npz", input=np.zeros((1, 4, 6, 6), np.float32))
    for window in (0.0, 0.6):
        t0 = time.perf_counter()
        doc = time_files([(str(path), [1, 4, 6, 6])], threads=1, rounds=3, block=1, window_s=window)
        t1 = time.perf_counter()
        nodes = time_nodes([(str(path), str(tmp_path / "feeds.npz"))], threads=1, rounds=3, block=1,
                           work=str(tmp_path), window_s=window)  # fmt: skip
        t2 = time.perf_counter()
        assert t1 - t0 >= window and t2 - t1 >= window
        assert doc["min_ms"][0] > 0 and nodes["min_ms"][0] > 0 and nodes["graph_node_ms"] >= 0


def test_node_entries_share_the_layer_tables_cache_file(tmp_path):
    splitter, timer, calls = _fake_nodes(["Add:x"])
    first = LatencyTable(cache_dir=tmp_path)
    NodeTable(first, splitter=splitter, timer=timer).raw_file("m.onnx", (1, 4))
    again = LatencyTable(cache_dir=tmp_path)
    assert NodeTable(again, splitter=splitter, timer=timer).raw_file("m.onnx", (1, 4)) == 5.0
    assert len(calls) == 2 and again.measured == 0  # the first table's twin timings only
    assert json.loads(first.path.read_text())["entries"][PREFIX + "Add:x"] == 5.0


def test_calibration_fits_scale_and_offset_leaves_out_nan_and_falls_back_to_an_offset():
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)))
    assert nodes.predict(2.0) == 2.0  # uncalibrated: the sum itself
    nodes.calibrate([(1.0, 2.5), (2.0, 4.5), (3.0, 6.5), (4.0, float("nan"))])
    assert (nodes.scale, nodes.offset) == (pytest.approx(2.0), pytest.approx(0.5)) and len(nodes.points) == 3
    nodes.calibrate([(1.0, 1.25)])
    assert (nodes.scale, nodes.offset) == (1.0, pytest.approx(0.25))


def test_the_timer_reports_minimums_by_default():
    assert STAT == "min_ms"


def test_split_writes_every_optimized_node_with_its_real_inputs_and_times_them(tmp_path):
    """The real child process on an int8 convolution: ONNX Runtime fuses the QDQ form into a QLinearConv, whose
    one-node model reproduces the whole graph's output from the recorded input."""
    import onnx
    import onnxruntime as ort

    key = LayerKey("conv2d", (1, 8, 6, 6), 8, (3, 3), (1, 1), (1, 1), (1, 1), int8=True)
    path = tmp_path / "layer.onnx"
    onnx.save(layer_graph(key), str(path))
    table = LatencyTable(timer=lambda keys: [0.0] * len(keys))
    nodes = NodeTable(table, rounds=1, block=1, window_s=0.0)
    found = nodes.splitter(str(path), [1, 8, 6, 6], str(tmp_path))
    ops = [n["op"] for n in found]
    assert "QLinearConv" in ops and "Conv" not in ops
    conv = found[ops.index("QLinearConv")]
    sess = ort.InferenceSession(conv["file"], providers=["CPUExecutionProvider"])
    with np.load(conv["feeds"]) as feeds:
        out = sess.run(None, {k: feeds[k] for k in feeds.files})[0]
    assert out.dtype == np.uint8 and out.size == 8 * 6 * 6 and 8 in out.shape  # NHWC or NCHW: 8 channels
    raw = nodes.raw_file(path, [1, 8, 6, 6])
    assert raw >= 0.0 and all(k.startswith(nodes.prefix) for k in table.entries) and table.measured == len(set(
        n["key"] for n in found)) + 1  # fmt: skip
    per_node = table.entries[nodes.graph_key]  # one more Identity node in a graph: a fraction of a microsecond to a few
    assert 0.0 < per_node < 0.02 and raw == pytest.approx(sum(table.entries[nodes.prefix + n["key"]] for n in found)
                                                          + per_node * len(found))  # fmt: skip


def test_check_table_reports_the_node_tables_accuracy_beside_the_layer_tables_and_the_macs():
    data = digits()
    net = tiny_net().eval()
    x = data.example_input
    space = SearchSpace.from_model(net, x, round_to=1)

    def params(m):
        return float(sum(p.numel() for p in m.parameters()))

    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=lambda pairs: [
        params(m) / 1e3 for m, _ in pairs])  # fmt: skip

    class Nodes:  # measured exactly: the node table's error is 0 and its ranking perfect
        def raw_model(self, model, example_input):
            return params(model) / 1e3

        def predict(self, raw):
            return raw

    calib = [next(iter(data.calib))]
    check = check_table(net, space, table, example_input=x, calib_data=calib, policies=3, seed=1, nodes=Nodes())
    doc = check.to_dict()
    assert doc["points"] == 3 and doc["node_table"]["error_p90"] == 0.0 and doc["node_table"]["within_10pct"] == 1.0
    assert doc["node_table"]["kendall_tau"] == pytest.approx(1.0) or len({r["measured_ms"] for r in doc["rows"]}) < 3
    assert {"error_p90", "kendall_tau", "mac_proxy_kendall_tau"} <= set(doc)


def test_a_check_without_node_predictions_has_no_node_section_and_an_empty_check_reports_none():
    rows = ({"predicted_ms": 1.1, "measured_ms": 1.0, "macs": 5}, {"predicted_ms": 2.0, "measured_ms": 2.5, "macs": 9})
    doc = TableCheck(rows).to_dict()
    assert "node_table" not in doc and doc["error_p90"] == pytest.approx(0.1 + 0.9 * (0.2 - 0.1))
    assert doc["kendall_tau"] == 1.0 and doc["mac_proxy_kendall_tau"] == 1.0
    assert TableCheck(()).to_dict()["error_p90"] is None
