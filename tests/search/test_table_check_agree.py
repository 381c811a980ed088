"""The table check's truth from two timings of each chunk (table_check.agreed_ratios, check_table(passes=2)): one
policy alone reading slow in one timing, its chunk's reference steady, no longer sets that policy's measurement
(sessions 17–18: 7 of 11 misses of two runs were such single readings, 16–34 % slow). The end-to-end timer is a
fake deterministic one with one chosen call reading one policy slow."""

from __future__ import annotations

import pytest

from deepslim.errors import ConfigError
from deepslim.search import SearchSpace, check_table
from deepslim.search.latency import LatencyTable
from deepslim.search.table_check import agreed_ratios, chunk_ratios, reading_spread
from tests.search._tiny import digits, fake_ms, params_ms, tiny_net


def test_two_agreeing_readings_give_each_policy_the_lower_ratio_and_time_nothing_again():
    readings = [[[1.0, 2.0, 3.0], [1.1, 2.1, 3.4]]]  # ratios 2.0 / 1.91 and 3.0 / 3.09: within 6 %
    ratios = agreed_ratios(readings, lambda i: pytest.fail("timed again"))
    assert ratios == [[pytest.approx(2.1 / 1.1), pytest.approx(3.0)]]
    assert len(readings[0]) == 2


def test_a_policy_whose_two_readings_disagree_has_its_chunk_timed_again_and_takes_the_median_of_three():
    readings = [[[1.0, 2.0, 3.0], [1.0, 2.0, 3.9]], [[1.0, 5.0], [1.0, 5.0]]]  # chunk 0's second policy +30 %
    retimed: list[int] = []

    def retime(i):
        retimed.append(i)
        return [1.0, 2.0, 3.1]

    ratios = agreed_ratios(readings, retime)
    assert retimed == [0] and len(readings[0]) == 3 and len(readings[1]) == 2
    assert ratios == [[2.0, 3.1], [5.0]]  # the second policy: the median of 3.0, 3.9 and 3.1


def test_a_slow_first_reading_does_not_set_the_policy_s_truth():
    """The reading that the old single-timing check kept is the slow one; the second timing agrees with neither,
    the third with the second: the truth is theirs."""
    readings = [[[1.0, 4.0], [1.0, 3.0]]]
    ratios = agreed_ratios(readings, lambda i: [1.0, 3.05])
    assert ratios == [[3.05]] and chunk_ratios(readings[0][0]) == [4.0]


def test_without_extra_timings_the_lower_of_two_readings_is_kept():
    readings = [[[2.0, 3.0], [2.0, 2.0]]]
    assert agreed_ratios(readings, lambda i: pytest.fail("timed again"), extra=0) == [[1.0]]
    assert reading_spread([1.0, 1.5]) == pytest.approx(0.5)


def _setup():
    net, data = tiny_net(), digits()
    space = SearchSpace.from_model(net, data.example_input, keep_ratios=(0.25, 0.5, 0.75, 1.0), round_to=1)
    return net, data, space


def test_the_table_check_with_two_passes_ignores_one_policy_reading_slow_beside_a_steady_reference():
    """Six policies in chunks of two; the second chunk's first timing reads its second policy 1.3x slow, its
    reference steady, so steady_chunks keeps it. Timed once, that policy's measurement is 1.3x; with two passes
    (reverse order) it is the fake timer's own, and the chunk was timed a third time; each row keeps its first
    pass's reading beside it (measured_first_pass_ms)."""
    net, data, space = _setup()
    calls: list[int] = []

    def model_timer(pairs):
        calls.append(len(pairs))
        times = params_ms(pairs)
        return times[:2] + [times[2] * 1.3] if len(calls) == 2 else times

    truth = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    plain = check_table(net, space, truth, example_input=data.example_input, calib_data=data.calib, policies=6,
                        chunk=2, seed=3, passes=2)  # fmt: skip
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=model_timer)
    once = check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=6,
                       chunk=2, seed=3)  # fmt: skip
    off = [r["measured_ms"] / p["measured_ms"] for r, p in zip(once.rows, plain.rows, strict=True)]
    assert off == pytest.approx([1, 1, 1, 1.3, 1, 1])  # what the second pass avoids
    calls.clear()
    twice = check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=6,
                        chunk=2, seed=3, passes=2)  # fmt: skip
    assert [r["measured_ms"] for r in twice.rows] == pytest.approx([r["measured_ms"] for r in plain.rows])
    assert len(calls) == 3 + 3 + 1  # three chunks, again in reverse order, the disagreeing chunk once more
    assert [r["chunk_timings"] for r in twice.rows] == [2, 2, 3, 3, 2, 2]
    slow = twice.rows[3]["ratio_readings"]
    assert len(slow) == 3 and slow[0] == pytest.approx(1.3 * slow[1]) and slow[2] == pytest.approx(slow[1])
    # review R20 L2: the first pass's reading kept beside the agreed truth, what passes=1 reports
    first = [r["measured_first_pass_ms"] for r in twice.rows]
    assert first == pytest.approx([r["measured_ms"] for r in once.rows])  # the slow 1.3x reading among them
    assert "measured_first_pass_ms" not in once.rows[0]


def test_the_second_pass_times_the_policies_of_a_chunk_in_reverse_order():
    net, data, space = _setup()
    seen: list[list[float]] = []

    def model_timer(pairs):
        seen.append(params_ms(pairs))
        return seen[-1]

    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=model_timer)
    check = check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=4,
                        chunk=2, seed=3, passes=2)  # fmt: skip
    assert seen[2] == [seen[1][0], seen[1][2], seen[1][1]] and seen[3] == [seen[0][0], seen[0][2], seen[0][1]]
    assert [r["ratio_readings"][0] for r in check.rows] == pytest.approx([r["ratio_readings"][1] for r in check.rows])


def test_the_table_check_refuses_a_pass_count_other_than_one_or_two():
    net, data, space = _setup()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    with pytest.raises(ConfigError, match="passes=3"):
        check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=2,
                    passes=3)  # fmt: skip


def test_a_second_pass_run_wholly_in_a_slow_stretch_is_timed_again_against_both_passes_references():
    """Review R20 L2: the second pass's three timings all read 1.2x slow, reference and policies alike. Judged only
    against each other, its references agree and nothing is re-timed, and they pull the median reference (the
    frame) 10 % high; judged against both passes' (as the floor check's second_pass does), each second-pass chunk
    is timed again and the measurements are the steady ones."""
    net, data, space = _setup()
    calls: list[int] = []

    def model_timer(pairs):
        calls.append(len(pairs))
        times = params_ms(pairs)
        return [t * 1.2 for t in times] if 4 <= len(calls) <= 6 else times

    truth = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    plain = check_table(net, space, truth, example_input=data.example_input, calib_data=data.calib, policies=6,
                        chunk=2, seed=3, passes=2)  # fmt: skip
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=model_timer)
    twice = check_table(net, space, table, example_input=data.example_input, calib_data=data.calib, policies=6,
                        chunk=2, seed=3, passes=2)  # fmt: skip
    assert len(calls) == 3 + 3 + 3  # every second-pass chunk timed once more
    assert [r["chunk_timings"] for r in twice.rows] == [3] * 6
    assert [r["measured_ms"] for r in twice.rows] == pytest.approx([r["measured_ms"] for r in plain.rows])

