"""A resumed search judges in the frame its first run recorded (frame.table_state in the study): the floor check is
not measured again, so a noisy re-measurement just over the limit neither refuses a study that already ran trials
nor pins its table on another scale (review R12 H1). Scripted runtime as in test_node_floor."""

from deepslim.search import frame
from deepslim.search.engine import calibrate_table, search
from deepslim.search.latency import LatencyTable
from tests.search._tiny import FAST, digits, fake_ms, fake_nodes, small_space, trained_net
from tests.search.test_node_floor import evaluator, floor_of, runtime

POWER = 1.05


def _run(out, budget: float, slower: float, calls: list[int]):
    """The search at ``budget`` (x of dense); the runtime measures every model but the largest ``slower`` times
    slower, as a loaded machine would."""
    timer = runtime(POWER)

    def noisy(pairs):
        calls.append(len(pairs))
        ms = timer(pairs)
        return [m * (slower if m < max(ms) else 1.0) for m in ms]

    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=noisy)
    net = trained_net()
    return search(net, digits(), small_space(net), ("accuracy", "latency"), f"latency={budget:.6f}x", trials=4,
                  strategy="grid", out_dir=out, latency_table=table, node_table=fake_nodes(table), **FAST)


def test_a_resumed_search_reuses_the_recorded_floor_check_and_table_instead_of_measuring_again(tmp_path):
    ev = evaluator(POWER)
    _, true, _ = floor_of(ev, calibrate_table(ev))
    budget = true**POWER * 1.02  # the floor meets it by 2 %: less than a loaded machine's noise
    first_calls: list[int] = []
    first = _run(tmp_path, budget, 1.0, first_calls)
    check = first.latency_table["floor_check"]
    assert check is not None and check["pinned"] and check["measured_ms"] <= check["limit_ms"]
    resumed_calls: list[int] = []
    resumed = _run(tmp_path, budget, 1.05, resumed_calls)  # the old code measured the floor 5 % slower: refused
    assert resumed.latency_table["floor_check"] == check
    assert resumed.limits == first.limits  # the same table: dense predicted alike, the budget the same limit
    assert len(resumed.trials) == len(first.trials) == 4
    assert sum(resumed_calls) < sum(first_calls)  # no calibration set, no floor measured on resume


def test_the_recorded_state_rebuilds_the_same_table():
    ev = evaluator(1.3)
    calibrate_table(ev)
    state = frame.table_state(ev)
    other = evaluator(1.3)
    frame.restore_tables(other, state)
    assert (other.nodes.scale, other.nodes.offset, other.nodes.weight_coef) == (ev.nodes.scale, ev.nodes.offset,
                                                                               ev.nodes.weight_coef)  # fmt: skip
    assert (other.table.scale, other.table.offset, other.table.error_band) == (ev.table.scale, ev.table.offset,
                                                                               ev.table.error_band)  # fmt: skip
    assert other.nodes.points == ev.nodes.points
