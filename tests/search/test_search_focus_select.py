"""The finals' choice on held-out images (``search(..., select=loader)``): the recovered finalists, searched and
uniform, are scored on images the trials were not judged on and chosen by that score; their accuracy on the trials'
validation images stays beside it. Session 14: the 1,000 validation images ResNet-20's focused search judged on did
not order its finalists as their test accuracies did."""

import pytest

from deepslim.errors import ConfigError
from deepslim.search.latency import LatencyTable
from tests.search._tiny import digits, fake_ms, params_ms
from tests.search.test_depth_search import _space, trained

pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def _search(tmp_path, **kw):
    from deepslim.search import search

    net = trained()
    table = LatencyTable(timer=lambda keys: [fake_ms(k) for k in keys], model_timer=params_ms)
    return search(net, digits(), _space(net), ("accuracy",), "latency=0.45x", trials=10, out_dir=tmp_path,
                  latency_table=table, latency_model="measured", proxy_steps=2, finetune_epochs=0, top_k=2,
                  uniform_ratios=(1.0, 0.5), **kw)  # fmt: skip


def test_the_finalists_are_scored_and_chosen_on_the_held_out_images(tmp_path):
    held_out = digits().test  # images the trials never saw
    result = _search(tmp_path, select=held_out)
    assert len(result.finalists) == 3  # two searched (top_k=2) and the uniform one
    for c in result.finalists:
        assert c.measurement.extra["select_images"] == len(held_out.dataset)
        assert c.measurement.extra["split"] == "select"  # its accuracy is on the held-out images, not on val
        assert 0.0 <= c.measurement.extra["val_accuracy"] <= 1.0
    assert any(c.accuracy != c.measurement.extra["val_accuracy"] for c in result.finalists)  # really re-scored
    searched = [c for c in result.finalists[:2] if c.feasible]
    assert result.best is not None and result.best.accuracy == max(c.accuracy for c in [*searched,
                                                                                          *result.finalists[2:]])
    trials = {c.trial: c for c in result.trials}
    assert all("select_images" not in trials[c.trial].measurement.extra for c in result.finalists[:2])
    assert result.dense.measurement.extra["split"] == "val"  # not re-scored: compared with the finalists' val_accuracy


@pytest.mark.parametrize("given", [digits(), "val"])
def test_select_takes_a_loader_never_a_bundle_whose_test_split_it_would_read(tmp_path, given):
    with pytest.raises(ConfigError, match="select takes a loader of held-out images"):
        _search(tmp_path, select=given)
