"""A study judged with the measured latency model keeps its frame when resumed (review R16 H1): the dense model's
settled milliseconds are recorded in the study's frame (``frame.table_state``'s ``measured_dense_ms``) and put back
before the frame would be settled again, so a resume under other load (here the fake end-to-end timer 25 % slower)
neither moves the limit in ms nor flips an earlier trial's feasibility; a study recorded without it is re-measured,
with a warning saying so."""

import logging

import pytest

from deepslim.search.frame import FRAME_ATTR, MEASURED_FIELD
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained


def _search(out, slow: float):
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search import search

    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys],
                         model_timer=lambda pairs: [slow * ms for ms in params_ms(pairs)])  # fmt: skip
    net = trained()
    return search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=6, strategy="random",
                  out_dir=out, latency_table=table, latency_model="measured", finetune_epochs=0, top_k=1,
                  uniform_ratios=(1.0, 0.5), seed=3, priors=False)  # fmt: skip


def _judged(result):
    return {c.trial: (c.latency_ms, c.feasible) for c in result.trials}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("measured")
    return _search(out, 1.0), out


def _copy(out, tmp_path):
    import shutil

    shutil.copytree(out, tmp_path / "study")
    return tmp_path / "study"


def test_a_resumed_measured_study_judges_in_the_frame_its_first_run_judged_in(first, tmp_path, caplog):
    r1, out = first
    assert any(f for _, f in _judged(r1).values()) and not all(f for _, f in _judged(r1).values())  # it binds
    with caplog.at_level(logging.WARNING, logger="deepslim.search.frame"):
        r2 = _search(_copy(out, tmp_path), 1.25)  # the machine 25 % slower; nothing left to run
    assert r2.limits == r1.limits  # the limit in ms: the recorded frame, not one settled under the new load
    assert _judged(r2) == _judged(r1)  # no earlier trial's feasibility flips (trial 5 did: over, then "within")
    assert "measured again" not in caplog.text


def test_a_study_recorded_without_the_measured_frame_is_re_measured_with_a_warning(first, tmp_path, caplog):
    import optuna

    from deepslim.search import storage as st

    r1, out = first
    copy = _copy(out, tmp_path)
    study = optuna.load_study(study_name="deepslim-search", storage=st.open_storage(None, out_dir=copy))
    state = dict(study.user_attrs[FRAME_ATTR])
    assert state[MEASURED_FIELD] == pytest.approx(r1.limits["latency"] / 0.45)  # the frame the limit was set in
    del state[MEASURED_FIELD]  # as an older deepslim recorded it
    study.set_user_attr(FRAME_ATTR, state)
    with caplog.at_level(logging.WARNING, logger="deepslim.search.frame"):
        r2 = _search(copy, 1.25)
    assert "measured again" in caplog.text
    assert r2.limits["latency"] == pytest.approx(1.25 * r1.limits["latency"])  # settled under the new load
