"""Measured moves steered by a per-group profile (deepslim.search.speed_moves with ``profile``), scripted timers and
profilers: several groups down at once where each alone gains too little, the MAC limit, bad input."""

from __future__ import annotations

import random

import pytest

from deepslim.errors import ConfigError
from deepslim.search.space import GroupChoice, Policy, SearchSpace
from deepslim.search.speed_moves import SpeedMovesConfig, speed_moves
from tests.search._speed_configs import legacy

NARROW, WIDE = (16, 32, 48, 64), tuple(range(16, 257, 16))
SPACE = SearchSpace(groups=(*(GroupChoice(g, 64, NARROW) for g in "abc"), GroupChoice("d", 256, WIDE)),
                    int8_layers=("x",))  # fmt: skip
START = Policy(keep={"a": 32, "b": 32, "c": 32, "d": 64}, int8={"x": True})
MACS_PER_CHANNEL = 100
# a, b and c cost 1.3 ms per channel, d 1.0: one step of a (16 channels) refilled on d saves 4.8 of 1188.8 ms (0.4 %),
# all three at once 14.4 ms (1.2 %)
MS_PER_CHANNEL = {"a": 1.3, "b": 1.3, "c": 1.3, "d": 1.0}


def macs(p: Policy) -> int:
    return sum(MACS_PER_CHANNEL * k for k in p.keep.values())


def timer(batches: list[list[Policy]]):
    def time(policies):
        batches.append(list(policies))
        return [1000.0 + sum(MS_PER_CHANNEL[g] * k for g, k in p.keep.items()) for p in policies]

    return time


def profiler(calls: list[Policy]):
    def profile(p: Policy) -> dict[str, float]:
        calls.append(p)
        return {g: ms / MACS_PER_CHANNEL for g, ms in MS_PER_CHANNEL.items()}

    return profile


def test_three_groups_move_down_together_where_each_alone_gains_less_than_min_gain():
    batches: list[list[Policy]] = []
    calls: list[Policy] = []
    config = legacy(shares=(0.05, 0.3), multi=3, precision=False)
    result = speed_moves(SPACE, START, macs=macs, time=timer(batches), profile=profiler(calls), config=config)
    assert result.policy.keep == {"a": 16, "b": 16, "c": 16, "d": 112}
    assert result.macs == result.limit == macs(START)
    assert result.log[1]["move"] == {"a": [32, 16], "b": [32, 16], "c": [32, 16], "d": [64, 112]}
    assert result.log[1]["ratio"] == pytest.approx(1174.4 / 1188.8, abs=1e-4)
    assert result.log[1]["tried"][0]["predicted"] == pytest.approx(-14.4)  # the profile's prediction, in ms
    assert result.log[2]["move"] is None  # a, b, c at their floor; d down would refill where a MAC costs more
    assert calls == [START, result.policy] and result.profiled == 2
    # round 1: the start and 5 candidates (each of a, b, c alone, a and b, all three), then the best confirmed
    assert [len(b) for b in batches] == [6, 2]


def test_with_one_group_at_a_time_the_same_profile_finds_no_move_that_passes():
    result = speed_moves(SPACE, START, macs=macs, time=timer([]), profile=profiler([]),
                         config=legacy(shares=(0.05, 0.3), multi=1, precision=False))  # fmt: skip
    assert result.policy == START
    assert result.log[1]["tried"][0]["measured"] == pytest.approx(1184.0 / 1188.8, abs=1e-4)  # 0.4 %: too little


def test_the_refill_goes_no_further_than_reach_grid_steps_above_the_current_policy():
    config = legacy(shares=(0.3,), multi=3, reach=2, rounds=1, precision=False)
    narrow = speed_moves(SPACE, START, macs=macs, time=timer([]), profile=profiler([]), config=config)
    assert narrow.policy == START  # 4,800 MACs freed, 3,200 refilled on d: outside the 1 % band
    config = legacy(shares=(0.3,), multi=3, reach=2, rounds=1, precision=False, band=0.15)
    wide = speed_moves(SPACE, START, macs=macs, time=timer([]), profile=profiler([]), config=config)
    assert wide.policy.keep == {"a": 16, "b": 16, "c": 16, "d": 96}  # d two steps up, no further
    assert wide.macs == 14_400


@pytest.mark.parametrize("seed", range(12))
def test_profiled_moves_never_exceed_the_limit_nor_fall_below_the_band(seed):
    rng = random.Random(seed)
    costs = {g: rng.uniform(0.2, 3.0) for g in "abcd"}
    start = Policy(keep={"a": rng.choice(NARROW[1:3]), "b": 32, "c": 48, "d": rng.choice(WIDE[2:10])}, int8={})

    def time(policies):
        return [500.0 + sum(costs[g] * k for g, k in p.keep.items()) for p in policies]

    result = speed_moves(SPACE, start, macs=macs, time=time, profile=lambda p: {g: c / 100 for g, c in costs.items()},
                         config=legacy(band=0.05, multi=rng.randint(1, 4), precision=False))  # fmt: skip
    assert 0.95 * result.limit <= result.macs <= result.limit == macs(start) or result.policy == start
    assert time([result.policy])[0] <= time([start])[0]
    for entry in result.log[1:]:
        if entry.get("ratio") is not None:
            assert entry["ratio"] <= 0.99


def test_a_profile_that_misses_a_group_or_gives_a_negative_time_is_refused():
    with pytest.raises(ConfigError, match="time per MAC >= 0 for every group.*'d'"):
        speed_moves(SPACE, START, macs=macs, time=timer([]), profile=lambda p: {"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ConfigError, match="-1.0 for 'b'"):
        speed_moves(SPACE, START, macs=macs, time=timer([]), profile=lambda p: {"a": 1.0, "b": -1.0, "c": 1, "d": 1})


BAD = [("shares", ()), ("shares", (0.0,)), ("shares", (1.0,)), ("shares", ("0.1",)), ("shares", (True,)),
       ("shares", 0.1), ("multi", 0), ("multi", 1.5), ("reach", 0), ("reach", True), ("patience", -1),
       ("patience", 1.5)]  # fmt: skip


@pytest.mark.parametrize("field, bad", BAD)
def test_bad_profile_settings_are_refused_by_name(field, bad):
    with pytest.raises(ConfigError, match=field):
        legacy(**{field: bad})


def test_the_profile_settings_round_trip_through_json_and_shares_given_as_a_list_become_a_tuple():
    config = SpeedMovesConfig.from_dict({"shares": [0.1, 0.25], "multi": 6, "reach": 8, "patience": 2})
    assert config.shares == (0.1, 0.25)
    assert SpeedMovesConfig.from_dict(config.to_dict()) == config


def test_with_patience_a_round_whose_best_candidate_fails_is_followed_by_one_timing_the_next_best():
    profile = {"a": 2.0 / 100, "b": 1.5 / 100, "c": 1.3 / 100, "d": 1.0 / 100}  # a's cost overstated: really 1.0
    real = {"a": 1.0, "b": 1.5, "c": 1.3, "d": 1.0}
    batches: list[list[Policy]] = []

    def time(policies):
        batches.append(list(policies))
        return [1000.0 + sum(real[g] * k for g, k in p.keep.items()) for p in policies]

    def run(patience: int):
        config = legacy(shares=(0.05,), multi=2, candidates=1, min_gain=0.005, rounds=2, patience=patience,
                                  precision=False)  # fmt: skip
        return speed_moves(SPACE, START, macs=macs, time=time, profile=lambda p: profile, config=config)

    assert run(0).policy == START  # a down, refilled on d, predicted best: measured no faster; the moves stop
    assert len(batches) == 1
    batches.clear()
    patient = run(1)
    assert patient.policy.keep == {"a": 32, "b": 16, "c": 32, "d": 80}  # the next-best: b down, 8 ms faster
    assert [e.get("move") for e in patient.log] == ["start", None, {"b": [32, 16], "d": [64, 80]}]
    assert [b[1].keep["a"] for b in batches[:2]] == [16, 32]  # round 2 did not time a's move again


def test_after_a_failed_round_the_groups_every_failed_candidate_moved_down_leave_the_costliest():
    profile = {"a": 2.0 / 100, "b": 1.5 / 100, "c": 1.3 / 100, "d": 1.0 / 100}  # a ranked costliest: really 1.0
    real = {"a": 1.0, "b": 1.5, "c": 1.3, "d": 1.0}

    def time(policies):
        return [1000.0 + sum(real[g] * k for g, k in p.keep.items()) for p in policies]

    config = legacy(shares=(0.05, 0.1), multi=1, candidates=2, min_gain=0.005, rounds=2, patience=1,
                              precision=False)  # fmt: skip
    result = speed_moves(SPACE, START, macs=macs, time=time, profile=lambda p: profile, config=config)
    assert [t["down"] for t in result.log[1]["tried"]] == ["a"]  # only a's move: the costliest alone (multi 1)
    assert [t["down"] for t in result.log[2]["tried"]] == ["b"]  # a left out after it failed: b, the next costliest
    assert result.policy.keep == {"a": 32, "b": 16, "c": 32, "d": 80}
