"""Distillation's pieces against formulas written out here: Hinton et al.'s loss at a temperature and weight other
than the defaults, the hint regressors' shapes, the spatial matching of feature maps, and the config's bounds."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepslim as ds
from deepslim.train import kd_loss
from deepslim.train.distill import _match, _regressor


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("t", "alpha"), [(2.0, 0.3), (1.0, 1.0), (5.0, 0.0)])
def test_kd_loss_matches_hintons_formula(t, alpha):
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    te = np.array([[1.0, 0.5, -0.5], [-2.0, 1.5, 0.0]])
    y = np.array([0, 2])
    p_t, p_s = _softmax(te / t), _softmax(s / t)
    soft = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * t * t  # KL(teacher || student), batch mean
    hard = -np.log(_softmax(s)[np.arange(2), y]).mean()
    expected = alpha * soft + (1 - alpha) * hard
    got = kd_loss(torch.tensor(s), torch.tensor(te), torch.tensor(y), temperature=t, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_regressors_map_student_features_onto_the_teachers():
    conv = _regressor(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 2, 2))
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    assert conv.bias is None
    for s, t in ((torch.zeros(2, 8), torch.zeros(2, 5)), (torch.zeros(2, 3, 8), torch.zeros(2, 3, 5)),
                 (torch.zeros(2, 8, 4, 4), torch.zeros(2, 5))):  # fmt: skip
        lin = _regressor(s, t)
        assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (s.shape[-1], 5)
        assert lin.bias is None


def test_match_pools_feature_maps_to_the_teachers_size_and_refuses_mismatches():
    s = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.testing.assert_close(_match(s, torch.zeros(2, 3, 4, 4)), F.avg_pool2d(s, 2))
    same = torch.randn(2, 3, 4, 4)
    assert _match(same, torch.zeros(2, 3, 4, 4)) is same
    with pytest.raises(ds.ConfigError, match=r"student \(2, 3, 4, 4\) vs teacher \(2, 5, 4, 4\)"):
        _match(same, torch.zeros(2, 5, 4, 4))
    with pytest.raises(ds.ConfigError, match=r"student \(2, 6\) vs teacher \(2, 7\)"):
        _match(torch.zeros(2, 6), torch.zeros(2, 7))


def test_kd_config_bounds():
    for ok in ({"temperature": 1e-3}, {"alpha": 0.0}, {"alpha": 1.0}, {"hint_weight": 0.0}):
        ds.KDConfig(**ok)
    for bad, message in (({"temperature": 0.0}, "temperature must be positive, got 0.0"),
                         ({"alpha": -0.01}, "alpha must be in \\[0, 1\\], got -0.01"),
                         ({"alpha": 1.01}, "alpha must be in \\[0, 1\\]"),
                         ({"hint_weight": -1e-9}, "hint_weight must be >= 0"),
                         ({"hints": {"re:body": "x"}}, "student layer name to a teacher layer name, got 're:body'"),
                         ({"hints": {"body": 3}}, "got 'body': 3")):  # fmt: skip
        with pytest.raises(ds.ConfigError, match=message):
            ds.KDConfig(**bad)
    assert ds.KDConfig(hints={"a": "b", "c": "d"}).hints == (("a", "b"), ("c", "d"))


@pytest.fixture(scope="module")
def digits():
    return ds.load_data("digits", seed=0)


def _teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_distill_leaves_the_teacher_frozen_and_unchanged(digits):
    teacher = _teacher()
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = [p.detach().clone() for p in teacher.parameters()]
    teacher.train()
    result = ds.distill(student, teacher, digits, ds.KDConfig(temperature=2.0, alpha=0.5), epochs=1, lr=1e-2)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert len(result.history) == 1 and 0.0 < result.best_val_accuracy <= 1.0


def _hinted(teacher, data, weight, lr, hints=(("0", "2"),)):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()), nn.Linear(16, 10))
    config = ds.KDConfig(hints=dict(hints), hint_weight=weight) if weight is not None else ds.KDConfig()
    return student, ds.distill(student, teacher, data, config, epochs=1, lr=lr, cosine=False).history[0]


def test_hint_loss_is_the_weighted_regressor_error_and_only_it(digits):
    teacher = _teacher()
    # an lr far below the weights' float spacing freezes everything: the loss is exactly linear in hint_weight
    loss = {w: _hinted(teacher, digits, w, 1e-12)[1]["train_loss"] for w in (None, 1.0, 3.0)}
    hint = loss[1.0] - loss[None]
    assert hint > 1e-3 and loss[3.0] - loss[None] == pytest.approx(3 * hint, rel=1e-3)
    plain, zero, hinted = (_hinted(teacher, digits, w, 1e-2)[0].state_dict() for w in (None, 0.0, 1.0))
    assert all(torch.allclose(plain[k], zero[k], rtol=1e-4, atol=1e-6) for k in plain)
    assert not all(torch.allclose(plain[k], hinted[k], rtol=1e-2, atol=1e-3) for k in plain)


def test_kd_loss_on_per_position_logits_takes_the_softmax_over_classes():
    torch.manual_seed(0)
    s, te = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)  # (B, classes, L)
    y = torch.tensor([[0, 4, 2], [1, 1, 3]])
    t = 2.0
    p_t, log_p_s = torch.softmax(te / t, dim=1), torch.log_softmax(s / t, dim=1)
    soft = (p_t * (p_t.log() - log_p_s)).sum() / 2 * t * t  # KL summed over classes and positions, / batch
    expected = 0.6 * soft + 0.4 * F.cross_entropy(s, y)
    assert kd_loss(s, te, y, temperature=t, alpha=0.6).item() == pytest.approx(expected.item(), rel=1e-9)
