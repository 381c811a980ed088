"""Search trials on worker processes (issue 15): ``search(workers=N)`` on a journal file and on a private
PostgreSQL cluster against one in-process worker, layer latencies shared through the study, and the refusals."""

import logging
import time

import pytest

import deepslim as ds
from deepslim.errors import ConfigError
from deepslim.search import LatencyTable, search
from deepslim.search import storage as st
from deepslim.search import workers as wk
from deepslim.search._process import process_state
from tests.search import _tiny
from tests.search._tiny import FAST, digits, fake_ms, small_space, trained_net

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")

DATA = {"seed": 0, "calib_size": 128}  # as tests.search._tiny.digits() loads it


def fake_timer(keys):
    """A module-level timer (workers import it by name): tests.search._tiny.fake_ms of each key."""
    return [fake_ms(k) for k in keys]


def factory_net():
    """The trained tiny net, built from its factory so that its file records how to rebuild it."""
    net = ds.load_model(f"{_tiny.__file__}:tiny_net")
    net.load_state_dict(trained_net().state_dict())
    return net.eval()


def run(out_dir, workers, storage=None, **kwargs):
    net = factory_net()
    return search(net, "digits", small_space(net), ("accuracy", "latency"), "latency=0.6x", trials=8,
                  strategy="grid", out_dir=out_dir, storage=storage, latency_table=LatencyTable(timer=fake_timer),
                  data_options=DATA, workers=workers, **FAST, **kwargs)  # fmt: skip


def judged(result):
    return {str(sorted(c.policy.params().items())): (c.accuracy, c.latency_ms, c.feasible) for c in result.trials}


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    return run(tmp_path_factory.mktemp("one"), 1)


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_three_workers_finish_exactly_the_trials_with_the_front_of_one_worker(backend, request, tmp_path, one_worker):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    seen = []
    many = run(tmp_path, 3, storage=url, on_trial=lambda c: seen.append(c.trial))
    assert sorted(c.trial for c in many.trials) == list(range(8)) == sorted(seen)  # distinct, none lost or extra
    assert judged(many) == judged(one_worker)  # every policy judged alike in another process
    assert [c.policy for c in many.pareto] == [c.policy for c in one_worker.pareto]
    assert [(c.accuracy, c.latency_ms) for c in many.pareto] == [(c.accuracy, c.latency_ms) for c in one_worker.pareto]
    assert many.best.policy == one_worker.best.policy and many.limits == one_worker.limits
    storage = st.open_storage(url or f"journal:{tmp_path / st.DEFAULT_JOURNAL}")
    trials = optuna.load_study(study_name="deepslim-search", storage=storage).get_trials()
    holders = {t.system_attrs[st.HOLDER_ATTR]["pid"] for t in trials}
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert st.this_process()["pid"] not in holders  # the trials ran in the workers, not here
    assert many.study["workers"] == 3
    if url is not None:  # the storage is reported without its password
        assert many.study["storage"] == url.replace(request.getfixturevalue("postgres").password, "***")


def journal_study(tmp_path, name="s"):
    return st.create_study_once(f"journal:{tmp_path / 's.journal'}", name, ["maximize"],
                                metadata={"space_fingerprint": "fp"})  # fmt: skip


def job_for(machine, dense_ms=1.0):
    return {"timer": f"{__name__}:fake_timer", "model_timer": None, "runtime": "onnxruntime", "threads": 1,
            "dense_predicted_ms": dense_ms,
            "table": {"machine": machine, "scale": 2.0, "offset_ms": 0.5, "conversion_weight": 1.5}}  # fmt: skip


def test_a_worker_of_the_study_machine_kind_uses_its_shared_latencies_and_calibration(tmp_path):
    from deepslim.search.latency import LayerKey

    key = LayerKey("linear", (1, 32), 10)
    study = journal_study(tmp_path)
    parent = LatencyTable(timer=fake_timer)
    parent.entries[key.text] = 7.0  # as if measured by the process that created the study
    wk.publish_entries(study, parent, set())
    table = wk._worker_table(job_for("custom"), study, f"{__name__}:fake_timer", None)
    assert table.layer_ms([key]) == [7.0] and table.measured == 0  # not measured again here
    assert (table.scale, table.offset, table.change_weight) == (2.0, 0.5, 1.5)
    assert wk.shared_entries(study, "other-kind") == {}


def test_a_worker_of_another_machine_kind_measures_its_own_table_scaled_to_the_study_machine(tmp_path, caplog):
    from deepslim.search.evaluate import Evaluator

    study = journal_study(tmp_path)
    with caplog.at_level(logging.WARNING, logger="deepslim.search.workers"):
        table = wk._worker_table(job_for("study-machine"), study, f"{__name__}:fake_timer", None)
    assert "this machine's latency table (custom) is not the study's (study-machine): measuring" in caplog.text
    assert (table.scale, table.offset) == (1.0, 0.0)  # not the study machine's calibration
    net = trained_net()
    ev = Evaluator(net, digits(), small_space(net), table)
    here = ev.evaluate(ev.space.dense(), recovery="none").latency_ms
    wk._calibrate_here(ev, job_for("study-machine", dense_ms=3 * here))
    assert ev.evaluate(ev.space.dense(), recovery="none").latency_ms == pytest.approx(3 * here)


def test_a_worker_refuses_another_model_file_and_a_missing_custom_timer(tmp_path):
    path = tmp_path / "m.pt"
    ds.save_model(factory_net(), path)
    record = {"path": str(path), "sha256": "0" * 64}
    with pytest.raises(st.StorageError, match=r"is not the study's model \(sha256 differs from 000000000000"):
        wk._load_model(record, None, None, ds.load_model)
    with pytest.raises(ConfigError, match=r"not on this machine: copy it here and pass --model PATH"):
        wk._load_model({**record, "path": str(tmp_path / "gone.pt")}, None, None, ds.load_model)
    with pytest.raises(ConfigError, match=rf"pass --timer {__name__}:fake_timer to run that code here"):
        wk._worker_table(job_for("custom"), journal_study(tmp_path), None, None)


@pytest.mark.parametrize(("change", "message"), [
    ({"data": "bundle"}, "give the data as a dataset spec"),
    ({"model": "plain"}, "the model must record its architecture"),
    ({"latency_table": LatencyTable(timer=lambda keys: [1.0] * len(keys))}, "only as a module-level function"),
    ({"out_dir": None}, "give the search an out_dir"),
])  # fmt: skip
def test_what_cannot_reach_worker_processes_is_refused_before_any_work(tmp_path, change, message):
    kwargs = {"out_dir": tmp_path, "latency_table": LatencyTable(timer=fake_timer), **change}
    data = digits() if kwargs.pop("data", None) == "bundle" else "digits"
    net = trained_net() if kwargs.pop("model", None) == "plain" else factory_net()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        search(net, data, ("prune",), trials=2, workers=2, storage=f"journal:{tmp_path / 's'}", **kwargs)
    assert time.perf_counter() - start < 2 and not (tmp_path / "s").exists()


def test_an_interrupted_search_stops_its_workers_and_resumes_without_losing_or_repeating_trials(tmp_path, one_worker):
    def interrupt(_candidate):
        raise KeyboardInterrupt  # Ctrl-C as the first completed trial is reported

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 2, on_trial=interrupt)
    storage = st.open_storage(f"journal:{tmp_path / st.DEFAULT_JOURNAL}")
    trials = optuna.load_study(study_name="deepslim-search", storage=storage).get_trials()
    pids = {t.system_attrs[st.HOLDER_ATTR]["pid"] for t in trials if st.HOLDER_ATTR in t.system_attrs}
    assert pids and all(process_state(pid) is None for pid in pids)  # every worker stopped (and reaped)
    first = {t.number for t in trials if t.state.name == "COMPLETE"}
    # on a quiet machine the two workers may finish all 8 tiny trials before the parent reports the first one
    assert 1 <= len(first) <= 8
    resumed = run(tmp_path, 1)  # the same search, resumed (in this process)
    slots = [c.trial for c in resumed.trials]
    assert len(slots) == 8 and first <= set(slots)  # the finished trials kept
    assert judged(resumed) == judged(one_worker)  # each policy once, judged alike


def test_a_worker_waits_for_the_study_then_says_how_to_create_it(tmp_path):
    start = time.perf_counter()
    with pytest.raises(st.StorageError, match=r"no study 'late' in this storage \(it has: none\): create it with "
                                              r"deepslim search first, or give the worker --wait SECONDS"):  # fmt: skip
        wk.run_worker(f"journal:{tmp_path / 's.journal'}", "late", wait_s=1.5)
    assert time.perf_counter() - start >= 1.5
