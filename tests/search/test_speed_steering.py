"""Measured moves steered by a profile (deepslim.search.speed_moves), session 16: a stage's groups down together
though a costlier group ranks above them (``window``), a candidate confirmed by the median of several fresh timings
(``confirms``), moves undone when a fresh run of the whole path does not confirm them (``polish``). Deterministic
costs, with scripted lucky timings where a test needs noise."""

from __future__ import annotations

import pytest

from deepslim.errors import ConfigError
from deepslim.search.space import GroupChoice, Policy, SearchSpace
from deepslim.search.speed_moves import SpeedMovesConfig, speed_moves
from tests.search._speed_configs import legacy

GRID, STAGE = tuple(range(16, 257, 16)), (96, 112, 128)
# f: a group whose profile overstates it (a fixed cost: ranked costliest, really the cheapest); x1-x3: one stage, each
# costlier per MAC than m, where the MACs go back, and each able to free only two grid steps
NAMES = ("f", "x1", "x2", "x3", "m")
SPACE = SearchSpace(groups=tuple(GroupChoice(g, 256, STAGE if g.startswith("x") else GRID) for g in NAMES),
                    int8_layers=())  # fmt: skip
START = Policy(keep={"f": 64, "x1": 128, "x2": 128, "x3": 128, "m": 128}, int8={})
REAL = {"f": 0.8, "x1": 1.5, "x2": 1.5, "x3": 1.5, "m": 1.0}  # ms per channel
PROFILE = {"f": 2.0, "x1": 1.52, "x2": 1.51, "x3": 1.5, "m": 1.0}  # as profiled: f ranked costliest


def macs(p: Policy) -> int:
    return sum(100 * k for k in p.keep.values())


def real_ms(p: Policy) -> float:
    return 200.0 + sum(REAL[g] * k for g, k in p.keep.items())


def exact(policies: list[Policy]) -> list[float]:
    return [real_ms(p) for p in policies]


def profile(p: Policy) -> dict[str, float]:
    return {g: v / 100 for g, v in PROFILE.items()}


def steer(time=exact, **settings) -> object:
    config = legacy(**{"shares": (0.1,), "multi": 3, "rounds": 1, "min_gain": 0.02, "precision": False,
                                 **settings})  # fmt: skip
    return speed_moves(SPACE, START, macs=macs, time=time, profile=profile, config=config)


def test_a_stage_goes_down_together_when_a_costlier_group_ranks_above_it():
    # 10 % of 57,600 MACs is 57.6 channels: x1 alone frees 32 (1.7 % faster refilled on m), f's sets cost time
    without = steer()
    assert without.policy == START
    assert {t["down"] for t in without.log[1]["tried"]} == {"f", "x1", "x2", "f+x1", "f+x1+x2"}
    found = steer(window=4)
    assert found.log[1]["move"] == {"x1": [128, 96], "x2": [128, 96], "m": [128, 192]}
    assert found.log[1]["ratio"] == pytest.approx((real_ms(START) - 32.0) / real_ms(START), abs=1e-4)
    assert found.log[1]["ratio"] < 0.98 and found.macs == found.limit
    assert {"x1+x2", "x2+x3", "x1+x2+x3"} <= {t["down"] for t in found.log[1]["tried"]}


def lucky(lucky_times: int, factor: float = 0.95):
    """The exact timer, except that a policy with f moved down (slower in truth: f is the cheapest) reads ``factor``
    of its time in its first ``lucky_times`` timings (a preempted baseline, a lucky run) — then its true time."""
    seen = {"n": 0}

    def time(policies: list[Policy]) -> list[float]:
        out = exact(policies)
        for i, p in enumerate(policies):
            if p.keep["f"] < START.keep["f"]:
                seen["n"] += 1
                out[i] *= factor if seen["n"] <= lucky_times else 1.0
        return out

    return time


def test_a_lucky_first_confirmation_is_outvoted_by_the_median_of_three():
    taken = steer(time=lucky(2), multi=1)  # f alone: its first timing and one confirmation both lucky
    assert taken.policy.keep["f"] < 64
    held = steer(time=lucky(2), multi=1, confirms=3)
    assert held.policy == START
    assert len(held.log[1]["confirm_ratios"]) == 3 and held.log[1]["confirmed"] > 1.0


def test_the_polish_undoes_a_move_that_a_fresh_run_of_the_path_does_not_confirm():
    taken = steer(time=lucky(2), multi=1)
    polished = steer(time=lucky(2), multi=1, polish=3)
    assert taken.policy.keep["f"] < 64
    assert polished.policy == START
    entry = polished.log[-1]
    assert entry["kept_moves"] == 0 and entry["of"] == 1 and entry["medians"][0] > 1.0
    assert len(entry["polish"][0]) == 3


def test_the_polish_keeps_the_moves_that_a_fresh_run_confirms():
    result = steer(window=4, rounds=3, polish=2)
    moved = [e for e in result.log if isinstance(e.get("move"), dict)]
    entry = result.log[-1]
    assert entry["kept_moves"] == entry["of"] == len(moved) >= 1
    assert entry["medians"] == sorted(entry["medians"], reverse=True)  # each move faster than the one before
    assert real_ms(result.policy) < real_ms(START) * 0.98


@pytest.mark.parametrize("field, bad", [("window", -1), ("window", 1.5), ("confirms", 0), ("confirms", True),
                                        ("polish", -1), ("polish", "2")])  # fmt: skip
def test_bad_steering_settings_are_refused_by_name(field, bad):
    with pytest.raises(ConfigError, match=field):
        legacy(**{field: bad})


def test_the_polish_also_undoes_a_precision_move_that_a_fresh_run_does_not_confirm():
    start = Policy(keep=dict(START.keep), int8={"y": True})
    seen = {"n": 0}

    def time(policies: list[Policy]) -> list[float]:  # y in float: 1 % slower in truth, 5 % faster twice by luck
        out = []
        for p in policies:
            floated = not p.int8["y"]
            seen["n"] += floated
            out.append(real_ms(p) * ((0.95 if seen["n"] <= 2 else 1.01) if floated else 1.0))
        return out

    def run(polish: int):
        config = legacy(rounds=0, min_gain=0.02, polish=polish)
        seen["n"] = 0
        return speed_moves(SPACE, start, macs=macs, time=time, profile=profile, config=config)

    assert run(0).policy.int8 == {"y": False}
    polished = run(3)
    assert polished.policy == start
    assert polished.log[-1]["kept_moves"] == 0 and polished.log[-1]["medians"] == [pytest.approx(1.01)]


def test_the_defaults_are_session_16s_measured_settings_and_reach_the_optimum_the_old_ones_miss():
    config = SpeedMovesConfig()
    assert (config.rounds, config.candidates, config.patience, config.shares) == (8, 8, 2, (0.05, 0.1, 0.2, 0.3))
    assert (config.window, config.confirms, config.polish, config.precision) == (8, 3, 3, True)
    # the optimum at equal MACs: the whole stage at its floor, f (the cheapest per channel) kept, m refilled
    best = {"f": 64, "x1": 96, "x2": 96, "x3": 96, "m": 224}
    found = speed_moves(SPACE, START, macs=macs, time=exact, profile=profile)
    assert found.policy.keep == best and found.macs == found.limit
    assert found.log[1]["move"] == {"x1": [128, 96], "x2": [128, 96], "m": [128, 192]}  # the stage, in one move
    old = speed_moves(SPACE, START, macs=macs, time=exact, profile=profile, config=legacy())
    assert old.policy.keep["f"] == 32 and real_ms(old.policy) > real_ms(found.policy) + 6  # f's sets first
