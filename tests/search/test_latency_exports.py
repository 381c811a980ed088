"""A model timed end to end and then summed node by node is exported once (_ort_timing.KeptFiles): the calibration and
the table check read the end-to-end timer's file for the node sums; a model changed since, another input shape or
a node table with its own exporter export again. The exporter and the timers are fakes that count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import deepslim.export
from deepslim.search import _ort_timing, latency
from deepslim.search.engine import calibrate_table
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable, check_table
from deepslim.search.node_table import NodeTable
from tests.search._tiny import digits, fake_export, fake_node_timer, fake_split_layers, small_space, trained_net


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A real (not custom) table whose exporter and ONNX Runtime timer are fakes: ``exported`` lists each model the
    exporter wrote, ``split`` each file the node splitter read, ``timed`` each file the end-to-end timer timed."""
    log: dict[str, list] = {"exported": [], "split": [], "timed": []}

    def export(model, path, *, example_input, **_):
        log["exported"].append(model)
        fake_export(model, Path(path), example_input)

    def run_timer(files, threads, rounds, block, window_s=0.0):
        if all(Path(f).name.startswith("layer") for f, _ in files):  # the layer table's one-layer graphs
            return [0.01] * len(files)
        log["timed"] += [f for f, _ in files]
        return [sum(math.prod(d) for _, d in json.loads(Path(f).read_text())) / 1e3 for f, _ in files]

    def split(path, shape, work):
        log["split"].append(str(path))
        return fake_split_layers(path, shape, work)

    monkeypatch.setattr(deepslim.export, "export_onnx", export)
    monkeypatch.setattr(_ort_timing, "_run_timer", run_timer)
    table = LatencyTable(cache_dir=tmp_path)
    return table, NodeTable(table, splitter=split, timer=fake_node_timer), log


def test_the_node_sum_of_a_model_just_timed_reads_its_file_and_removes_it(fakes):
    table, nodes, log = fakes
    x = digits().example_input
    nets = [trained_net(), trained_net()]
    measured = table.measure([(n, x) for n in nets])
    raws = [nodes.raw_model(n, x) for n in nets]
    assert len(log["exported"]) == 2 and log["split"] == log["timed"]  # the timer's files, not new exports
    assert all(not Path(f).exists() for f in log["split"])  # taken, then removed
    assert measured[0] == measured[1] > 0 and raws[0] == raws[1] > 0
    nodes.raw_model(nets[0], x)  # taken once: a second sum exports
    assert len(log["exported"]) == 3 and log["split"][-1] not in log["timed"]


def test_a_model_changed_since_its_measurement_or_another_input_shape_is_exported_again(fakes):
    table, nodes, log = fakes
    x = digits().example_input
    pruned, flagged, strided, other_shape, untouched = (trained_net() for _ in range(5))
    table.measure([(m, x) for m in (pruned, flagged, strided, other_shape, untouched)])
    pruned[8] = nn.Linear(32, 5)  # a smaller head: another graph
    flagged[8].bits = 4  # a setting the export reads
    strided[3].stride, strided[3].padding = (2, 2), (0, 0)  # same weights, tuple settings: another graph
    files = list(log["timed"])
    nodes.raw_model(pruned, x)
    nodes.raw_model(flagged, x)
    nodes.raw_model(strided, x)
    nodes.raw_model(other_shape, torch.cat([x, x]))
    assert len(log["exported"]) == 5 + 4 and not set(log["split"]) & set(files)
    assert not Path(files[0]).exists() and not Path(files[2]).exists()  # a stale file is removed, not kept
    nodes.raw_model(untouched, x)
    assert len(log["exported"]) == 9 and log["split"][-1] == files[4]


def test_the_next_measurement_removes_the_files_not_taken(fakes):
    table, nodes, log = fakes
    x = digits().example_input
    first, second = trained_net(), trained_net()
    table.measure([(first, x)])
    table.measure([(second, x)])
    assert not Path(log["timed"][0]).exists() and Path(log["timed"][1]).exists()
    nodes.raw_model(first, x)
    assert len(log["exported"]) == 3  # the first model's file was gone: exported again


def test_a_node_table_with_its_own_exporter_never_reads_the_tables_files(fakes):
    table, _, log = fakes
    own: list[nn.Module] = []

    def exporter(model, path, example_input):
        own.append(model)
        fake_export(model, path, example_input)

    nodes = NodeTable(table, splitter=fake_split_layers, timer=fake_node_timer, exporter=exporter)
    net, x = trained_net(), digits().example_input
    table.measure([(net, x)])
    nodes.raw_model(net, x)
    assert own == [net] and len(log["exported"]) == 1


def test_the_calibration_exports_each_model_once(fakes):
    table, nodes, log = fakes
    net, data = trained_net(), digits()
    ev = Evaluator(net, data, small_space(net), table, latency_model="nodes", nodes=nodes)
    calibrate_table(ev)
    models = log["exported"]
    assert len(models) >= 4 and len({id(m) for m in models}) == len(models)  # no model exported twice
    assert set(log["split"]) <= set(log["timed"]) and len(log["split"]) >= 4  # every node sum read a timed file
    assert ev.nodes.scale > 0 and ev.nodes.points


def test_the_table_check_exports_each_model_once_and_predicts_every_row_from_the_nodes(fakes):
    table, nodes, log = fakes
    net, data = trained_net(), digits()
    check = check_table(net, small_space(net), table, example_input=data.example_input, calib_data=data.calib,
                        policies=3, nodes=nodes)  # fmt: skip
    policies = [m for m in log["exported"] if m is not net]  # the dense reference is timed in each chunk (one here)
    assert len(policies) == 3 and len({id(m) for m in policies}) == 3 and len(log["exported"]) == 4
    assert log["split"] == [f for f in log["timed"] if "model0" not in f]  # the policies' timed files (not dense's)
    assert len(check.rows) == 3 and all(r["node_predicted_ms"] > 0 for r in check.rows)


def test_the_names_moved_out_of_latency_are_importable_from_it_as_before():
    import importlib

    from deepslim.search import table_check

    search = importlib.import_module("deepslim.search")  # the package (deepslim.search is also the function)

    for name in ("TableCheck", "check_table", "kendall_tau"):
        assert getattr(latency, name) is getattr(table_check, name) is getattr(search, name)
    for name in ("STAT", "KeptFiles", "_run_timer", "export_model", "time_layers", "time_models", "time_models_runs"):
        assert getattr(latency, name) is getattr(_ort_timing, name)  # benchmarks import them from latency
    assert table_check.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant pairs, 1 discordant
