"""distill() on a hand-built 16-sample bundle, checked step by step against gradients computed here: one optimizer
step must equal the hand-computed update of Hinton et al.'s loss with the teacher's (not the student's) logits, at a
temperature, alpha, momentum and weight decay other than the defaults; the epoch's reported loss is that loss; the
callbacks, hooks and checkpoint are honoured; the teacher is left frozen, in eval mode and unchanged."""

import copy
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepslim as ds
from deepslim.data import DataBundle
from deepslim.train import kd_loss


def _bundle(n_train=8):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n_train + 8, 6, generator=gen) - 0.3, torch.arange(n_train + 8) % 3
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=8)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=8)
    return DataBundle(name="tiny", train=train, val=val, test=val, calib=val, example_input=x[:1], num_classes=3)


def _pair():
    torch.manual_seed(1)
    teacher, student = nn.Linear(6, 3), nn.Linear(6, 3)
    with torch.no_grad():
        teacher.weight.mul_(4.0)  # confident teacher: its soft targets differ from the labels
    return teacher, student


def _expected_step(student, teacher, data, *, t, alpha, lr, momentum, wd):
    """SGD (Nesterov when momentum > 0) on alpha·T²·KL(teacher‖student) + (1-alpha)·CE, from the first batch."""
    x, y = next(iter(data.train))
    ref = copy.deepcopy(student)
    loss = kd_loss(ref(x), teacher(x).detach(), y, temperature=t, alpha=alpha)
    grads = torch.autograd.grad(loss, [ref.weight, ref.bias])
    out = []
    for p, g in zip((ref.weight, ref.bias), grads, strict=True):
        d = g + wd * p.detach()
        d = d + momentum * d if momentum > 0 else d  # first Nesterov step: buf = d; d + m·buf
        out.append(p.detach() - lr * d)
    return out, loss.item()


@pytest.mark.parametrize(("t", "alpha", "momentum", "wd"), [(3.0, 0.7, 0.5, 0.01), (1.0, 1.0, 0.0, 0.0)])
def test_one_distillation_step_is_the_hand_computed_update_of_hintons_loss(t, alpha, momentum, wd):
    data = _bundle()
    teacher, student = _pair()
    teacher_before = copy.deepcopy(teacher.state_dict())
    (w, b), loss = _expected_step(student, teacher, data, t=t, alpha=alpha, lr=0.1, momentum=momentum, wd=wd)
    teacher.train()
    res = ds.distill(student, teacher, data, ds.KDConfig(temperature=t, alpha=alpha), epochs=1, lr=0.1,
                     optimizer="sgd", momentum=momentum, weight_decay=wd, cosine=False)  # fmt: skip
    torch.testing.assert_close(student.weight, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.bias, b, rtol=1e-5, atol=1e-6)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())


def test_the_cosine_schedule_and_the_epoch_callback_reach_distill():
    data = _bundle()
    teacher, student = _pair()
    # cosine over 2 steps: the second step runs at lr * 0.5 * (1 + cos(pi / 2)) = lr / 2
    s1 = copy.deepcopy(student)
    (w1, b1), _ = _expected_step(s1, teacher, data, t=2.0, alpha=0.5, lr=0.2, momentum=0.0, wd=0.0)
    with torch.no_grad():
        s1.weight.copy_(w1)
        s1.bias.copy_(b1)
    (w2, b2), _ = _expected_step(s1, teacher, data, t=2.0, alpha=0.5, lr=0.1, momentum=0.0, wd=0.0)
    epochs = []
    ds.distill(student, teacher, data, ds.KDConfig(temperature=2.0, alpha=0.5), epochs=2, lr=0.2, optimizer="sgd",
               momentum=0.0, cosine=True, restore_best=False, on_epoch=epochs.append)  # fmt: skip
    torch.testing.assert_close(student.weight, w2, rtol=1e-5, atol=1e-6)
    assert [m["epoch"] for m in epochs] == [1, 2] and "val_accuracy" in epochs[0]


def test_hooks_run_after_every_step_and_the_checkpoint_is_written(tmp_path):
    data = _bundle(n_train=16)  # two batches
    teacher, student = _pair()
    calls = []

    class Hook:
        def after_step(self, model):
            calls.append(model is student)

    path = tmp_path / "student.pt"
    ds.distill(student, teacher, data, epochs=1, lr=1e-3, hooks=[Hook()], checkpoint=path, seed=3)
    assert calls == [True, True] and path.is_file() and path.stat().st_size > 0


def test_the_hint_term_is_the_weighted_error_of_the_regressed_student_feature(monkeypatch):
    distill_module = sys.modules["deepslim.train.distill"]  # the package exports a function of the same name
    made = []
    real = distill_module._regressor
    monkeypatch.setattr(distill_module, "_regressor", lambda s, t: made.append(real(s, t)) or made[-1])
    data = _bundle()
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = next(iter(data.train))
    with torch.no_grad():
        kd = kd_loss(student(x), teacher(x), y, temperature=2.0, alpha=0.6).item()
        s_feat, t_feat = student[1](student[0](x)), teacher[1](teacher[0](x))
    config = ds.KDConfig(temperature=2.0, alpha=0.6, hints={"1": "1"}, hint_weight=2.5)
    # an lr far below the weights' float spacing: nothing moves, the reported loss is the loss at the start
    res = ds.distill(student, teacher, data, config, epochs=1, lr=1e-12, cosine=False)
    assert len(made) == 1 and (made[0].in_features, made[0].out_features) == (5, 4)
    with torch.no_grad():
        hint = torch.nn.functional.mse_loss(made[0](s_feat), t_feat).item()
    assert hint > 1e-3 and res.history[0]["train_loss"] == pytest.approx(kd + 2.5 * hint, rel=1e-5)
    # the hooks are removed afterwards: the layers no longer record their outputs
    assert not student[1]._forward_hooks and not teacher[1]._forward_hooks


def test_distill_threads_setting_is_checked():
    data = _bundle()
    teacher, student = _pair()
    with pytest.raises(ds.ConfigError, match="threads must be a whole number"):
        ds.distill(student, teacher, data, epochs=1, threads=0)
