"""MiniLM's relation transfer in encoder distillation: the loss is zero for identical projections, equals the KL
divergence written out by hand, ignores padded tokens, and a distillation run with it closes the gap."""

import copy
import math

import pytest
import torch

from deepslim.errors import ConfigError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
student_mod = pytest.importorskip("deepslim.train.student")
from tests.train.test_student import _cosine, _texts, teacher  # noqa: E402, F401  (the shared 4-layer teacher)


def _qkv(seed, b=2, t=5, h=8):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, t, h, generator=g) for k in ("query", "key", "value")}


def _kl_by_hand(s, t, mask, heads):
    """KL(teacher || student) of softmax(x y^T / sqrt(d)) per head, keys and queries restricted to real tokens."""
    total = 0.0
    for a, b in (("query", "key"), ("value", "value")):
        acc, n = 0.0, 0
        for i in range(mask.shape[0]):
            real = mask[i].bool()
            for hd in range(heads):
                d = s[a].shape[-1] // heads
                sl = slice(hd * d, (hd + 1) * d)
                pt = torch.softmax(t[a][i, real, sl] @ t[b][i, real, sl].T / math.sqrt(d), -1)
                ps = torch.softmax(s[a][i, real, sl] @ s[b][i, real, sl].T / math.sqrt(d), -1)
                acc += float((pt * (pt.log() - ps.log())).sum())
                n += int(real.sum())
        total += acc / n
    return total


def test_the_relation_loss_is_zero_for_identical_projections_and_the_kl_by_hand_otherwise():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    t, s = _qkv(0), _qkv(1)
    assert abs(float(student_mod.relation_loss(t, t, mask, 2, 2))) < 1e-6
    got = float(student_mod.relation_loss(s, t, mask, 2, 2))
    assert got > 0.01 and abs(got - _kl_by_hand(s, t, mask, 2)) < 1e-4 * max(1.0, got)


def test_padded_tokens_do_not_change_the_relation_loss():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    t, s = _qkv(0), _qkv(1)
    before = float(student_mod.relation_loss(s, t, mask, 2, 2))
    for k in s:
        s[k][1, 3:] = 100.0  # whatever sits in the padding
    assert abs(float(student_mod.relation_loss(s, t, mask, 2, 2)) - before) < 1e-5
    with pytest.raises(ConfigError, match="as many heads"):
        student_mod.relation_loss(s, t, mask, 4, 2)


def test_a_layer_dropped_student_distils_with_relation_transfer(teacher, monkeypatch):  # noqa: F811
    from deepslim.compress.tokens import drop_layers_

    ids, mask = _texts()
    student = drop_layers_(copy.deepcopy(teacher), [0, 2])
    before = _cosine(student, teacher, ids, mask)
    losses = []  # the relation terms really enter the training: one positive value per step
    real = student_mod.relation_loss

    def spy(*args):
        value = real(*args)
        losses.append(float(value))
        return value

    monkeypatch.setattr(student_mod, "relation_loss", spy)
    config = student_mod.EncoderKDConfig(lr=3e-3, cpu_seconds=None, steps=30, batch_size=16, relation_weight=1.0)
    student_mod.distill_encoder(student, teacher, ids, mask, config)
    assert len(losses) >= 30 and min(losses) > 0
    assert _cosine(student, teacher, ids, mask) > before + 0.3 * (1 - before)
    last = student.encoder.encoder.layer[-1].attention.self.query
    assert not last._forward_hooks  # the capture hooks are gone after the run
    with pytest.raises(ConfigError, match="relation_weight"):
        student_mod.EncoderKDConfig(steps=1, relation_weight=-1.0)
