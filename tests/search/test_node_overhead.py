"""A node entry is a difference within one timer process: its gross time less that process's own trivial graph
(NodeTable._timed, node_table._net), and the calibration applies its canaries' notes before it fits
(NodeTable.lower_entries, Evaluator.resum_nodes). The timers are fakes: each call is one "process" whose every
one-node run, the trivial graph's included, pays that process's overhead."""

from __future__ import annotations

import json

import pytest

from deepslim.search import calibration, frame
from deepslim.search.evaluate import Evaluator, _shape
from deepslim.search.latency import LatencyTable
from deepslim.search.node_table import GRAPH_NODE, PREFIX, NodeTable
from tests.search._tiny import digits, fake_node_timer, fake_nodes, params_ms, small_space, trained_net

TRUE_MS = {"Conv:a": 0.040, "Conv:b": 0.020, "Relu:c": 0.004, "Add:e": 0.006}
MODELS = {"m1": ["Conv:a", "Relu:c"], "m2": ["Conv:a", "Conv:b", "Add:e"]}


def _table(overheads: list[float]) -> NodeTable:
    """A node table whose timer call ``i`` runs in a process of overhead ``overheads[i]`` ms (the last repeats)."""
    nodes: NodeTable

    def splitter(path, shape, work):
        return [{"key": k, "op": k.split(":")[0], "file": "", "feeds": ""} for k in MODELS[path]]

    def timer(batch, work):
        own = overheads[min(len(nodes.overheads), len(overheads) - 1)]
        nodes.overheads.append(own)  # what the real timer records: this process's trivial graph
        return [TRUE_MS[n["key"]] + own for n in batch]  # gross

    nodes = NodeTable(LatencyTable(timer=lambda keys: [0.0] * len(keys)), splitter=splitter, timer=timer)
    return nodes


@pytest.mark.parametrize("order", [("m1", "m2"), ("m2", "m1")])
def test_entries_do_not_carry_the_gap_between_two_processes_trivial_graphs(order):
    """The first model's twins run in processes of 2 µs overhead, the second's in processes of 5 µs. Each entry less
    its own process's trivial graph is the node's true time in either order; the least trivial graph of all the
    processes so far (session 16) would leave 3 µs in each of the later batch's entries when it came second."""
    nodes = _table([0.002, 0.002, 0.005])
    sums = {m: nodes.raw_file(m, (1, 4)) for m in order}
    assert sums == pytest.approx({m: sum(TRUE_MS[k] for k in MODELS[m]) for m in MODELS}, abs=1e-12)
    entries = {k[len(PREFIX):]: v for k, v in nodes.table.entries.items() if k != GRAPH_NODE}
    assert entries == pytest.approx(TRUE_MS, abs=1e-12)
    assert nodes.faster == {}  # twins agreed, the canary read its entry: no re-timing for them
    # the second batch's processes read their trivial graph 1.5 µs above the table's median (3.5 µs): a slow batch,
    # timed once more (the last process repeats: the same entries)
    assert nodes.timings == 5 and nodes.slow_batches == 1


def test_a_batch_takes_every_entry_from_the_one_twin_whose_gross_sum_is_least():
    """Twin 1 runs in a 6 µs process whose trivial graph reads 3 µs slower still (9 µs) and reads Relu:c 1 µs slow;
    twin 2 runs in a 2 µs process and reads Conv:a 4 % slow (both within the twins' agreement). Twin 2's gross sum is
    the least (49.6 against 57 µs): both entries come from it, less its own 2 µs (41.6 and 4 µs). Its least net sum
    would take twin 1 (the slow trivial graph's 9 µs off every node: 37 and 2 µs) and each node's least difference
    37 and 2 µs too. (Compared net, the twins' sums differ by more than the tolerance: no re-timing here.)"""
    nodes = _table([0.009, 0.002])
    nodes.retries = 0
    base = nodes.timer

    def timer(batch, work):
        got = base(batch, work)
        extra = {1: {"Conv:a": -0.003, "Relu:c": 0.001 - 0.003}, 2: {"Conv:a": 0.0016}}[len(nodes.overheads)]
        return [t + extra.get(n["key"], 0.0) for n, t in zip(batch, got, strict=True)]

    nodes.timer = timer
    assert nodes.raw_file("m1", (1, 4)) == pytest.approx(0.0456, abs=1e-12)
    assert nodes.table.entries[PREFIX + "Relu:c"] == pytest.approx(0.004, abs=1e-12) and nodes.timings == 2


def _slow_first(factor: float):
    """The fake node timer whose first two calls (the dense model's twins, on a fresh cache) read ``factor`` slow."""
    calls = [0]

    def timer(nodes, work):
        calls[0] += 1
        f = factor if calls[0] <= 2 else 1.0
        return [f * t for t in fake_node_timer(nodes, work)]

    return timer


def test_the_calibration_lowers_what_its_canaries_read_faster_and_fits_on_the_resummed_models():
    """The dense model's batch, the first on a fresh cache and without canaries, falls in a slow stretch (both twins
    1.5x). Later calibration models time dense's first convolution and its classifier as canaries at their true
    times: the calibration lowers those entries and re-sums the models it summed before it anchors, so the frame's
    dense sum is the cache's."""
    net, data = trained_net(), digits()
    x = data.example_input
    table = LatencyTable(timer=lambda keys: [0.0] * len(keys), model_timer=lambda pairs: [3 * ms for ms in
                                                                                           params_ms(pairs)])
    nodes = fake_nodes(table)
    nodes.timer = _slow_first(1.5)
    ev = Evaluator(net, data, small_space(net), table, latency_model="nodes", nodes=nodes)
    policies = [ev.space.dense(), ev.space.policy({"keep:0": 8, "keep:3": 4, "int8:3": False}),
                ev.space.policy({"keep:0": 4, "keep:3": 8, "int8:3": False})]
    nets = [ev.model_and_keys(p, "none")[0] for p in policies]
    measured = three_us_per_parameter([(n, x) for n in nets])
    calibration._calibrate_nodes(ev, policies, nets, measured)
    shared = ["Conv2d:[[8, 1, 3, 3]]", "Linear:[[10, 32]]"]  # dense's, timed later as canaries (its 8x8 conv: never)
    true = fake_node_timer([{"key": k} for k in shared], "")
    assert nodes.lowered == 2 and nodes.faster == {}
    assert nodes.study_entries == pytest.approx({PREFIX + k: t for k, t in zip(shared, true, strict=True)})
    assert [nodes.table.entries[PREFIX + k] for k in shared] == pytest.approx([1.5 * t for t in true])  # cache kept
    dense = ev.node_raw(policies[0], nets[0])
    assert dense == pytest.approx(nodes.sum_keys(ev._node_keys[_shape(policies[0])]))  # re-summed, this study's
    assert nodes.scale == pytest.approx(measured[0] / dense)  # anchored on the re-summed dense model
    fresh = fake_nodes(LatencyTable(timer=lambda keys: [0.0] * len(keys)))
    assert dense < fresh.raw_model(nets[0], x) * 1.5 - 1e-9  # the stretch's dense sum is gone from the frame
    state = frame.table_state(ev)  # the study's frame records its own entries; resumed, it sums dense as before
    again = fake_nodes(table)
    resumed = Evaluator(net, data, small_space(net), table, latency_model="nodes", nodes=again)
    frame.restore_tables(resumed, json.loads(json.dumps(state)))  # as the study's storage gives it back
    assert again.study_entries == nodes.study_entries and resumed.node_raw(policies[0], nets[0]) == dense


def test_a_study_calibrating_on_a_shared_cache_does_not_move_the_sums_of_a_study_recorded_on_it_before(tmp_path):
    """Review R17 M1: study A's dense batch falls in a slow stretch (66 µs); study B, later on the same cache file,
    times Conv:a as a canary at its true time and its calibration lowers it. The lowering is B's alone (in its
    frame, not in the file), so A resumed re-sums dense at the 66 µs its frame was fitted on, not 46 µs, while B's
    own sums use the lowered entry."""
    cache = tmp_path / "machine.json"

    def table(slow_calls: int = 0) -> NodeTable:
        latency = LatencyTable(timer=lambda keys: [0.0] * len(keys))
        latency.path, latency.entries = cache, {}
        latency.entries = latency._load()  # a real timer's table: the shared cache file
        calls = [0]
        true = {"Conv:a": 0.040, "Conv:b": 0.020, "Relu:c": 0.004, "Add:e": 0.006}
        models = {"dense": ["Conv:a", "Relu:c"], "other": ["Conv:a", "Conv:b", "Add:e"]}

        def timer(batch, work):
            calls[0] += 1
            return [(1.5 if calls[0] <= slow_calls else 1.0) * true[n["key"]] for n in batch]

        return NodeTable(latency, timer=timer, splitter=lambda path, shape, work: [
            {"key": k, "op": k, "file": "", "feeds": ""} for k in models[path]])  # fmt: skip

    dense_a = table(slow_calls=2).raw_file("dense", (1,))
    b = table()
    other = b.raw_file("other", (1,))
    assert b.lower_entries() == 1
    assert dense_a == pytest.approx(0.066) and table().raw_file("dense", (1,)) == dense_a  # A resumed: 66 µs
    assert json.loads(cache.read_text())["entries"][PREFIX + "Conv:a"] == pytest.approx(0.060)  # the file: as timed
    assert b.study_entries == {PREFIX + "Conv:a": pytest.approx(0.040)}
    assert b.sum_keys(b.last_keys) == pytest.approx(other - 0.020)  # B's own sums: the lowered entry


def three_us_per_parameter(pairs):
    return [3 * ms for ms in params_ms(pairs)]
