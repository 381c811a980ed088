"""How the latency tables' entries are timed (session 14: node entries through IO binding plus a per-node term, the
rounds spread over a window): part of the cache key and of what a resumed study must share; the windows are explicit
(the cached entries 3 s, end-to-end timings none unless asked); the node timer keeps what it binds alive."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepslim.errors import ConfigError
from deepslim.search import _judging, _ort_timing, _timing
from deepslim.search._ort_timing import WINDOW_S
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import STAT, LatencyTable, LayerKey, machine_key
from deepslim.search.node_table import PREFIX, NodeTable
from tests.search._tiny import digits, fake_ms, small_space, trained_net


def test_a_cache_written_before_the_timing_protocol_changed_is_not_read_back(tmp_path):
    """A session-13 cache file (the key of CPU | cores | runtime | threads | statistic, no protocol) holds node
    entries timed with plain ``run``: the table must neither read them nor write beside them under that name."""
    import onnxruntime

    from deepslim.analysis.calibrate import cpu_name

    version = onnxruntime.__version__
    text = f"{cpu_name()}|{os.cpu_count()}|onnxruntime-{version}|threads=1|{STAT}"
    old = tmp_path / f"onnxruntime-{version}-t1-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    old.write_text(json.dumps({"machine": old.stem, "entries": {PREFIX + "Conv:old": 0.5}}))
    table = LatencyTable(cache_dir=tmp_path)
    assert table.path != old and table.entries == {} and table.key == machine_key("onnxruntime", 1, WINDOW_S)
    assert table.key != machine_key("onnxruntime", 1, 0.0)  # another window: another cache
    assert LatencyTable(cache_dir=tmp_path, window_s=0.0).path != table.path


def _evaluator(table: LatencyTable) -> Evaluator:
    net = trained_net()
    return Evaluator(net, digits(), small_space(net), table)


def _study_with_a_trial(recorded: dict) -> object:
    optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.set_user_attr(_judging.ATTR, recorded)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return study


def test_a_study_judged_before_the_timing_protocol_changed_is_refused_on_resume():
    ev = _evaluator(LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys]))
    now = _judging.settings(ev)
    assert now["timing"] == ev.table.timing and f"window={WINDOW_S:g}" in now["timing"]
    before = {k: v for k, v in now.items() if k != "timing"}  # what a session-13 study recorded
    with pytest.raises(ConfigError, match=r"^study 'old' records no timing \(an older deepslim judged its trials"):
        _judging.check(_study_with_a_trial(before), "old", now)
    _judging.check(_study_with_a_trial(now), "same", now)  # the same protocol resumes
    spread_less = _judging.settings(_evaluator(LatencyTable(timer=lambda keys: [0.0] * len(keys), window_s=0.0)))
    with pytest.raises(ConfigError, match=r"judged its trials with timing='.*window=3'; this search has timing="):
        _judging.check(_study_with_a_trial(now), "other", spread_less)


def test_cached_entries_spread_over_the_window_end_to_end_timings_over_none_unless_asked(tmp_path, monkeypatch):
    import deepslim.export

    windows: list[float] = []

    def run_timer(files, threads, rounds, block, window_s=0.0):
        windows.append(window_s)
        return [1.0] * len(files)

    monkeypatch.setattr(_ort_timing, "_run_timer", run_timer)
    monkeypatch.setattr(_timing, "_run_timer", run_timer)
    monkeypatch.setattr(deepslim.export, "export_onnx", lambda model, path, **_: Path(path).write_text("fake"))
    key = LayerKey("conv2d", (1, 1, 8, 8), 4, (3, 3), (1, 1), (1, 1), (1, 1))
    net, x = trained_net(), digits().example_input
    table = LatencyTable(cache_dir=tmp_path)
    table.layer_ms([key])
    table.measure([(net, x)])
    table.measure_runs([(net, x)], 2)
    timer = _timing.PairTimer(table, net, x)
    timer._time(["a.onnx"])
    assert windows == [WINDOW_S, 0.0, 0.0, 0.0, 0.0]  # entries 3 s; the check, the finals' runs, the pair: none
    asked = LatencyTable(cache_dir=tmp_path, window_s=0.5, model_window_s=2.0)
    windows.clear()
    asked.layer_ms([key])
    asked.measure([(net, x)])
    _timing.PairTimer(asked, net, x)._time(["a.onnx"])
    _timing.PairTimer(asked, net, x, window_s=1.5)._time(["a.onnx"])
    assert windows == [0.5, 2.0, 2.0, 1.5]
    for bad in (-1.0, float("inf"), True, "3"):
        with pytest.raises(ConfigError, match=r"window_s must be a number of seconds >= 0"):
            LatencyTable(cache_dir=tmp_path, window_s=bad)
    with pytest.raises(ConfigError, match=r"node table's window_s=0 differs from its latency table's \(3\)"):
        NodeTable(table, window_s=0.0)


def test_the_run_timer_spreads_over_no_window_by_default():
    assert inspect.signature(_ort_timing._run_timer).parameters["window_s"].default == 0.0
    assert inspect.signature(_ort_timing.time_layers).parameters["window_s"].default == WINDOW_S


# An IOBinding that keeps no reference to what is bound (as the bindings of some onnxruntime releases), then the
# timer's ``_bound`` on a large Relu whose feed dict and arrays the caller drops: the output must still be right.
_OLD_BINDING = r"""
import gc, sys
import numpy as np, onnx
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_inference_collection as c

def bind_in(self, name, value):
    self._iobinding.bind_ortvalue_input(name, value._ortvalue)

def bind_out(self, name, value):
    self._iobinding.bind_ortvalue_output(name, value._ortvalue)

c.IOBinding.bind_ortvalue_input, c.IOBinding.bind_ortvalue_output = bind_in, bind_out
sys.path.insert(0, sys.argv[1])
import _node_timer

shape = [1, 64, 128, 128]
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
path = sys.argv[2] + "/relu.onnx"
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
sess = _node_timer._session(path, 1, False)
bound = _node_timer._bound(sess, {"x": np.full(shape, 2.0, np.float32)})
binding = bound[0] if isinstance(bound, tuple) else bound
gc.collect()
junk = [np.full(shape, -7.0, np.float32) for _ in range(4)]  # reuses freed memory, if any
sess.run_with_iobinding(binding)
print(sorted({float(v) for v in np.unique(binding.get_outputs()[0].numpy())}))
np.savez(sys.argv[2] + "/feeds.npz", x=np.full(shape, 2.0, np.float32))
print(len(_node_timer.time_nodes([(path, sys.argv[2] + "/feeds.npz")], threads=1, rounds=2, block=1,
                                 work=sys.argv[2])["min_ms"]))
"""


def test_the_node_timer_keeps_what_it_binds_alive_when_the_binding_does_not(tmp_path):
    here = Path(_ort_timing.__file__).parent
    proc = subprocess.run([sys.executable, "-c", _OLD_BINDING, str(here), str(tmp_path)], capture_output=True,
                          text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split("\n")[:2] == ["[2.0]", "1"]


def test_a_session_14_study_judged_by_the_layer_table_resumes_and_one_judged_by_the_node_table_is_refused():
    """Session 15 changed how node entries are timed (twins), not layer entries: a study records the protocol of
    the entries that judged it, set by the search's frame (frame.check_feasible), so a session-14 study judged by
    the layer table resumes while one judged by the node table is refused (review R15 L9)."""
    from deepslim.search import frame

    def fake(keys):
        return [fake_ms(k) for k in keys]

    layers = _evaluator(LatencyTable(timer=fake))
    frame.check_feasible(layers, (), {}, None)  # no budget: the frame's timing alone
    session14 = {**_judging.settings(layers), "timing": f"iobind+graph-node|window={WINDOW_S:g}"}
    assert _judging.settings(layers) == session14
    _judging.check(_study_with_a_trial(session14), "layers14", _judging.settings(layers))
    net, table = trained_net(), LatencyTable(timer=fake)
    nodes = Evaluator(net, digits(), small_space(net), table, latency_model="nodes",
                      nodes=NodeTable(table, timer=lambda n, w: [0.0] * len(n)))  # fmt: skip
    frame.check_feasible(nodes, (), {}, None)
    assert _judging.settings(nodes)["timing"] == f"iobind+graph-node+twins+own-overhead|window={WINDOW_S:g}"
    with pytest.raises(ConfigError, match=r"judged its trials with timing='iobind\+graph-node\|window=3'"):
        _judging.check(_study_with_a_trial({**session14, "latency_model": "nodes"}), "nodes14",
                       _judging.settings(nodes))  # fmt: skip
    once = NodeTable(nodes.table, timer=lambda n, w: [0.0] * len(n), twins=1, retries=0)
    assert once.timing == f"iobind+graph-node+twins+own-overhead|window={WINDOW_S:g}|node[twins=1,retries=0]"


def test_node_entries_cached_and_studies_judged_before_the_per_process_overhead_are_not_served_or_resumed(tmp_path):
    """Session 17 changed what a node entry is (one process's gross time less its own trivial graph, not each node's
    least gross time less the least trivial graph of any process) and the protocol tag with it (review R17 M2): a
    session-16 cache file's node entries are timed again, not served, and a study the node table judged then is
    refused on resume; one the layer table judged (whose entries did not change) still resumes."""
    import onnxruntime

    from deepslim.analysis.calibrate import cpu_name

    version, tag = onnxruntime.__version__, f"iobind+graph-node+twins|window={WINDOW_S:g}"  # session 15-16's
    text = f"{cpu_name()}|{os.cpu_count()}|onnxruntime-{version}|threads=1|{STAT}|{tag}"
    old = tmp_path / f"onnxruntime-{version}-t1-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    old.write_text(json.dumps({"machine": old.stem, "entries": {PREFIX + "Conv:a": 0.5}}))
    table = LatencyTable(cache_dir=tmp_path)
    assert table.path != old and table.entries == {}
    timed: list[str] = []

    def timer(batch, work):
        timed.extend(n["key"] for n in batch)
        return [0.04] * len(batch)

    nodes = NodeTable(table, timer=timer, splitter=lambda path, shape, work: [
        {"key": "Conv:a", "op": "Conv", "file": "", "feeds": ""}])  # fmt: skip
    assert nodes.raw_file("m", (1, 4)) == pytest.approx(0.04) and timed == ["Conv:a", "Conv:a"]  # twins, not 0.5
    assert json.loads(old.read_text())["entries"] == {PREFIX + "Conv:a": 0.5}  # the old file is left alone
    fake = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys])
    net = trained_net()
    judged = Evaluator(net, digits(), small_space(net), fake, latency_model="nodes",
                       nodes=NodeTable(fake, timer=lambda n, w: [0.0] * len(n)))  # fmt: skip
    session16 = {**_judging.settings(judged), "timing": tag}
    with pytest.raises(ConfigError, match=r"judged its trials with timing='iobind\+graph-node\+twins\|window=3'") as e:
        _judging.check(_study_with_a_trial(session16), "nodes16", _judging.settings(judged))
    assert "resume it with the deepslim that timed it" in str(e.value) and "\n" not in str(e.value)
    layers = _evaluator(fake)
    _judging.check(_study_with_a_trial(_judging.settings(layers)), "layers16", _judging.settings(layers))
    assert _judging.settings(layers)["timing"] == f"iobind+graph-node|window={WINDOW_S:g}"  # unchanged since 14
