"""A batch whose chosen timing (the least gross sum) read its trivial graph low while its nodes ran as slow as the
other timings' has their trivial graph, carried into its process by the gross sums' gap per node, taken off its
entries instead of its own (node_table._net, _batch_timing._low_trivial): session 20's fourth run took its largest
batch from a 3.36 µs trivial graph beside three of 5.11–5.29 µs, all four gross sums within 5 %, and each entry kept
~1.6 µs too much. Fake timers: each call is one "process" with its own trivial graph, in which nodes read some µs
slow."""

from __future__ import annotations

import pytest

from deepslim.search._batch_timing import _low_trivial, _net
from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import NodeTable

TRUE_MS = {"Conv:a": 0.040, "Conv:b": 0.020, "Relu:c": 0.004, "Add:e": 0.006}
MODELS = {"m1": ["Conv:a", "Relu:c"], "m2": ["Conv:a", "Conv:b", "Add:e"]}


def _table(processes: list[tuple[float, float]], twins: int) -> NodeTable:
    """Timer call ``i`` runs in a process whose trivial graph reads ``processes[i][0]`` ms and whose every node reads
    that plus ``processes[i][1]`` ms over its true time (the last process repeats)."""
    nodes: NodeTable

    def timer(batch, work):
        trivial, extra = processes[min(len(nodes.overheads), len(processes) - 1)]
        nodes.overheads.append(trivial)
        return [TRUE_MS[n["key"]] + trivial + extra for n in batch]

    def splitter(path, shape, work):
        return [{"key": k, "op": k.split(":")[0], "file": "", "feeds": ""} for k in MODELS[path]]

    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer,
                      twins=twins)  # fmt: skip
    return nodes


def test_a_batch_whose_least_gross_timing_read_its_trivial_graph_low_takes_the_others_trivial_graph_off():
    """m1's three timings run in 3 µs processes. m2's first two run in 5.2 µs processes; its third reads its trivial
    graph at 3 µs but its nodes 5 µs over their true times — the least gross sum (by 0.2 µs a node), so the batch's
    entries come from it. The twins agree within the tolerance and the canary reads within 10 % of its entry, and
    3 µs is the table's median: nothing else sees it. Less its own 3 µs, Conv:b would enter at 22 µs and Add:e at
    8; less the others' 5.2 µs carried over by the 0.2 µs a node, at their true 20 and 6."""
    nodes = _table([(0.003, 0.0)] * 3 + [(0.0052, 0.0), (0.0052, 0.0), (0.003, 0.002)], twins=3)
    nodes.raw_file("m1", (1, 4))
    assert nodes.raw_file("m2", (1, 4)) == pytest.approx(sum(TRUE_MS[k] for k in MODELS["m2"]), abs=1e-12)
    assert nodes.table.entries[nodes.prefix + "Conv:b"] == pytest.approx(0.020, abs=1e-12)
    assert nodes.table.entries[nodes.prefix + "Add:e"] == pytest.approx(0.006, abs=1e-12)
    assert nodes.low_batches == 1 and nodes.slow_batches == 0 and nodes.timings == 6


def test_a_trivial_graph_that_reads_low_with_its_nodes_keeps_its_own_process_s_entries():
    """The ordinary case on this machine: m2's third timing runs in a 3 µs process whose nodes read 3 µs over their
    true times, 2.2 µs a node below the 5.2 µs processes' — its own trivial graph is the right one to take off."""
    nodes = _table([(0.003, 0.0)] * 3 + [(0.0052, 0.0), (0.0052, 0.0), (0.003, 0.0)], twins=3)
    nodes.raw_file("m1", (1, 4))
    nodes.raw_file("m2", (1, 4))
    assert nodes.table.entries[nodes.prefix + "Conv:b"] == pytest.approx(0.020, abs=1e-12)
    assert nodes.low_batches == 0


def _runs(gross_us: list[float], trivial_us: list[float], size: int) -> list[tuple[dict[int, float], float]]:
    """Timings of a whole batch of ``size`` nodes whose gross times share each timing's sum evenly (ms)."""
    return [({i: g / size * 1e-3 for i in range(size)}, t * 1e-3) for g, t in zip(gross_us, trivial_us, strict=True)]


def test_session_20_run_4_batch_4_takes_the_median_of_the_others_trivial_graphs_carried_into_its_process():
    """113 nodes (109 new, 4 canaries), gross sums 810.6 / 809.2 / 775.4 / 789.7 µs, trivial graphs 5.29 / 5.24 /
    3.36 / 5.11 µs: the others' carried into the third's process read 4.978 / 4.941 / 4.983 µs, their median
    4.978 µs, 1.62 µs above its own, and each entry is its gross time less that."""
    runs = _runs([810.6, 809.2, 775.4, 789.7], [5.29, 5.24, 3.36, 5.11], 113)
    carried = 5.29e-3 + (775.4 - 810.6) * 1e-3 / 113
    assert _low_trivial(runs, 113) == pytest.approx(carried, abs=1e-12)
    assert _net(runs, 113, 109) == pytest.approx([775.4e-3 / 113 - carried] * 113, abs=1e-12)


def test_a_low_trivial_graph_needs_two_other_timings_and_a_gap_over_the_threshold():
    """One other timing: a low trivial graph in the chosen and one reading high alone in the other look alike, so
    the chosen's own stays (session 17's third run). Two others carried 1.1 µs above the chosen's own: taken; 0.9 µs
    above: within :data:`LOW_TRIVIAL_MS`, its own stays. A 3.2 µs process 2 µs a node faster than two 5.2 µs ones
    (the machine's two usual levels): its own is right."""
    assert _low_trivial(_runs([810.6, 775.4], [5.29, 3.36], 113), 113) is None
    assert _low_trivial(_runs([100.0, 100.0, 99.0], [4.2, 4.2, 3.0], 10), 10) == pytest.approx(4.1e-3, abs=1e-12)
    assert _low_trivial(_runs([100.0, 100.0, 99.0], [4.0, 4.0, 3.0], 10), 10) is None
    runs = _runs([620.0, 620.0, 420.0], [5.2, 5.2, 3.2], 100)
    assert _low_trivial(runs, 100) is None
    assert _net(runs, 100, 96) == pytest.approx([1.0e-3] * 100, abs=1e-12)
