"""quantize_'s fidelity check judges top-1 agreement only where the outputs are class scores: embeddings (a
sentence encoder's vectors) and regressions are judged by cosine alone, so ``min_agreement`` cannot refuse them on
the argmax of a vector that has no classes. The task comes from the calibration loader (its data bundle's task) or
the batches' targets; classifiers keep their agreement."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepslim.compress.quantize import LinearQuantConfig, QuantizationError, quantization_report, quantize_
from deepslim.compress.quantize._fidelity import TASK_ATTR, check_batches, scores_are_classes
from deepslim.tasks import Classification, Embedding, Regression
from tests import _hf_models

STRICT = LinearQuantConfig()  # the defaults: cosine 0.98, top-1 agreement 80%


def _wide() -> nn.Sequential:
    """A random MLP with 256 near-equal outputs (the last layer's rows differ by 1%), like an embedding's
    dimensions: int8 keeps the vectors (cosine 1.000) but flips the argmax of ~1 row in 4."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 256)).eval()
    with torch.no_grad():
        model[2].weight.copy_(model[2].weight[:1] + 0.01 * model[2].weight)
    return model


def _loader(task, *tensors) -> DataLoader:
    dl = DataLoader(TensorDataset(*tensors), batch_size=32)
    if task is not None:
        setattr(dl, TASK_ATTR, task)
    return dl


def test_the_wide_model_really_loses_top1_agreement_when_its_outputs_are_taken_as_classes():
    torch.manual_seed(1)
    x = torch.randn(64, 16)
    with pytest.raises(QuantizationError, match=r"top-1 agreement \d+% over 64 rows"):
        quantize_(_wide(), STRICT, calib_data=_loader(Classification(), x, torch.randint(0, 256, (64,))))


@pytest.mark.parametrize("task", [Embedding(), Regression(), "embedding"], ids=["embedding", "regression", "name"])
def test_a_loader_whose_task_has_no_classes_is_judged_by_cosine_alone(task):
    torch.manual_seed(1)
    x = torch.randn(64, 16)
    model = quantize_(_wide(), STRICT, calib_data=_loader(task, x))
    fid = quantization_report(model).fidelity
    assert fid is not None and fid.passed and fid.top1_agreement is None
    assert fid.cosine > 0.99 and fid.rows == 64 and "top-1" not in str(fid)


def test_real_valued_targets_mean_no_classes_and_integer_targets_mean_classes():
    torch.manual_seed(1)
    x = torch.randn(64, 16)
    model = quantize_(_wide(), STRICT, calib_data=[(x[:32], torch.randn(32, 256)), (x[32:], torch.randn(32, 256))])
    assert quantization_report(model).fidelity.top1_agreement is None
    with pytest.raises(QuantizationError, match="top-1 agreement"):
        quantize_(_wide(), STRICT, calib_data=[(x, torch.randint(0, 256, (64,)))])


def test_the_loaders_task_wins_over_the_targets_and_without_either_the_shape_decides():
    x, ints = torch.randn(8, 4), torch.randint(0, 3, (8,))
    assert scores_are_classes(_loader(Embedding(), x, ints), (x, ints), 1) is False
    assert scores_are_classes(_loader(Classification(), x, torch.randn(8)), (x, torch.randn(8)), 1) is True
    assert scores_are_classes([(x, ints)], (x, ints), 1) is True
    assert scores_are_classes([(x, ints.float())], (x, ints.float()), 1) is False
    assert scores_are_classes([x], x, 1) is None
    assert scores_are_classes([(x, ints)], (x, ints), 2) is None  # both items are model inputs: no target
    assert scores_are_classes([{"input_ids": ints, "labels": ints}], {"input_ids": ints, "labels": ints}, 1) is True
    batches = check_batches(_loader(Regression(), x, ints), 1)
    assert batches.classes is False and len(batches) == 1 and torch.equal(batches[0][0], x)


def test_a_classifier_without_labels_keeps_its_agreement_as_before():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    q = quantize_(model, LinearQuantConfig(), calib_data=[torch.randn(32, 16)])
    fid = quantization_report(q).fidelity
    assert fid.top1_agreement is not None and fid.top1_agreement >= 0.9 and fid.rows == 32


@pytest.mark.skipif(not _hf_models.available(), reason="transformers is not installed")
def test_a_hugging_face_sentence_encoder_on_an_embedding_loader_is_not_refused_for_its_argmax():
    import transformers as tf

    from deepslim.models.hf import SentenceEncoder

    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    encoder = SentenceEncoder(tf.BertModel(config), max_positions=64).eval()
    ids = torch.randint(0, 100, (64, 12))
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask, strict=True)]
    loader = DataLoader(rows, batch_size=32)  # dict batches, as load_data("sentences") gives
    setattr(loader, TASK_ATTR, Embedding())
    with torch.no_grad():
        want = encoder(ids, mask)
    q = quantize_(encoder, LinearQuantConfig(min_agreement=1.0), calib_data=loader)
    fid = quantization_report(q).fidelity
    assert fid.passed and fid.top1_agreement is None and fid.rows == 64
    with torch.no_grad():
        got = q(ids, mask)
    assert float(nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0)) == pytest.approx(fid.cosine,
                                                                                                      abs=1e-5)


def test_a_data_bundles_loaders_carry_its_task_for_the_check():
    import deepslim as ds

    data = ds.load_data("digits", seed=0)
    assert getattr(data.calib, TASK_ATTR) == data.task == Classification()


def test_a_loader_shared_by_two_bundles_keeps_its_first_task_and_plain_lists_are_accepted():
    import dataclasses

    import deepslim as ds

    data = ds.load_data("digits", seed=0)
    other = dataclasses.replace(data, task=Regression())  # the same loader objects under another task
    assert getattr(data.calib, TASK_ATTR) == Classification() and other.task == Regression()
    batches = [(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))]
    listed = dataclasses.replace(data, train=batches, val=batches, test=batches, calib=batches)
    assert listed.calib is batches  # a list cannot carry the tag; the bundle is still built
