"""The search judges latency with the node-level table (deepslim.search.node_table): trials, budgets, feasibility and
the table check in its frame; the finalists re-measured with the dense model and judged within the noise band."""

import json

import pytest

from deepslim.errors import ConfigError
from deepslim.search import LatencyTable, search
from deepslim.search import workers as wk
from deepslim.search.budget import Budget
from deepslim.search.evaluate import Evaluator, resolve_latency_model
from deepslim.search.finals import choose, verdict
from deepslim.search.node_table import PREFIX, NodeTable
from tests.search._tiny import (
    FAST,
    digits,
    fake_ms,
    fake_node_ms,
    fake_nodes,
    fake_split,
    fake_table,
    params_ms,
    small_space,
    trained_net,
)

optuna = pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def node_evaluator(net, table=None, exported=False, **kwargs):
    table = table or fake_table()
    return Evaluator(net, digits(), small_space(net), table, latency_model="nodes",
                     nodes=fake_nodes(table, exported=exported), **kwargs)  # fmt: skip


def test_a_trials_latency_is_the_node_tables_sum_over_its_own_exported_pruned_and_quantized_graph(tmp_path):
    from deepslim.export import export_onnx

    net = trained_net()
    ev = node_evaluator(net, exported=True)
    policy = ev.space.policy({"keep:0": 4, "keep:3": 8, "int8:3": True})
    cand = ev.evaluate(policy)
    model, keys = ev.model_and_keys(policy, "bn")  # the oracle: the same model, exported here, split alike
    export_onnx(model, tmp_path / "m.onnx", example_input=digits().example_input)
    nodes = fake_split(tmp_path / "m.onnx", None, None)
    assert "QuantizeLinear" in {n["op"] for n in nodes}  # the quantized graph, not the float one
    assert any("[4, 1, 3, 3]" in n["key"] for n in nodes)  # the pruned one: 4 channels in the first convolution
    assert cand.latency_ms == pytest.approx(sum(fake_node_ms(n["key"]) for n in nodes))
    extra = cand.measurement.extra
    assert extra["latency_model"] == "nodes" and extra["node_predicted_ms"] == cand.latency_ms
    assert extra["layer_predicted_ms"] == pytest.approx(ev.table.predict_keys(keys))  # the other table, beside
    measured = ev.table.measured
    again = ev.evaluate(policy, recovery="finetune")  # the same policy's graph: its nodes are not split again
    assert again.latency_ms == cand.latency_ms and ev.table.measured == measured


def test_an_unknown_latency_model_is_refused_with_the_valid_ones():
    net = trained_net()
    with pytest.raises(ConfigError, match=r"unknown latency model 'flops'; choose one of nodes, layers, measured"):
        Evaluator(net, digits(), small_space(net), fake_table(), latency_model="flops")
    with pytest.raises(ConfigError, match=r"unknown latency model 'flops'; choose one of nodes, layers, measured"):
        resolve_latency_model("flops", fake_table())


def test_the_default_latency_model_is_nodes_on_onnxruntime_and_layers_on_a_table_of_fakes(tmp_path):
    real = LatencyTable(cache_dir=tmp_path)
    name, nodes = resolve_latency_model(None, real)
    assert name == "nodes" and isinstance(nodes, NodeTable) and nodes.table is real and not nodes.custom
    assert resolve_latency_model("layers", real)[0] == "layers" and resolve_latency_model("layers", real)[1]
    fake = fake_table()
    assert resolve_latency_model(None, fake) == ("layers", None)
    given = fake_nodes(fake)
    assert resolve_latency_model(None, fake, given) == ("nodes", given)
    with pytest.raises(ConfigError, match=r"the node table must be built on the search's latency table"):
        resolve_latency_model(None, fake, fake_nodes(fake_table()))


def test_the_search_judges_trials_budgets_and_its_optimum_in_the_node_tables_frame(tmp_path):
    net, data = trained_net(), digits()
    table = fake_table()
    result = search(net, data, small_space(net), ("accuracy", "latency"), "latency=0.6x", trials=8, strategy="grid",
                    out_dir=tmp_path, latency_table=table, node_table=fake_nodes(table), **FAST)  # fmt: skip
    oracle = node_evaluator(net)
    dense = oracle.evaluate(oracle.space.dense(), recovery="none").latency_ms
    judged = {str(p.to_dict()): oracle.evaluate(p) for p in oracle.space.all_policies()}
    feasible = [c for c in judged.values() if c.latency_ms <= 0.6 * dense]
    expected = min(feasible, key=lambda c: (-c.accuracy, c.latency_ms))
    assert result.limits["latency"] == pytest.approx(0.6 * dense)
    for c in result.trials:
        assert c.latency_ms == pytest.approx(judged[str(c.policy.to_dict())].latency_ms)
    assert result.best.policy == expected.policy and result.study["latency_model"] == "nodes"
    # the layer table's frame (int8 at 0.4x) would have chosen another policy: the frames really differ here
    layers = Evaluator(net, data, oracle.space, fake_table())
    ldense = layers.evaluate(oracle.space.dense(), recovery="none").latency_ms
    in_layers = [layers.evaluate(p) for p in oracle.space.all_policies()]
    other = min((c for c in in_layers if c.latency_ms <= 0.6 * ldense), key=lambda c: (-c.accuracy, c.latency_ms))
    assert other.policy != expected.policy
    assert result.latency_table["latency_model"] == "nodes" and result.latency_table["dense_predicted_ms"] == dense


def test_an_infeasible_budget_names_the_smallest_value_the_node_table_predicts(tmp_path):
    net = trained_net()
    oracle = node_evaluator(net)
    space = oracle.space
    dense = oracle.evaluate(space.dense(), recovery="none").latency_ms
    least = min(oracle.evaluate(p, recovery="none").latency_ms for p in (space.smallest(True), space.smallest(False)))
    table = fake_table()
    with pytest.raises(ConfigError) as refused:
        search(net, digits(), space, budget="latency=0.2x", trials=3, out_dir=tmp_path, latency_table=table,
               node_table=fake_nodes(table), **FAST)  # fmt: skip
    text = str(refused.value)
    assert f"({least:.4g} ms, {least / dense:.2f}x of dense, as the node table predicts it: 8 of 16 channels kept, " \
           "0 of 1 layers int8)" in text and f"loosen it to at least {least / dense:.2f}x" in text
    assert not (tmp_path / "study.journal").exists()


# -- the final re-measurement --------------------------------------------------------------------------------------


def test_a_finalist_meets_its_budget_in_every_run_within_the_noise_band_in_some_or_is_over_in_none():
    half = Budget("latency", 0.5, relative=True)
    dense = [10.0, 11.0, 12.0]  # budgets per run: 5.0, 5.5, 6.0
    meets = verdict([4.9, 5.4, 5.9], dense, half, 5.2)
    assert meets["verdict"] == "meets" and meets["within_budget"] and meets["measured_ms"] == 4.9
    assert meets["band_ms"] == [4.9, 5.9] and meets["budget_ms"] == 5.0 and meets["budget_band_ms"] == [5.0, 6.0]
    assert meets["dense_measured_ms"] == 10.0
    noisy = verdict([5.2, 5.4, 6.5], dense, half, 5.2)
    assert noisy["verdict"] == "within noise" and noisy["within_budget"]
    over = verdict([5.2, 5.6, 6.1], dense, half, 5.2)
    assert over["verdict"] == "over" and not over["within_budget"]
    absolute = verdict([4.0, 4.4], [9.0, 9.0], Budget("latency", 4.2), 4.2)
    assert absolute["verdict"] == "within noise" and absolute["budget_ms"] == 4.2
    assert verdict([3.0], [9.0], None, None)["verdict"] == "meets"
    assert verdict([float("nan")], [9.0], half, 4.5) is None


def test_the_best_finalist_over_budget_is_passed_over_for_the_next_and_the_result_says_so(tmp_path):
    """Run 1 finds the best finalist; run 2 measures exactly that model 3x slower in the finalists' runs (the last
    three: the front's runs before them confirmed it): it is over its budget beyond the noise band, and the next
    finalist that meets it is returned, with a note. The front holds two models, trial 0 and trial 4 — uniform keep
    0.5, the uniform finalist's model, recovered once as that (since session 17; before, trial 4 was a searched
    finalist too and was returned as the next searched one): so the next finalist is the uniform one, and the notes
    say the only searched finalist was over and that trial 4, within budget, builds the uniform policy."""
    net, data = trained_net(), digits()
    space = small_space(net)
    calls = []

    def timer(pairs, slow=None, after=0):
        calls.append(len(pairs))
        wobble = (1.0, 1.04, 0.98)[len(calls) % 3]  # a run's drift: the dense model and the finalists alike
        late = len(calls) > after
        return [t * wobble * (3.0 if late and slow and _signature(m) == slow else 1.0)
                for t, (m, _) in zip(params_ms(pairs), pairs, strict=True)]  # fmt: skip

    def run(out, slow=None, after=0):
        table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys],
                             model_timer=lambda p: timer(p, slow, after))  # fmt: skip
        return search(net, data, space, ("accuracy", "latency"), "latency=0.6x", trials=8, strategy="grid",
                      out_dir=out, latency_table=table, node_table=fake_nodes(table), check_every=0,
                      **{**FAST, "top_k": 2})  # fmt: skip

    first = run(tmp_path / "a")
    assert first.best is not None and first.best.remeasured["verdict"] == "meets" and not first.notes
    assert len(first.latency_table["dense_remeasured_ms"]) == 3  # three interleaved runs
    doc = first.best.remeasured
    assert doc["budget_ms"] == pytest.approx(0.6 * doc["dense_measured_ms"]) and len(doc["repeats_ms"]) == 3
    assert doc["band_ms"] == [min(doc["repeats_ms"]), max(doc["repeats_ms"])] and doc["band_ms"][0] < doc["band_ms"][1]
    assert first.best.latency_ms == doc["measured_ms"] == first.best.measurement.measured_latency_ms
    searched = [c for c in first.finalists if c.trial is not None]
    assert first.uniform is not None and first.uniform.remeasured is not None
    twin = next(c.trial for c in first.pareto if c.policy == first.uniform.policy)  # the front's other model
    assert [c.trial for c in searched] == [c.trial for c in first.pareto if c.trial != twin] == [first.best.trial]
    slow = _signature(Evaluator(net, data, space, fake_table()).model_and_keys(first.best.policy, "none")[0])
    n = len(calls)  # run 2 replays run 1's calls: its last three are the finalists' runs
    second = run(tmp_path / "b", slow, after=2 * n - 3)
    passed = next(c for c in second.finalists if c.policy == first.best.policy and c.trial is not None)
    assert passed.remeasured["verdict"] == "over" and not passed.feasible
    assert all(c.remeasured is not None for c in first.pareto + second.pareto)  # the front re-measured alike
    on_front = next(c for c in second.pareto if c.policy == first.best.policy)
    assert on_front.remeasured["verdict"] == "meets" and on_front.feasible  # the front's runs, before the slowdown
    assert second.best is not None and second.best.policy != first.best.policy
    assert second.best.remeasured["verdict"] != "over" and second.best.policy == first.uniform.policy
    assert any(f"trial {passed.trial} (ranked 1 after recovery) is over budget when re-measured" in n
               and "beyond the noise band" in n for n in second.notes)  # fmt: skip
    assert f"the best searched policy within budget is the uniform policy (the search's trial {twin} builds it " \
           "too): it is best" in second.notes
    saved = json.loads(json.dumps(second.to_dict()))
    assert saved["notes"] == list(second.notes) and saved["best"]["remeasured"]["verdict"] in ("meets", "within noise")


def _signature(model):
    return tuple((type(m).__name__, tuple(m.weight.shape)) for m in model.modules()
                 if hasattr(m, "weight") and m.weight is not None)  # fmt: skip


def test_no_finalist_within_budget_returns_none_and_says_why():
    from deepslim.analysis.measurement import Measurement
    from deepslim.search.evaluate import Candidate
    from deepslim.search.space import Policy

    def cand(trial, acc):
        m = Measurement(params=1, nonzero_params=1, macs=1, weight_bytes=1, accuracy=acc)
        return Candidate(Policy({}, {}), m, 2.0, feasible=False, trial=trial,
                         remeasured={"verdict": "over", "measured_ms": 2.0, "band_ms": [2.0, 2.1], "budget_ms": 1.0})

    best, notes = choose([cand(3, 0.9), cand(5, 0.8)], ("accuracy", "latency"), "searched")
    assert best is None and len(notes) == 3
    assert notes[0].startswith("searched finalist trial 3 (ranked 1 after recovery) is over budget when re-measured: "
                               "2 ms (noise band 2-2.1 ms) against 1 ms, beyond the noise band")
    assert notes[-1] == "no searched finalist met the budget when re-measured: none is returned"


def test_the_uniform_baseline_is_recovered_and_remeasured_with_the_finalists_and_returned_when_it_ranks_better(
        tmp_path):  # fmt: skip
    net, data = trained_net(), digits()
    space = small_space(net)
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    # the trial budget lets the searched policies in; uniform keep 0.5 ranks first only by latency
    result = search(net, data, space, ("latency", "accuracy"), "latency=0.6x", trials=8, strategy="grid",
                    out_dir=tmp_path, latency_table=table, node_table=fake_nodes(table), check_every=0,
                    **{**FAST, "top_k": 1})  # fmt: skip
    uniform = result.uniform
    assert uniform is not None and uniform.recovery == "finetune" and uniform.remeasured is not None
    searched = next(c for c in result.finalists if c.trial is not None)
    assert searched.recovery == "finetune"
    assert uniform.remeasured["dense_measured_ms"] == searched.remeasured["dense_measured_ms"]  # the same runs
    assert searched.policy != uniform.policy  # a trial of the uniform policy is the uniform finalist, not searched
    ranked = sorted([searched, uniform], key=lambda c: (c.latency_ms, -c.accuracy))
    assert result.best.policy == ranked[0].policy
    if ranked[0] is uniform:
        assert any("the uniform policy ranks above every searched finalist" in n for n in result.notes)


# -- workers and the table check --------------------------------------------------------------------------------------


def test_the_latency_model_travels_to_workers_and_node_entries_with_the_layer_entries(tmp_path):
    net = trained_net()
    ev = node_evaluator(net)
    settings = wk.evaluator_settings(ev)
    assert settings["latency_model"] == "nodes" and "nodes" not in settings and "_node_raw" not in settings
    json.dumps(settings)
    study = optuna.create_study(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal"))), study_name="s")  # fmt: skip
    parent = fake_table()
    parent.entries[PREFIX + "Conv:abc"] = 0.25
    wk.publish_entries(study, parent, set())
    job = {"timer": f"{__name__}:layer_timer", "model_timer": None, "runtime": "onnxruntime", "threads": 1,
           "dense_predicted_ms": 1.0, "evaluator": settings,
           "table": {"machine": "custom", "scale": 1.0, "offset_ms": 0.0, "conversion_weight": 1.0,
                     "node_scale": 1.5, "node_offset_ms": 0.125}}  # fmt: skip
    table = wk._worker_table(job, study, f"{__name__}:layer_timer", None)
    assert table.entries[PREFIX + "Conv:abc"] == 0.25  # a node timing measured once, shared with the workers
    worker = wk.worker_evaluator(net, digits(), ev.space, table, job)
    assert worker.latency_model == "nodes" and isinstance(worker.nodes, NodeTable) and worker.nodes.table is table
    assert (worker.nodes.scale, worker.nodes.offset) == (1.5, 0.125)


def layer_timer(keys):
    return [fake_ms(k) for k in keys]


def test_a_node_table_of_fakes_cannot_reach_worker_processes(tmp_path):
    import deepslim as ds
    from tests.search import _tiny

    net = ds.load_model(f"{_tiny.__file__}:tiny_net")
    table = LatencyTable(timer=layer_timer)
    with pytest.raises(ConfigError, match=r"a node table with a custom splitter or timer cannot reach worker"):
        search(net, "digits", ("prune",), trials=2, workers=2, out_dir=tmp_path, latency_table=table,
               node_table=fake_nodes(table))  # fmt: skip


def test_the_table_check_reports_the_node_table_it_judged_with_and_the_layer_table_beside_it(tmp_path):
    net, data = trained_net(), digits()
    table = LatencyTable(timer=layer_timer, model_timer=params_ms)
    result = search(net, data, small_space(net), ("accuracy", "latency"), "latency=0.8x", trials=4,
                    strategy="random", out_dir=tmp_path, latency_table=table, node_table=fake_nodes(table),
                    check_every=2, **FAST)  # fmt: skip
    lt = result.latency_table
    assert lt["latency_model"] == "nodes" and lt["points"] >= 4
    rows = lt["rows"]
    assert all(r["predicted_ms"] == r["node_predicted_ms"] for r in rows)
    assert all("layer_predicted_ms" in r for r in rows)
    assert lt["node_table"]["error_p90"] == lt["error_p90"] and lt["kendall_tau"] == lt["node_table"]["kendall_tau"]
    assert lt["layer_table"]["error_p90"] != lt["error_p90"]  # the other table, measured against the same runs
    assert lt["mac_proxy_kendall_tau"] is not None and lt["dense_measured_ms"] == pytest.approx(params_ms(
        [(net, None)])[0])  # fmt: skip


def test_the_real_timer_exports_the_finalists_once_and_times_them_in_each_run(tmp_path, monkeypatch):
    import deepslim.export

    exported = []
    real = deepslim.export.export_onnx

    def counting(model, path, **kwargs):
        exported.append(path)
        return real(model, path, **kwargs)

    monkeypatch.setattr(deepslim.export, "export_onnx", counting)
    net = trained_net()
    runs = LatencyTable(cache_dir=tmp_path, model_window_s=0.0).measure_runs([(net, digits().example_input)] * 2, 3)
    assert len(exported) == 2 and len(runs) == 3 and all(len(r) == 2 and min(r) > 0 for r in runs)
    fake = LatencyTable(timer=layer_timer, model_timer=params_ms)
    assert fake.measure_runs([(net, None)], 2) == [params_ms([(net, None)])] * 2
    assert LatencyTable(timer=layer_timer).measure_runs([(net, None)], 2) is None


def refuse_int8(model, path, example_input):
    """An exporter that refuses every quantized model (as a runtime without an integer kernel would)."""
    from deepslim.errors import ExportError
    from tests.search._tiny import fake_export

    if any(type(m).__name__.startswith("Q") for m in model.modules()):
        raise ExportError("no integer kernel for this layer")
    fake_export(model, path, example_input)


def test_policies_whose_export_is_refused_are_left_out_and_the_search_goes_on(tmp_path):
    from deepslim.errors import ExportError
    from tests.search._tiny import fake_node_timer, fake_split_layers

    net, data = trained_net(), digits()
    table = fake_table()
    nodes = NodeTable(table, splitter=fake_split_layers, timer=fake_node_timer, exporter=refuse_int8)
    space = small_space(net)
    judging = Evaluator(net, data, space, table, latency_model="nodes", nodes=nodes)
    with pytest.raises(ExportError, match="no integer kernel"):  # in the node frame an int8 trial cannot be judged
        judging.evaluate(space.smallest(True))
    beside = Evaluator(net, data, space, table, latency_model="layers", nodes=nodes)
    cand, _ = beside.judge(space.smallest(True), both=True)  # only the check's other column is lost
    assert "node_predicted_ms" not in cand.measurement.extra and cand.latency_ms > 0
    result = search(net, data, space, ("accuracy", "latency"), "latency=0.8x", trials=8, strategy="grid",
                    out_dir=tmp_path, latency_table=table, node_table=nodes, **FAST)  # fmt: skip
    assert [c.policy.int8 for c in result.uniform_family] == [{"3": False}] * 2  # the int8 members left out
    assert len(result.trials) == 4 and not any(c.policy.int8["3"] for c in result.trials)  # int8 trials refused
    assert result.best is not None and not result.best.policy.int8["3"]
