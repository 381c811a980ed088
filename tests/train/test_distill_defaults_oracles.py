"""distill() as a user calls it: with its defaults (each one observable: a dropout student for the seed, two batches
per epoch for the cosine schedule, an epoch that does not improve for restore_best, SGD for the momentum), with each
task kind taken from the data or given explicitly, and with preprocessing that differs between the data, the student
and the teacher (each model must be fed its own). Every check is one optimizer step against an update computed here
by hand, or a run compared with the same run given its settings explicitly."""

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepslim as ds
from deepslim.data import DataBundle, Preprocessing
from deepslim.models import PREPROCESSING_ATTR
from deepslim.tasks import Classification, Regression
from deepslim.train import kd_loss

distill_module = importlib.import_module("deepslim.train.distill")


def _bundle(*, n_train=16, task=None, targets="class", preprocessing=None, labelled=True):
    gen = torch.Generator().manual_seed(0)
    n = n_train + 8
    x = torch.randn(n, 6, generator=gen) * 1.5 - 0.4
    y = torch.arange(n) % 3 if targets == "class" else torch.randn(n, 3, generator=gen)

    def loader(a, b):
        return DataLoader(TensorDataset(a, b) if labelled else TensorDataset(a), batch_size=8)

    train, val = loader(x[:n_train], y[:n_train]), loader(x[n_train:], y[n_train:])
    test = loader(x[:8] * 2.0, y[:8].flip(0))  # not the validation split: validation must not read it
    extra = {"task": task} if task is not None else {}
    return DataBundle(name="tiny", train=train, val=val, test=test, calib=val, example_input=x[:1],
                      num_classes=3 if targets == "class" else 0, preprocessing=preprocessing, **extra)  # fmt: skip


def _teacher():
    torch.manual_seed(1)
    teacher = nn.Linear(6, 3)
    with torch.no_grad():
        teacher.weight.mul_(4.0)  # confident: its soft targets differ from the labels
    return teacher


def _sgd_step(student, loss_of, *, lr):
    """One plain SGD step (no momentum, no weight decay) of ``loss_of(copy)``: the parameters it leads to."""
    ref = copy.deepcopy(student)
    loss = loss_of(ref)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    return [p.detach() - lr * g for p, g in zip(ref.parameters(), grads, strict=True)], loss.item()


def _assert_params(model, expected):
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def _states_equal(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ---- defaults -------------------------------------------------------------------------------------------------------


def _dropout_student():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_distill_with_its_defaults_is_the_run_with_the_documented_settings():
    data, teacher = _bundle(), _teacher()
    base = _dropout_student()
    runs = {}
    for name, kwargs in {
        "defaults": {},
        "explicit": dict(config=ds.KDConfig(temperature=4.0, alpha=0.9), lr=1e-3, optimizer="adam", weight_decay=0.0,
                         momentum=0.9, seed=0, cosine=True, restore_best=True),
        "seed 1": dict(seed=1), "no cosine": dict(cosine=False), "last epoch": dict(restore_best=False),
        "lr 1e-2": dict(lr=1e-2), "T=1": dict(config=ds.KDConfig(temperature=1.0, alpha=0.9)),
        "alpha 0.5": dict(config=ds.KDConfig(temperature=4.0, alpha=0.5)),
    }.items():  # fmt: skip
        student = copy.deepcopy(base)
        res = ds.distill(student, teacher, data, epochs=3, **kwargs)
        runs[name] = (student, res)
    student, res = runs["defaults"]
    assert _states_equal(student, runs["explicit"][0])
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in runs["explicit"][1].history]
    # every default matters on this run: changing any one of them changes the student
    for name in ("seed 1", "no cosine", "lr 1e-2", "T=1", "alpha 0.5"):
        assert not _states_equal(student, runs[name][0]), name
    # the best epoch is not the last, so restore_best=True (the default) gives back an earlier epoch's weights
    assert res.best_epoch < 3 and not _states_equal(student, runs["last epoch"][0])


def test_distill_with_sgd_uses_the_default_momentum_of_0_9_with_nesterov():
    data, teacher = _bundle(n_train=8), _teacher()
    torch.manual_seed(2)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))

    def expected(m):
        ref = copy.deepcopy(student)
        loss = kd_loss(ref(x), teacher(x).detach(), y, temperature=4.0, alpha=0.9)
        grads = torch.autograd.grad(loss, [ref.weight, ref.bias])
        return [p.detach() - 0.05 * (g + m * g) for p, g in zip((ref.weight, ref.bias), grads, strict=True)]

    w, b = expected(0.9)
    ds.distill(student, teacher, data, epochs=1, lr=0.05, optimizer="sgd", cosine=False)
    torch.testing.assert_close(student.weight, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.bias, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w, expected(0.0)[0])  # momentum 0 would have moved it less


def test_distill_with_adam_takes_adams_first_step():
    # Adam's first step moves every parameter by lr in the direction against its gradient: m/sqrt(v) = g/|g|
    data, teacher = _bundle(n_train=8), _teacher()
    torch.manual_seed(2)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))
    ref = copy.deepcopy(student)
    grads = torch.autograd.grad(kd_loss(ref(x), teacher(x).detach(), y, temperature=4.0, alpha=0.9),
                                [ref.weight, ref.bias])  # fmt: skip
    ds.distill(student, teacher, data, epochs=1, lr=0.01, optimizer="adam", cosine=False)
    for p, r, g in zip((student.weight, student.bias), (ref.weight, ref.bias), grads, strict=True):
        torch.testing.assert_close(p.detach(), r.detach() - 0.01 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-7)


# ---- the task ----------------------------------------------------------------------------------------------------


def test_the_datas_own_task_is_used_when_none_is_given_regression():
    data = _bundle(n_train=8, task=Regression(), targets="real")
    teacher = _teacher()
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))
    config = ds.KDConfig(temperature=2.0, alpha=0.7)
    # regression distils by MSE to the teacher's outputs blended with MSE to the targets (no softmax, no T)
    params, loss = _sgd_step(student, lambda m: 0.7 * F.mse_loss(m(x), teacher(x).detach())
                             + 0.3 * F.mse_loss(m(x), y), lr=0.1)  # fmt: skip
    res = ds.distill(student, teacher, data, config, epochs=1, lr=0.1, optimizer="sgd", momentum=0.0, cosine=False)
    _assert_params(student, params)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)
    assert "val_mse" in res.history[0] and "val_accuracy" in res.history[0]  # validated by the regression metrics
    val_mse = ds.evaluate(student, data, split="val").metrics["mse"]
    assert res.history[0]["val_mse"] == pytest.approx(val_mse, rel=1e-6)


def test_an_explicit_task_wins_over_the_datas():
    data = _bundle(n_train=8)  # classification data
    teacher = _teacher()
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))
    task = Classification(ignore_index=0)  # labels 0 do not count in the hard term
    params, loss = _sgd_step(student, lambda m: 0.6 * 4.0 * F.kl_div(
        F.log_softmax(m(x) / 2.0, dim=1), F.log_softmax(teacher(x).detach() / 2.0, dim=1), reduction="batchmean",
        log_target=True) + 0.4 * F.cross_entropy(m(x), y, ignore_index=0), lr=0.1)  # fmt: skip
    res = ds.distill(student, teacher, data, ds.KDConfig(temperature=2.0, alpha=0.6), epochs=1, lr=0.1,
                     optimizer="sgd", momentum=0.0, cosine=False, task=task)  # fmt: skip
    _assert_params(student, params)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)
    val = ds.evaluate(student, data, split="val", task=task).metrics  # validated with the given task, too
    assert val["loss"] != pytest.approx(ds.evaluate(student, data, split="val").metrics["loss"])
    assert res.history[0]["val_loss"] == pytest.approx(val["loss"], rel=1e-6)


def test_a_task_given_by_name_is_looked_up():
    data = _bundle(n_train=8, targets="real")  # the bundle says classification; the caller knows better
    teacher = _teacher()
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))
    params, _ = _sgd_step(student, lambda m: 0.5 * F.mse_loss(m(x), teacher(x).detach()) + 0.5 * F.mse_loss(m(x), y),
                          lr=0.1)  # fmt: skip
    res = ds.distill(student, teacher, data, ds.KDConfig(alpha=0.5), epochs=1, lr=0.1, optimizer="sgd",
                     momentum=0.0, cosine=False, task="regression")  # fmt: skip
    _assert_params(student, params)
    val = ds.evaluate(student, data, split="val", task="regression").metrics
    assert res.history[0]["val_r2"] == pytest.approx(val["r2"], rel=1e-6) and res.best_val_metric == pytest.approx(
        val["r2"], rel=1e-6)  # fmt: skip


def test_unlabelled_data_trains_on_the_teacher_alone_and_validates_by_fidelity_to_it():
    data = _bundle(n_train=8, labelled=False)
    teacher = _teacher()
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    (x,) = next(iter(data.train))
    # no labels: the loss is the soft term alone, whatever alpha says
    params, loss = _sgd_step(student, lambda m: kd_loss(m(x), teacher(x).detach(), torch.zeros(8, dtype=torch.long),
                                                        temperature=3.0, alpha=1.0), lr=0.1)  # fmt: skip
    res = ds.distill(student, teacher, data, ds.KDConfig(temperature=3.0, alpha=0.5), epochs=1, lr=0.1,
                     optimizer="sgd", momentum=0.0, cosine=False)  # fmt: skip
    _assert_params(student, params)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)
    fid = ds.fidelity(student, teacher, data, split="val")
    assert 0.0 < fid["agreement"] < 1.0  # the student agrees with the teacher on some inputs, not all
    assert res.best_val_accuracy == pytest.approx(fid["agreement"])
    assert res.history[0]["val_agreement"] == pytest.approx(fid["agreement"])
    assert res.history[0]["val_kl"] == pytest.approx(fid["kl"], rel=1e-6)


@pytest.mark.parametrize(("data_task", "task"), [(Regression(), None), (None, "regression")],
                         ids=["the-datas", "given"])  # fmt: skip
def test_unlabelled_regression_data_validates_by_r2_against_the_teachers_outputs(data_task, task):
    data = _bundle(n_train=8, labelled=False, task=data_task, targets="real")
    teacher = _teacher()
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    (x,) = next(iter(data.train))
    params, loss = _sgd_step(student, lambda m: F.mse_loss(m(x), teacher(x).detach()), lr=0.1)
    res = ds.distill(student, teacher, data, ds.KDConfig(alpha=0.5), epochs=1, lr=0.1, optimizer="sgd",
                     momentum=0.0, cosine=False, task=task)  # fmt: skip
    _assert_params(student, params)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)
    fid = ds.fidelity(student, teacher, data, split="val", task="regression")
    assert math.isnan(res.best_val_accuracy)  # no accuracy for regression: NaN, not None
    assert res.best_val_metric == pytest.approx(fid["r2"], rel=1e-6) and res.history[0]["val_mse"] == pytest.approx(
        fid["mse"], rel=1e-6)  # fmt: skip


# ---- preprocessing --------------------------------------------------------------------------------------------------

DATA_PRE = Preprocessing(mean=(0.5,), std=(0.25,))
STUDENT_PRE = Preprocessing(mean=(-1.0,), std=(2.0,))
TEACHER_PRE = Preprocessing(mean=(0.2,), std=(0.5,))


def _with_pre(model, pre):
    setattr(model, PREPROCESSING_ATTR, pre.to_dict())
    return model


@pytest.mark.parametrize(("data_pre", "teacher_pre"), [(DATA_PRE, TEACHER_PRE), (DATA_PRE, None), (None, None)],
                         ids=["teacher-own", "teacher-none", "raw-data-teacher-none"])  # fmt: skip
def test_the_student_and_the_teacher_are_each_fed_their_own_preprocessing(data_pre, teacher_pre):
    # "teacher-none" and "raw-data-teacher-none" failed before the fix: the teacher was fed the student's inputs
    data = _bundle(n_train=8, preprocessing=data_pre)
    teacher = _teacher()
    if teacher_pre is not None:
        _with_pre(teacher, teacher_pre)
    torch.manual_seed(3)
    student = _with_pre(nn.Linear(6, 3), STUDENT_PRE)
    x, y = next(iter(data.train))
    raw = data_pre.invert(x) if data_pre is not None else x
    # a teacher without a record of its own takes the data as it is stored (as evaluate() and fidelity() feed it)
    x_teacher = teacher_pre.apply(raw) if teacher_pre is not None else x
    x_student = STUDENT_PRE.apply(raw)
    assert not torch.allclose(x_student, x) and not torch.allclose(x_student, x_teacher)
    params, loss = _sgd_step(student, lambda m: kd_loss(m(x_student), teacher(x_teacher).detach(), y,
                                                        temperature=2.0, alpha=0.8), lr=0.1)  # fmt: skip
    res = ds.distill(student, teacher, data, ds.KDConfig(temperature=2.0, alpha=0.8), epochs=1, lr=0.1,
                     optimizer="sgd", momentum=0.0, cosine=False)  # fmt: skip
    _assert_params(student, params)
    assert res.history[0]["train_loss"] == pytest.approx(loss, rel=1e-6)


def test_a_student_without_a_record_is_fed_the_data_as_stored_and_the_teacher_its_own():
    data = _bundle(n_train=8, preprocessing=DATA_PRE)
    teacher = _with_pre(_teacher(), TEACHER_PRE)
    torch.manual_seed(3)
    student = nn.Linear(6, 3)
    x, y = next(iter(data.train))
    x_teacher = TEACHER_PRE.apply(DATA_PRE.invert(x))
    params, _ = _sgd_step(student, lambda m: kd_loss(m(x), teacher(x_teacher).detach(), y, temperature=2.0,
                                                     alpha=0.8), lr=0.1)  # fmt: skip
    ds.distill(student, teacher, data, ds.KDConfig(temperature=2.0, alpha=0.8), epochs=1, lr=0.1, optimizer="sgd",
               momentum=0.0, cosine=False)  # fmt: skip
    _assert_params(student, params)


def test_hints_are_sized_and_matched_on_each_models_own_inputs():
    data = _bundle(n_train=8, preprocessing=DATA_PRE)
    torch.manual_seed(2)
    teacher = _with_pre(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), TEACHER_PRE)
    student = _with_pre(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), STUDENT_PRE)
    made = []
    real = distill_module._regressor

    def spy(s, t):
        made.append(real(s, t))
        return made[-1]

    x, y = next(iter(data.train))
    raw = DATA_PRE.invert(x)
    xs, xt = STUDENT_PRE.apply(raw), TEACHER_PRE.apply(raw)
    with torch.no_grad():
        kd = kd_loss(student(xs), teacher(xt), y, temperature=2.0, alpha=0.6).item()
        s_feat, t_feat = student[1](student[0](xs)), teacher[1](teacher[0](xt))
    config = ds.KDConfig(temperature=2.0, alpha=0.6, hints={"1": "1"}, hint_weight=1.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill_module, "_regressor", spy)
        res = ds.distill(student, teacher, data, config, epochs=1, lr=1e-12, cosine=False)  # nothing moves
    with torch.no_grad():
        hint = F.mse_loss(made[0](s_feat), t_feat).item()
    assert hint > 1e-3 and res.history[0]["train_loss"] == pytest.approx(kd + 1.5 * hint, rel=1e-5)


@pytest.mark.parametrize(("hints", "message"), [({"2": "1"}, r"^hint layer '2' is not a layer of the student$"),
                                                ({"0": "body"}, r"^hint layer 'body' is not a layer of the teacher$")])
def test_a_misspelt_hint_layer_is_refused_naming_the_model_it_is_missing_from(hints, message):
    data = _bundle(n_train=8)
    student, teacher = nn.Sequential(nn.Linear(6, 3)), nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(ds.ConfigError, match=message):
        ds.distill(student, teacher, data, ds.KDConfig(hints=hints), epochs=1)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # refused before training
    # no hook left behind (the teacher case failed before the fix: the student kept its capture hook)
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks


def test_the_hint_regressor_trains_alongside_the_student():
    data = _bundle(n_train=8)
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    made, start = [], []
    real = distill_module._regressor

    def spy(s, t):
        made.append(real(s, t))
        start.append(made[-1].weight.detach().clone())
        return made[-1]

    x, _ = next(iter(data.train))
    with torch.no_grad():
        s_feat, t_feat = student[1](student[0](x)), teacher[1](teacher[0](x))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill_module, "_regressor", spy)
        ds.distill(student, teacher, data, ds.KDConfig(hints={"1": "1"}, hint_weight=2.0), epochs=1, lr=0.1,
                   optimizer="sgd", momentum=0.0, cosine=False, restore_best=False)  # fmt: skip
    start_w = start[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(2.0 * F.mse_loss(s_feat @ start_w.T, t_feat), [start_w])
    w = made[0].weight.detach()
    torch.testing.assert_close(w, start[0] - 0.1 * grad, rtol=1e-5, atol=1e-6)  # one SGD step on the hint term
    assert not torch.allclose(w, start[0])
