"""Measured moves at equal MACs (deepslim.search.speed_moves) with scripted timers: exact moves, the MAC limit, bad
input."""

from __future__ import annotations

import random

import pytest

from deepslim.errors import ConfigError
from deepslim.search.space import GroupChoice, Policy, SearchSpace
from deepslim.search.speed_moves import SpeedMovesConfig, speed_moves
from tests.search._speed_configs import legacy

GRID = (16, 32, 48, 64)
SPACE = SearchSpace(groups=tuple(GroupChoice(g, 64, GRID) for g in "abc"), int8_layers=("x", "y"))
START = Policy(keep={"a": 32, "b": 32, "c": 32}, int8={"x": True, "y": True})
MACS_PER_CHANNEL = {"a": 100, "b": 100, "c": 50}


def macs(p: Policy) -> int:
    return sum(MACS_PER_CHANNEL[g] * k for g, k in p.keep.items())


def scripted(ms_per_channel: dict[str, float], float_ms: dict[str, float] | None = None):
    """A deterministic timer: 1000 ms plus a cost per channel of each group, plus each float layer's change; it
    records every batch it was asked to time."""
    batches: list[list[Policy]] = []

    def timer(policies):
        batches.append(list(policies))
        return [1000.0 + sum(ms_per_channel[g] * k for g, k in p.keep.items())
                + sum((float_ms or {}).get(n, 0.0) for n, q in p.int8.items() if not q) for p in policies]

    timer.batches = batches  # type: ignore[attr-defined]
    return timer


def test_channels_move_from_the_group_where_a_mac_costs_most_to_where_it_costs_least_at_the_same_macs():
    # per 100 MACs: a costs 3 ms, b 1 ms, c 2 ms; exchanging a's step for b's saves 32 ms at 8,000 MACs
    timer = scripted({"a": 3.0, "b": 1.0, "c": 1.0}, {"x": 5.0, "y": -20.0})
    result = speed_moves(SPACE, START, macs=macs, time=timer,
                         config=legacy(probe_share=0.0, min_gain=0.01))  # fmt: skip
    assert result.policy.keep == {"a": 16, "b": 48, "c": 32}
    assert result.policy.int8 == {"x": True, "y": False}  # y measured faster in float, x slower
    assert result.macs == result.limit == 8000
    moves = [e.get("move") for e in result.log]
    assert moves == ["start", {"a": [32, 16], "b": [32, 48]}, None, "y float", None]
    assert result.log[1]["ratio"] == pytest.approx(1128 / 1160, abs=1e-4)
    # round 1: the policy and 6 probes, then it and 1 candidate, then the two again (confirmed); round 2: 5 probes
    # (a is at its floor); precision: both layers, y confirmed, then x alone
    assert [len(b) for b in timer.batches] == [7, 2, 2, 6, 3, 2, 2]
    assert result.timed == 24


def test_a_probe_takes_several_grid_steps_where_one_step_moves_too_few_macs():
    timer = scripted({"a": 3.0, "b": 1.0, "c": 1.0})
    speed_moves(SPACE, START, macs=macs, time=timer,
                config=legacy(probe_share=0.15, rounds=1, precision=False))  # fmt: skip
    probes = timer.batches[0][1:]
    # 15 % of 8,000 MACs = 1,200: one step of a or b (1,600) is enough, c needs two (800 each) and has one up
    assert [p.keep for p in probes] == [
        {"a": 16, "b": 32, "c": 32}, {"a": 48, "b": 32, "c": 32}, {"a": 32, "b": 16, "c": 32},
        {"a": 32, "b": 48, "c": 32}, {"a": 32, "b": 32, "c": 16}, {"a": 32, "b": 32, "c": 64}]


@pytest.mark.parametrize("seed", range(12))
def test_the_moved_policy_never_has_more_macs_than_the_start_nor_fewer_than_the_band_allows(seed):
    rng = random.Random(seed)
    timer = scripted({g: rng.uniform(0.1, 5.0) for g in "abc"})
    start = Policy(keep={g: rng.choice(GRID[1:3]) for g in "abc"}, int8={"x": True, "y": True})
    result = speed_moves(SPACE, start, macs=macs, time=timer, config=legacy(probe_share=0.0, band=0.2))
    assert result.macs <= result.limit == macs(start)
    assert result.macs >= 0.8 * result.limit
    assert timer.batches[-1][0] == result.policy  # the result is the policy last timed as the reference
    for entry in result.log[1:]:
        if entry.get("ratio") is not None:
            assert entry["ratio"] <= 0.99  # every move taken measured at least min_gain faster


def test_a_limit_above_the_start_lets_the_moves_spend_the_macs_the_start_left():
    timer = scripted({"a": 3.0, "b": 1.0, "c": 1.0})
    start = Policy(keep={"a": 32, "b": 32, "c": 16}, int8={})  # 7,200 MACs
    result = speed_moves(SPACE, start, macs=macs, time=timer, limit=8000,
                         config=legacy(probe_share=0.0, precision=False))  # fmt: skip
    # a's step down (-1,600 MACs) refilled on b and c up to their probes (+1,600 and +800): 1144 -> 1128 ms
    assert result.policy.keep == {"a": 16, "b": 48, "c": 32}
    assert result.limit == result.macs == 8000
    with pytest.raises(ConfigError, match="more than the limit of 6,000"):
        speed_moves(SPACE, start, macs=macs, time=timer, limit=6000)


def test_a_timer_that_sees_no_difference_leaves_the_start_policy():
    result = speed_moves(SPACE, START, macs=macs, time=lambda ps: [5.0] * len(ps))
    assert result.policy == START
    assert [e.get("move") for e in result.log] == ["start", None, None]


def test_bad_start_policies_timers_and_configs_are_refused_with_the_reason():
    timer = scripted({"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ConfigError, match="does not choose group 'c'"):
        speed_moves(SPACE, Policy(keep={"a": 32, "b": 32}), macs=macs, time=timer)
    with pytest.raises(ConfigError, match="off the grid of group 'b'"):
        speed_moves(SPACE, Policy(keep={"a": 32, "b": 40, "c": 32}), macs=macs, time=timer)
    with pytest.raises(ConfigError, match="one positive time per policy"):
        speed_moves(SPACE, START, macs=macs, time=lambda ps: [1.0])
    with pytest.raises(ConfigError, match="band is a share"):
        legacy(band=1.5)
    for field, bad in (("candidates", 0), ("rounds", "6"), ("rounds", 2.5), ("rounds", True), ("candidates", None),
                       ("band", "0.01"), ("min_gain", None), ("precision", 1), ("confirm", "no")):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            legacy(**{field: bad})


def test_a_move_that_passes_once_but_not_when_timed_again_is_not_taken():
    calls = []
    probes = scripted({"a": 3.0, "b": 1.0, "c": 1.0})

    def lucky_once(policies):  # the probes as scripted; the candidate 10 % faster in its first run only
        calls.append(len(policies))
        if len(calls) == 1:
            return probes(policies)
        return [100.0] + [90.0 if len(calls) == 2 else 100.0 for _ in policies[1:]]

    result = speed_moves(SPACE, START, macs=macs, time=lucky_once,
                         config=legacy(probe_share=0.0, precision=False))  # fmt: skip
    assert result.policy == START
    assert result.log[1]["confirmed"] == 1.0 and calls[2] == 2
    unconfirmed = speed_moves(SPACE, START, macs=macs, time=scripted({"a": 3.0, "b": 1.0, "c": 1.0}),
                              config=legacy(probe_share=0.0, precision=False, confirm=False))  # fmt: skip
    assert unconfirmed.timed == 7 + 2 + 6


def test_the_config_round_trips_through_json():
    config = legacy(rounds=2, band=0.02, probe_share=0.05, candidates=3, min_gain=0.02, precision=False,
                              confirm=False)
    assert SpeedMovesConfig.from_dict(config.to_dict()) == config
