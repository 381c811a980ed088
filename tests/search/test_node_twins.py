"""New node entries robust to a slow stretch of the machine (NodeTable._timed): a batch timed twice, again where the
timings disagree or the batch's canaries (cached nodes of the same model) read slow. The timer is a fake
deterministic one whose chosen calls run in a "slow stretch" (every node 1.5x)."""

from __future__ import annotations

import pytest

from deepslim.errors import ConfigError
from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import GRAPH_NODE, PREFIX, NodeTable, node_prefix

TRUE_MS = {"Conv:a": 0.040, "Conv:b": 0.020, "Relu:c": 0.004, "Conv:d": 0.030, "Add:e": 0.006}


def _fakes(models: dict[str, list[str]], slow: set[int], factor: float = 1.5):
    """A splitter returning ``models[path]``'s node keys and a timer (the key's true ms) whose calls numbered in
    ``slow`` (0 the first) read ``factor`` times slower; ``calls`` logs each call's keys."""
    calls: list[list[str]] = []

    def splitter(path, shape, work):
        return [{"key": k, "op": k.split(":")[0], "file": f"{work}/{k}", "feeds": ""} for k in models[path]]

    def timer(nodes, work):
        f = factor if len(calls) in slow else 1.0
        calls.append([n["key"] for n in nodes])
        return [TRUE_MS[n["key"]] * f for n in nodes]

    return splitter, timer, calls


def _entries(nodes: NodeTable) -> dict[str, float]:
    return {k[len(PREFIX):]: v for k, v in nodes.table.entries.items() if k.startswith(PREFIX) and k != GRAPH_NODE}


def test_a_batch_whose_first_timing_falls_in_a_slow_stretch_keeps_its_twins_fast_times_and_is_timed_a_third_time():
    splitter, timer, calls = _fakes({"m": ["Conv:a", "Relu:c"]}, slow={0})
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer)
    assert nodes.raw_file("m", (1, 4)) == pytest.approx(0.044)  # the slow stretch would read 0.066
    assert _entries(nodes) == pytest.approx({"Conv:a": 0.040, "Relu:c": 0.004})
    assert len(calls) == 3 and nodes.timings == 3  # twins that disagreed, then one more to confirm the faster
    splitter, timer, _ = _fakes({"m": ["Conv:a"]}, slow={0})
    once = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer, twins=1,
                     retries=0)  # session 14's protocol  # fmt: skip
    assert once.raw_file("m", (1, 4)) == pytest.approx(0.060)  # timed once, in the stretch: what the twins avoid


def test_a_batch_whose_twins_both_fall_in_a_slow_stretch_is_caught_by_its_canaries_and_retimed():
    """The second model's new nodes are timed in calls 2 and 3, both slow: the twins agree, but the first model's
    cached nodes timed beside them (canaries) read 1.5x their entries, so the batch is timed again."""
    splitter, timer, calls = _fakes({"m1": ["Conv:a", "Relu:c"], "m2": ["Conv:a", "Conv:b", "Add:e"]}, slow={2, 3})
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer)
    nodes.raw_file("m1", (1, 4))
    assert nodes.raw_file("m2", (1, 4)) == pytest.approx(0.040 + 0.020 + 0.006)  # slow entries would add 0.013
    assert calls[2] == ["Conv:b", "Add:e", "Conv:a"]  # the new nodes, then the largest cached one of this model
    assert len(calls) == 6  # twins (slow, agreeing), the canary's re-timing, one more where the twins now disagree
    assert _entries(nodes) == pytest.approx({"Conv:a": 0.040, "Relu:c": 0.004, "Conv:b": 0.020, "Add:e": 0.006})
    splitter, timer, _ = _fakes({"m1": ["Conv:a"], "m2": ["Conv:a", "Conv:b"]}, slow={2, 3})
    no_canary = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer,
                          canaries=0)  # fmt: skip
    no_canary.raw_file("m1", (1, 4))
    no_canary.raw_file("m2", (1, 4))
    assert no_canary.table.entries[no_canary.prefix + "Conv:b"] == pytest.approx(0.030)  # stretch stays


def test_a_canary_read_faster_than_its_entry_is_noted_not_applied_mid_search_and_lowered_only_when_asked():
    """The first model's twins are both slow (no canaries yet to tell); the second model's batch times the cached
    Conv:a beside its new node at its true time. The entry stays (the first model's sum, which a search's limits
    and calibration were made with, must not move: review R15 M1); :meth:`lower_entries` applies it."""
    splitter, timer, _ = _fakes({"m1": ["Conv:a"], "m2": ["Conv:a", "Conv:d"]}, slow={0, 1})
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer,
                      retries=0)  # fmt: skip
    first = nodes.raw_file("m1", (1, 4))
    assert first == pytest.approx(0.060)  # both twins in the stretch
    assert nodes.raw_file("m2", (1, 4)) == pytest.approx(0.060 + 0.030)  # summed in the frame m1 was summed in
    assert nodes.raw_file("m1", (1, 4)) == first  # re-summed after the canary: the same frame
    assert nodes.lowered == 0 and nodes.faster == {nodes.prefix + "Conv:a": pytest.approx(0.040)}
    assert nodes.lower_entries() == 1 and nodes.lowered == 1 and nodes.faster == {}
    assert nodes.raw_file("m1", (1, 4)) == pytest.approx(0.040)


def test_a_stretch_that_never_ends_costs_at_most_twins_plus_retries_timings_and_keeps_each_nodes_fastest():
    calls: list[int] = []

    def timer(nodes, work):  # every timing slower than the last: the twins never agree
        calls.append(len(nodes))
        return [TRUE_MS[n["key"]] * (1 + 0.5 * len(calls)) for n in nodes]

    splitter, _, _ = _fakes({"m": ["Conv:a", "Relu:c"]}, slow=set())
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer, retries=2)
    nodes.raw_file("m", (1, 4))
    # twins 1.5x / 2x apart: all again; then only Conv:a is far from its twin (Relu:c's 6 and 8 µs are within 2 µs)
    assert calls == [2, 2, 2, 1] and nodes.table.entries[PREFIX + "Conv:a"] == pytest.approx(0.040 * 1.5)


def test_the_cost_of_one_more_node_in_a_graph_is_timed_as_twins_and_keeps_the_faster():
    reads = iter([0.45, 0.30])  # the first read in a slow stretch
    splitter, timer, _ = _fakes({"m": ["Relu:c"]}, slow=set())
    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer,
                      graph_node=lambda work: next(reads))  # fmt: skip
    assert nodes.raw_file("m", (1, 4)) == pytest.approx(0.004 + 0.30)
    assert nodes.table.entries[GRAPH_NODE] == 0.30


@pytest.mark.parametrize("bad", [{"twins": 0}, {"retries": -1}, {"canaries": -1}, {"tolerance": 0.0},
                                 {"tolerance": 1.5}])  # fmt: skip
def test_a_node_table_refuses_settings_that_cannot_time_a_batch(bad):
    with pytest.raises(ConfigError, match="twins >= 1"):
        NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), timer=lambda n, w: [], **bad)


def test_entries_timed_with_other_settings_are_keyed_apart_and_not_read_by_a_default_table():
    """A table timing once (session 14's protocol) caught its batch in a slow stretch; a default table on the same
    cache must time the node itself, not read the once-timed entry as twin-timed (review R15 L6)."""
    splitter, timer, calls = _fakes({"m": ["Conv:a"]}, slow={0})
    shared = LatencyTable(timer=lambda keys: [0.0] * len(keys))
    once = NodeTable(shared, splitter=splitter, timer=timer, twins=1, retries=0)
    assert once.raw_file("m", (1, 4)) == pytest.approx(0.060)
    assert shared.entries == {"node[twins=1,retries=0]:Conv:a": pytest.approx(0.060)}
    default = NodeTable(shared, splitter=splitter, timer=timer)
    assert default.raw_file("m", (1, 4)) == pytest.approx(0.040) and len(calls) == 3  # its own twins
    assert once.raw_file("m", (1, 4)) == pytest.approx(0.060) and len(calls) == 3  # each reads its own entry
    assert node_prefix(twins=2, tolerance=0.1) == PREFIX and node_prefix(tolerance=0.2) == "node[tolerance=0.2]:"
