"""A batch whose chosen timing ran in a slow process — its trivial graph more than 0.5 µs above the table's median so
far — is timed once more after a longer pause (NodeTable._timed, node_table._slow_batch): its twins and their 1 s
retries fall in the same stretch, and its canaries (net of the same process's trivial graph) read steady (session
18: 8 of 26 such batches held an entry more than 5 µs high). Fake timers: each call is one "process" with its own
overhead, in which some nodes read slow."""

from __future__ import annotations

import pytest

from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import PREFIX, NodeTable, _slow_batch

TRUE_MS = {"Conv:a": 0.040, "Conv:b": 0.020, "Relu:c": 0.004, "Add:e": 0.006}
MODELS = {"m1": ["Conv:a", "Relu:c"], "m2": ["Conv:a", "Conv:b", "Add:e"]}


def _table(processes: list[tuple[float, dict[str, float]]]) -> NodeTable:
    """Timer call ``i`` runs in a process of overhead ``processes[i][0]`` ms that reads the named nodes that many ms
    slow (the last process repeats)."""
    nodes: NodeTable

    def timer(batch, work):
        own, slow = processes[min(len(nodes.overheads), len(processes) - 1)]
        nodes.overheads.append(own)
        return [TRUE_MS[n["key"]] + own + slow.get(n["key"], 0.0) for n in batch]

    def splitter(path, shape, work):
        return [{"key": k, "op": k.split(":")[0], "file": "", "feeds": ""} for k in MODELS[path]]

    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer)
    return nodes


def test_a_batch_timed_in_slow_processes_is_timed_once_more_and_takes_its_entries_from_the_faster_timing():
    """m1's twins run in 3 µs processes. m2's twins both run in 5 µs processes that read Conv:b 10 µs slow: the
    twins agree and the canary Conv:a reads its entry, so nothing else re-times the batch. The extra timing, in a
    3 µs process, is the least gross sum: Conv:b's entry is its true 20 µs, not 30."""
    slow = (0.005, {"Conv:b": 0.010})
    nodes = _table([(0.003, {}), (0.003, {}), slow, slow, (0.003, {})])
    nodes.raw_file("m1", (1, 4))
    assert nodes.raw_file("m2", (1, 4)) == pytest.approx(sum(TRUE_MS[k] for k in MODELS["m2"]), abs=1e-12)
    assert nodes.table.entries[PREFIX + "Conv:b"] == pytest.approx(0.020, abs=1e-12)
    assert nodes.slow_batches == 1 and nodes.timings == 5


def test_a_trivial_graph_within_half_a_microsecond_of_the_median_times_nothing_more():
    nodes = _table([(0.003, {}), (0.003, {}), (0.0034, {"Conv:b": 0.001}), (0.0034, {"Conv:b": 0.001})])
    nodes.raw_file("m1", (1, 4))
    nodes.raw_file("m2", (1, 4))
    assert nodes.slow_batches == 0 and nodes.timings == 4
    assert nodes.table.entries[PREFIX + "Conv:b"] == pytest.approx(0.021, abs=1e-12)


def test_the_slow_batch_test_reads_the_chosen_timing_s_trivial_graph_against_the_median_so_far():
    runs = [({0: 0.050, 1: 0.010}, 0.0040), ({0: 0.049, 1: 0.010}, 0.0039)]  # the second is chosen (least gross)
    assert _slow_batch(runs, 2, [0.003, 0.003, 0.0033, 0.0040, 0.0039], 2)  # median 3.3 µs, chosen 3.9 µs
    assert not _slow_batch(runs, 2, [0.0035, 0.0035, 0.0040, 0.0039], 2)  # 2 earlier: all four, median 3.75 µs
    assert not _slow_batch(runs, 2, [], 0)  # a timer that records no trivial graph (its times are net)


def test_once_four_trivial_graphs_came_before_the_batch_its_own_are_left_out_of_the_median():
    """Review R20 L6: four earlier at 3.0 µs and the batch's own four at 3.9 µs — the median of all eight (3.45 µs)
    follows the batch itself; that of the earlier four does not."""
    runs = [({0: 0.050, 1: 0.010}, 0.0039)] * 4
    assert _slow_batch(runs, 2, [0.003] * 4 + [0.0039] * 4, 4)
    assert not _slow_batch(runs, 2, [0.003] * 3 + [0.0039] * 4, 4)  # 3 earlier: all seven, median 3.9 µs


def test_a_table_s_second_batch_timed_wholly_in_slow_processes_is_timed_once_more():
    """Review R20 L6, through the table: four twins each. m1's run in 3 µs processes, m2's all four in 3.8 µs ones
    that read Conv:b 10 µs slow (the twins agree, the canary Conv:a reads its entry). The median of all eight
    trivial graphs, 3.4 µs, would let the batch pass; against m1's four (3 µs) it is timed once more, in a 3 µs
    process, and Conv:b's entry is its true 20 µs."""
    slow = (0.0038, {"Conv:b": 0.010})
    nodes = _table([(0.003, {})] * 4 + [slow] * 4 + [(0.003, {})])
    nodes.twins = 4
    nodes.raw_file("m1", (1, 4))
    nodes.raw_file("m2", (1, 4))
    assert nodes.slow_batches == 1 and nodes.timings == 9
    assert nodes.table.entries[PREFIX + "Conv:b"] == pytest.approx(0.020, abs=1e-12)
