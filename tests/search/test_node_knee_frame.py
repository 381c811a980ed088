"""The node table's weight knee (``NodeTable.weight_knee``, fitted by ``calibrate_weights(knee=...)``) travels with
the study's frame like the rest of its calibration: a resumed study (frame.table_state / restore_tables), a worker
(_study.record_context → workers.worker_evaluator) and the table report predict as the first run did (review R14
LOW 3). Scripted points as in test_node_weights: measured = 1.1 × sum + 0.05 × max(0, MiB − 0.7) + 0.01."""

import numpy as np
import pytest

from deepslim.search import _study, frame
from deepslim.search import workers as wk
from deepslim.search.engine import calibrate_table
from deepslim.search.finals import table_report
from tests.search._tiny import digits
from tests.search.test_node_floor import evaluator

CHECKS = [(0.2, 0.3), (0.2, 1.5), (0.35, 2.6), (0.1, 0.9)]  # (sum, MiB): below and beyond the knee


class _Study:
    """What record_context writes to: the study's user attributes."""

    def __init__(self):
        self.user_attrs = {}

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def _kneed():
    """An evaluator whose node table is fitted with a knee (0.7 MiB) on the scripted points."""
    ev = evaluator(1.3)
    dense = calibrate_table(ev)
    rng = np.random.default_rng(1)
    sizes = [2.8] + [float(w) for w in rng.uniform(0.05, 2.5, 13)]
    points = [(float(r), w, 1.1 * r + 0.05 * max(0.0, w - 0.7) + 0.01) for r, w in
              zip(rng.uniform(0.05, 0.4, 14), sizes, strict=True)]  # fmt: skip
    assert ev.nodes.calibrate_weights(points, through=points[0], knee=True)
    assert ev.nodes.weight_knee == pytest.approx(0.7)
    return ev, dense


def _predictions(nodes):
    return [nodes.predict(r, w) for r, w in CHECKS]


def test_a_restored_frame_keeps_the_knee_and_predicts_alike():
    ev, _ = _kneed()
    other = evaluator(1.3)
    frame.restore_tables(other, frame.table_state(ev))
    assert other.nodes.weight_knee == ev.nodes.weight_knee
    assert _predictions(other.nodes) == _predictions(ev.nodes)


def test_a_frame_recorded_before_the_knee_was_kept_restores_it_as_zero():
    ev, _ = _kneed()
    state = frame.table_state(ev)
    del state["nodes"]["weight_knee"]  # as a study recorded by an older version
    other = evaluator(1.3)
    other.nodes.weight_knee = 0.5
    frame.restore_tables(other, state)
    assert other.nodes.weight_knee == 0.0 and other.nodes.weight_coef == ev.nodes.weight_coef


def test_a_worker_rebuilds_the_node_table_with_the_knee_the_search_recorded():
    ev, _ = _kneed()
    study = _Study()
    _study.record_context(study, ev.space, ("accuracy", "latency"), {}, ev,
                          {"evaluator": wk.evaluator_settings(ev), "dense_predicted_ms": 1.0})  # fmt: skip
    job = study.user_attrs[wk.JOB_ATTR]
    assert job["table"]["machine"] == ev.table.key  # the same machine kind: no rescale here
    worker = wk.worker_evaluator(ev.model, digits(), ev.space, ev.table, job)
    assert worker.nodes.weight_knee == pytest.approx(0.7)
    assert _predictions(worker.nodes) == pytest.approx(_predictions(ev.nodes), rel=1e-12)


def test_a_worker_sums_the_node_entries_the_search_lowered_in_its_study():
    """The calibration's lowered entries live in the study (not the shared cache): a worker on the same machine kind
    sums them too, or its trials would be predicted on other entries than the dense model, the limits and the fit
    (review R2 17 H1)."""
    ev, _ = _kneed()
    key = next(k for k in ev.table.entries if k.startswith(ev.nodes.prefix))
    ev.nodes.study_entries[key] = ev.table.entries[key] / 2  # as lower_entries() leaves it: this study's own
    study = _Study()
    _study.record_context(study, ev.space, ("accuracy", "latency"), {}, ev,
                          {"evaluator": wk.evaluator_settings(ev), "dense_predicted_ms": 1.0})  # fmt: skip
    worker = wk.worker_evaluator(ev.model, digits(), ev.space, ev.table, study.user_attrs[wk.JOB_ATTR])
    assert worker.nodes.study_entries == ev.nodes.study_entries
    assert worker.nodes._entry(key) == ev.nodes._entry(key) == ev.table.entries[key] / 2


def test_the_table_report_records_the_knee():
    ev, dense = _kneed()
    doc = table_report(ev.table, [], "nodes", dense, ev.nodes)
    assert doc["node_weight_knee_mib"] == pytest.approx(0.7)
    assert doc["node_ms_per_weight_mib"] == pytest.approx(ev.nodes.weight_coef)


def test_a_worker_times_with_the_windows_the_search_recorded(tmp_path):
    """A table with non-default timing windows: its workers build theirs with the same windows, so they share its
    cache key (and entries) instead of measuring a table of their own under another protocol."""
    from deepslim.search.latency import LatencyTable

    ev, _ = _kneed()
    parent = LatencyTable(cache_dir=tmp_path, window_s=1.5, model_window_s=0.25)
    ev.table = parent
    study = _Study()
    _study.record_context(study, ev.space, ("accuracy", "latency"), {}, ev,
                          {"evaluator": wk.evaluator_settings(ev), "runtime": "onnxruntime", "threads": 1})  # fmt: skip
    job = study.user_attrs[wk.JOB_ATTR]
    table = wk._worker_table(job, study, None, str(tmp_path))
    assert (table.window_s, table.model_window_s) == (1.5, 0.25)
    assert table.key == parent.key


def test_the_table_report_counts_node_entries_without_the_graph_node_term():
    """The per-node graph term (GRAPH_NODE) is cached among the node entries but is not a node: the report counts
    the nodes alone and gives the term its own field."""
    from deepslim.search.node_table import GRAPH_NODE, PREFIX

    ev, dense = _kneed()
    ev.table.entries.update({PREFIX + "a": 0.01, PREFIX + "b": 0.02, GRAPH_NODE: 0.0003})
    nodes = sum(1 for k in ev.table.entries if k.startswith(PREFIX)) - 1
    doc = table_report(ev.table, [], "nodes", dense, ev.nodes)
    assert doc["node_entries"] == nodes and doc["node_graph_ms"] == 0.0003


def test_the_table_report_counts_the_entries_of_its_own_timing_protocol():
    """A node table timed with other settings keys its entries under its own prefix (node_prefix): the report counts
    those and reads its own graph term, not the default protocol's (which it reported before)."""
    from deepslim.search.node_table import GRAPH_NODE, PREFIX, NodeTable, node_prefix

    ev, dense = _kneed()
    once = NodeTable(ev.table, timer=lambda nodes, work: [0.01] * len(nodes), twins=1, retries=0)
    assert once.prefix == node_prefix(twins=1, retries=0) != PREFIX
    ev.table.entries.update({PREFIX + "a": 0.01, GRAPH_NODE: 0.0003, once.prefix + "a": 0.02,
                             once.prefix + "b": 0.03, once.graph_key: 0.0004})  # fmt: skip
    doc = table_report(ev.table, [], "nodes", dense, once)
    assert doc["node_entries"] == 2 and doc["node_graph_ms"] == 0.0004


def test_a_new_study_does_not_inherit_the_entries_another_study_lowered_on_the_same_node_table():
    """``search(node_table=...)`` twice in one process: the second study's calibration starts its own lowered
    entries empty instead of summing (and recording as its own) the first study's (review R2 17 L2)."""
    ev = evaluator(1.3)
    ev.nodes.study_entries["node:another-study"] = 0.001
    calibrate_table(ev)
    assert "node:another-study" not in ev.nodes.study_entries
