"""Continuing a saved student (EncoderKDConfig.skip_batches: the batches a single longer run would draw next) and
per-layer weights of the hidden-state loss (EncoderKDConfig.layer_weights)."""

import copy
import itertools

import pytest
import torch

from deepslim.errors import ConfigError
from tests.train._bert import bert_teacher, random_texts

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")
student_mod = pytest.importorskip("deepslim.train.student")
EncoderKDConfig, distill_encoder = student_mod.EncoderKDConfig, student_mod.distill_encoder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 3)


def _texts(n=40, width=12, seed=0):
    return random_texts(n, width, 3, seed)


def test_a_skipped_stream_continues_exactly_where_the_full_stream_is_across_epochs():
    ids, mask = _texts()
    for skip in (0, 3, 5, 12):  # 5 batches an epoch: 12 crosses two reshuffles
        full = itertools.islice(student_mod.length_batches(ids, mask, 8, seed=4), skip, skip + 9)
        cont = itertools.islice(student_mod.length_batches(ids, mask, 8, seed=4, skip=skip), 9)
        for (a_ids, a_mask), (b_ids, b_mask) in zip(full, cont, strict=True):
            assert torch.equal(a_ids, b_ids) and torch.equal(a_mask, b_mask)


def _seen(student, teacher, ids, mask, config):
    """The token ids the teacher is fed, batch by batch, during one distillation run."""
    seen = []
    handle = teacher.encoder.embeddings.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((kwargs.get("input_ids", args[0] if args else None)).clone()),
        with_kwargs=True)  # fmt: skip
    try:
        info = distill_encoder(student, teacher, ids, mask, config)
    finally:
        handle.remove()
    return seen, info


def test_a_continued_run_draws_the_batches_a_single_longer_run_draws_next(teacher):
    ids, mask = _texts()
    kw = {"cpu_seconds": None, "batch_size": 8, "lr": 1e-3, "seed": 2}
    single, _ = _seen(copy.deepcopy(teacher), teacher, ids, mask, EncoderKDConfig(steps=7, **kw))
    first_student = copy.deepcopy(teacher)
    first, info = _seen(first_student, teacher, ids, mask, EncoderKDConfig(steps=3, **kw))
    second, info2 = _seen(first_student, teacher, ids, mask,
                          EncoderKDConfig(steps=4, skip_batches=info["steps"], **kw))  # fmt: skip
    assert len(single) == 7 and info2["skip_batches"] == 3
    for a, b in zip(single, first + second, strict=True):
        assert torch.equal(a, b)
    repeat, _ = _seen(copy.deepcopy(teacher), teacher, ids, mask, EncoderKDConfig(steps=4, **kw))
    assert not all(torch.equal(a, b) for a, b in zip(repeat, second, strict=True))  # without the skip: old batches


def test_layer_weights_weigh_each_student_layer_hidden_term():
    mask = torch.ones(2, 3)
    t = [torch.randn(2, 3, 4) for _ in range(3)]
    s = [t[0], 2 * t[1], 3 * t[2]]  # relative MSE 0, 1 and 4; every pooled direction unchanged
    loss, emb = student_mod._loss(s, t, (0, 1, 2), mask, 0.5, (1.0, 0.0, 3.0))
    assert abs(emb) < 1e-6 and abs(float(loss) - 0.5 * (0 + 3 * 4) / 4) < 1e-5
    last, _ = student_mod._loss(s, t, (0, 1, 2), mask, 1.0, (0.0, 0.0, 1.0))
    assert abs(float(last) - 4.0) < 1e-5
    equal, _ = student_mod._loss(s, t, (0, 1, 2), mask, 1.0, (2.0, 2.0, 2.0))
    default, _ = student_mod._loss(s, t, (0, 1, 2), mask, 1.0)
    assert abs(float(equal) - 5 / 3) < 1e-5 and abs(float(default) - 5 / 3) < 1e-5


def test_a_distillation_run_weighs_its_hidden_terms_with_the_configured_layer_weights(teacher, monkeypatch):
    from deepslim.compress.tokens import drop_layers_

    ids, mask = _texts()
    seen, original = [], student_mod._loss

    def spy(s, t, mapping, b_mask, hidden_weight, layer_weights=None):
        loss, emb = original(s, t, mapping, b_mask, hidden_weight, layer_weights)
        seen.append((float(loss), float(original(s, t, mapping, b_mask, hidden_weight, (0.0, 1.0))[0])))
        return loss, emb

    monkeypatch.setattr(student_mod, "_loss", spy)
    student = drop_layers_(copy.deepcopy(teacher), [0, 2])
    distill_encoder(student, teacher, ids, mask, EncoderKDConfig(cpu_seconds=None, steps=2, batch_size=8,
                                                                 layer_weights=(0, 1)))  # fmt: skip
    assert len(seen) == 2 and all(abs(a - b) < 1e-5 * b for a, b in seen)  # the loss trained on: the last layer's


def test_bad_layer_weights_and_skips_are_refused(teacher):
    ids, mask = _texts(8)
    inf, nan = float("inf"), float("nan")
    for bad in ((-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (inf, 1.0, 1.0), (nan, 1.0, 1.0), 3, ("a",), "111", (True, 1)):
        with pytest.raises(ConfigError, match="layer_weights"):
            EncoderKDConfig(steps=1, layer_weights=bad)
    for bad in (-1, 1.5, True, "3", None):  # 1.5 would skip two batches: a silently different stream
        with pytest.raises(ConfigError, match="skip_batches"):
            EncoderKDConfig(steps=1, skip_batches=bad)
    with pytest.raises(ConfigError, match="one weight per student layer"):
        distill_encoder(copy.deepcopy(teacher), teacher, ids, mask, EncoderKDConfig(steps=1, layer_weights=(1, 1)))
    back = EncoderKDConfig.from_dict(EncoderKDConfig(steps=2, layer_weights=[0, 1, 2], skip_batches=5).to_dict())
    assert back.layer_weights == (0.0, 1.0, 2.0) and back.skip_batches == 5
