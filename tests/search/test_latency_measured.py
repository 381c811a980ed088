"""The ``measured`` latency model: each policy timed end to end, interleaved with the dense model and put in the
frame of the dense model's first measurement, so load that changes between trials cancels."""

import pytest

from deepslim.errors import ConfigError
from deepslim.search.evaluate import Evaluator
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, fake_table, params_ms, small_space, trained_net


class LoadedTimer:
    """1 µs per parameter, times a load factor that doubles at every call (a machine getting busier)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, pairs):
        self.calls += 1
        return [ms * 2.0**self.calls for ms in params_ms(pairs)]


def measured_evaluator(timer):
    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=timer)
    return net, Evaluator(net, digits(), small_space(net), table, latency_model="measured")


def test_a_measured_policy_is_its_ratio_to_the_dense_model_in_the_same_run_times_the_dense_frame():
    timer = LoadedTimer()
    net, ev = measured_evaluator(timer)
    x = digits().example_input
    policy = ev.space.policy({"keep:0": 4, "keep:3": 4, "int8:3": False})
    model, _ = ev.model_and_keys(policy, "none")
    dense_first = params_ms([(net, x)])[0] * 2.0  # the first call: load factor 2
    ms = ev.measured_ms(policy, model)
    assert timer.calls == 2  # the dense frame, then the policy interleaved with the dense model
    assert ms == pytest.approx(dense_first * params_ms([(model, x)])[0] / params_ms([(net, x)])[0])
    assert ev.measured_ms(policy, model) == ms and timer.calls == 2  # once per policy shape
    cand = ev.evaluate(policy, recovery="none")
    assert cand.latency_ms == pytest.approx(ms) and cand.measurement.extra["measured_predicted_ms"] == cand.latency_ms
    assert ev.measured_ms(ev.space.dense(), net) == pytest.approx(dense_first)


def test_the_measured_model_needs_an_end_to_end_timer():
    net = trained_net()
    with pytest.raises(ConfigError, match=r"the measured latency model times whole models: .* no end-to-end timer"):
        Evaluator(net, digits(), small_space(net), fake_table(), latency_model="measured")


def test_a_search_on_measured_latency_refuses_a_budget_below_the_smallest_measured_policy(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    from deepslim.search.space import prune_policy, quantize_policy

    space, x, data = small_space(net), digits().example_input, digits()
    least = []
    for int8 in (False, True):  # the fewest channels, float or int8: the least of them is the smallest policy
        p = space.smallest(int8)
        model = quantize_policy(prune_policy(net, space, p, example_input=x), space, p, calib_data=data.calib)
        least.append(params_ms([(model, x)])[0] / params_ms([(net, x)])[0])
    ratio = min(least)
    refusal = rf"measured end to end: 8 of 16 channels kept.*loosen it to at least {ratio:.2f}x"
    with pytest.raises(ConfigError, match=refusal):
        search(net, digits(), small_space(net), ("accuracy", "latency"), "latency=0.01x", trials=1, out_dir=tmp_path,
               latency_table=table, latency_model="measured", finetune_epochs=0, top_k=1)  # fmt: skip


def test_the_measured_model_refuses_worker_processes_before_any_work(tmp_path):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    net = trained_net()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    with pytest.raises(ConfigError, match=r"latency_model='measured' runs in one process .* use workers=1"):
        search(net, digits(), small_space(net), ("accuracy", "latency"), "latency=0.5x", trials=1, out_dir=tmp_path,
               latency_table=table, latency_model="measured", workers=2)  # fmt: skip
    assert not any(tmp_path.iterdir())  # refused before the study or any file
