"""Each task's loss and metrics on known tensors (golden numbers worked out by hand); batches and outputs."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import deepslim as ds
from deepslim.tasks import (
    Classification,
    Embedding,
    LanguageModeling,
    Regression,
    Segmentation,
    SequenceClassification,
    TokenClassification,
    call_model,
    get_task,
    list_tasks,
    pick_output,
)
from deepslim.train import kd_loss


def _run(meter, *pairs):
    for out, target in pairs:
        meter.update(out, target)
    return meter.result()


def test_classification_accuracy_and_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2, 2])

    def ce(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    expected = sum(ce(r, k) for r, k in zip(logits.tolist(), y.tolist(), strict=True)) / 3
    m = _run(Classification().meter(), (logits[:2], y[:2]), (logits[2:], y[2:]))  # two batches
    assert m["accuracy"] == pytest.approx(2 / 3) and m["loss"] == pytest.approx(expected, rel=1e-6)
    assert float(Classification().loss(logits, y)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ds.DataError, match="outside the model's 3 classes"):
        Classification().loss(logits, torch.tensor([0, 1, 5]))


def test_language_modeling_perplexity_is_vocabulary_size_for_uniform_logits_and_skips_padding():
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    task = LanguageModeling()
    inputs, target = task.split({"input_ids": ids, "attention_mask": mask})
    assert set(inputs) == {"input_ids", "attention_mask"} and target.tolist() == [[3, 1, 4, -100, -100]]
    m = _run(task.meter(), (torch.zeros(1, 5, 7), target))
    assert m["perplexity"] == pytest.approx(7.0) and m["loss"] == pytest.approx(math.log(7))
    # position t predicts token t+1: logits that put all mass on the next token give perplexity 1, accuracy 1
    logits = torch.full((1, 5, 7), -30.0)
    for t in range(4):
        logits[0, t, ids[0, t + 1]] = 30.0
    m = _run(task.meter(), (logits, task.split(ids)[1]))
    assert m["accuracy"] == 1.0 and m["perplexity"] == pytest.approx(1.0)
    assert task.split((ids, mask))[1].tolist() == [[3, 1, 4, -100, -100]]  # a tuple batch: (input_ids, mask)
    assert task.split({"input_ids": ids, "labels": ids * 0})[1].tolist() == [[0] * 5]


def test_token_classification_ignores_unlabelled_positions():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])  # (B, T, C)
    labels = torch.tensor([[0, 0, -100]])
    m = _run(TokenClassification().meter(), (logits, labels))
    assert m["accuracy"] == 0.5
    assert m["loss"] == pytest.approx(float(F.cross_entropy(logits[0, :2], labels[0, :2])))


def test_segmentation_miou_by_hand_and_upsampled_logits():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    logits = F.one_hot(pred, 2).permute(0, 3, 1, 2).float() * 10
    m = _run(Segmentation().meter(), (logits, target))
    # class 0: intersection 1, union 2; class 1: intersection 2, union 3
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2) and m["accuracy"] == 0.75
    big = target.repeat_interleave(2, 1).repeat_interleave(2, 2)  # labels at twice the logits' resolution
    m = _run(Segmentation().meter(), (F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 10, big))
    assert m["accuracy"] == 1.0 and m["miou"] == 1.0
    with pytest.raises(ds.DataError, match=r"logits \(B, C, H, W\)"):
        Segmentation().loss(torch.zeros(1, 2, 3), target)


def test_regression_r2_and_mse_by_hand_over_two_batches():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pred = torch.tensor([[1.0], [2.0], [3.0], [5.0]])  # (N, 1) against (N,) targets
    m = _run(Regression().meter(), (pred[:3], y[:3]), (pred[3:], y[3:]))
    assert m["mse"] == pytest.approx(0.25) and m["r2"] == pytest.approx(1 - 1 / 5)  # SSE 1, SST 5
    assert float(Regression().loss(pred, y)) == pytest.approx(0.25)
    with pytest.raises(ds.DataError, match="needs targets"):
        Regression().loss(pred, None)


def test_embedding_cosine_and_masked_mean_pooling():
    m = _run(Embedding().meter(), (torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
    assert m["cosine"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2) and m["loss"] == pytest.approx(1 - m["cosine"])
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    inputs = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0]])}
    out = {"last_hidden_state": states}
    assert Embedding().output(out, inputs).tolist() == [[2.0, 3.0]]  # padding left out of the mean
    assert Embedding(pooling="cls").output(out, inputs).tolist() == [[1.0, 2.0]]
    with pytest.raises(ds.ConfigError, match="pooling"):
        Embedding(pooling="max")


def test_classification_comparison_is_hintons_kd_loss():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    ours = Classification().distill_loss(s, t, y, temperature=3.0, alpha=0.7)
    assert torch.allclose(ours, kd_loss(s, t, y, temperature=3.0, alpha=0.7))
    assert float(Classification().compare(t, t, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)


def test_fidelity_meters_measure_agreement_with_a_reference():
    ref = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    m = _run(Classification().fidelity_meter(), (out, ref))
    assert m["agreement"] == 0.75 and m["kl"] > 0
    assert _run(Embedding().fidelity_meter(), (ref, ref * 3))["cosine"] == pytest.approx(1.0)


def test_batches_split_into_inputs_and_targets():
    x, m, y = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1])
    task = SequenceClassification()
    assert task.split([x, y])[0] is x and task.split([x, y])[1] is y
    inputs, target = task.split((x, m, y))
    assert inputs == (x, m) and target is y
    inputs, target = task.split({"input_ids": x, "attention_mask": m, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and target is y
    assert task.split(x) == (x, None)
    with pytest.raises(ds.DataError, match="no model inputs"):
        task.split({"labels": y})


def test_outputs_are_picked_from_tensors_tuples_dicts_and_model_outputs():
    logits = torch.ones(2, 3)
    assert pick_output(logits, ("logits",)) is logits
    assert pick_output((logits, torch.zeros(1)), ("logits",)) is logits
    hf_like = OrderedDict(loss=None, logits=logits)  # ModelOutput is an OrderedDict whose None fields are absent
    assert pick_output(hf_like, ("logits",)) is logits
    with pytest.raises(ds.DataError, match="reads logits"):
        pick_output({"hidden": logits}, ("logits",))
    calls = []

    def model(*args, **kwargs):
        calls.append((len(args), sorted(kwargs)))
        return logits

    call_model(model, (logits, logits))
    call_model(model, {"input_ids": logits, "attention_mask": logits})
    assert calls == [(2, []), (0, ["attention_mask", "input_ids"])]


def test_tasks_are_found_by_name():
    assert {"classification", "embedding", "language-modeling", "regression", "segmentation",
            "sequence-classification", "token-classification"} == set(list_tasks())  # fmt: skip
    assert isinstance(get_task("regression"), Regression) and isinstance(get_task(None), Classification)
    with pytest.raises(ds.UnknownNameError, match="known tasks"):
        get_task("detection")
    assert Classification().score({"accuracy": 0.5}) == 0.5 and LanguageModeling().score({"perplexity": 9}) == -9
