"""MiniLMv2's relation transfer on every layer (``EncoderKDConfig(relation_heads=…)``): the loss is the KL divergence
of the query-query, key-key and value-value relations written out by hand, holds between projections of different
widths (a head-pruned student), refuses a relation-head count that does not divide a width, and a distillation of a
head-pruned student runs with it on every layer."""

import copy
import math

import pytest
import torch

from deepslim.errors import ConfigError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
student_mod = pytest.importorskip("deepslim.train.student")
from tests.train.test_student import _texts, teacher  # noqa: E402, F401  (the shared 4-layer teacher)


def _qkv(seed, width, b=2, t=5):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, t, width, generator=g) for k in ("query", "key", "value")}


def _kl_by_hand(s, t, mask, heads):
    """Mean over layers and the three projections of KL(teacher || student) of softmax(x x^T / sqrt(d)) per
    relation head, over the real query tokens (keys restricted to real tokens)."""
    total = 0.0
    for sl_, tl_ in zip(s, t, strict=True):
        for name in ("query", "key", "value"):
            acc, n = 0.0, 0
            for i in range(mask.shape[0]):
                real = mask[i].bool()
                for hd in range(heads):
                    ds_, dt = sl_[name].shape[-1] // heads, tl_[name].shape[-1] // heads
                    xs = sl_[name][i, real, hd * ds_ : (hd + 1) * ds_]
                    xt = tl_[name][i, real, hd * dt : (hd + 1) * dt]
                    pt = torch.softmax(xt @ xt.T / math.sqrt(dt), -1)
                    ps = torch.softmax(xs @ xs.T / math.sqrt(ds_), -1)
                    acc += float((pt * (pt.log() - ps.log())).sum())
                    n += int(real.sum())
            total += acc / n
    return total / (3 * len(s))


def test_relations_of_a_narrower_student_equal_the_kl_by_hand_and_vanish_for_identical_projections():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    teacher_layers, student_layers = [_qkv(0, 12), _qkv(1, 12)], [_qkv(2, 6), _qkv(3, 4)]  # two layers, pruned widths
    assert abs(float(student_mod.relation_heads_loss(teacher_layers, teacher_layers, mask, 2))) < 1e-6
    got = float(student_mod.relation_heads_loss(student_layers, teacher_layers, mask, 2))
    assert got > 0.01 and abs(got - _kl_by_hand(student_layers, teacher_layers, mask, 2)) < 1e-4 * max(1.0, got)
    for k in student_layers[1]:  # padding does not count
        student_layers[1][k][1, 3:] = 50.0
    assert abs(float(student_mod.relation_heads_loss(student_layers, teacher_layers, mask, 2)) - got) < 1e-5


def test_a_relation_head_count_that_does_not_divide_a_width_is_refused():
    mask = torch.ones(2, 5)
    with pytest.raises(ConfigError, match="relation_heads=4 must divide every layer's projection width"):
        student_mod.relation_heads_loss([_qkv(0, 6)], [_qkv(1, 12)], mask, 4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="relation_heads must be a whole number"):
            student_mod.EncoderKDConfig(steps=1, relation_heads=bad)


def test_a_head_pruned_student_distils_with_relations_on_every_layer(teacher, monkeypatch):  # noqa: F811
    from deepslim.compress.prune.heads import HeadPruneConfig, prune_heads_

    ids, mask = _texts()
    student = copy.deepcopy(teacher)
    prune_heads_(student, HeadPruneConfig(head_ratio=0.5, importance="magnitude"))
    layers = student.encoder.encoder.layer
    seen = []  # (layers, student widths, teacher widths) per call
    real = student_mod.relation_heads_loss

    def spy(s, t, m, heads):
        seen.append((len(s), [x["query"].shape[-1] for x in s], [x["query"].shape[-1] for x in t]))
        return real(s, t, m, heads)

    monkeypatch.setattr(student_mod, "relation_heads_loss", spy)
    config = student_mod.EncoderKDConfig(lr=1e-3, cpu_seconds=None, steps=3, batch_size=16, relation_weight=1.0,
                                         relation_heads=1)  # fmt: skip
    student_mod.distill_encoder(student, teacher, ids, mask, config)
    teacher_width = teacher.encoder.encoder.layer[0].attention.self.query.out_features
    widths = [layer.attention.self.query.out_features for layer in layers]
    assert len(seen) == 3 and seen[0] == (len(layers), widths, [teacher_width] * len(layers))
    assert all(w < teacher_width for w in widths)
    assert not any(layer.attention.self.query._forward_hooks for layer in layers)  # the capture hooks are gone


def test_relation_heads_without_a_relation_weight_is_refused_rather_than_ignored():
    with pytest.raises(ConfigError, match="relation_heads needs relation_weight > 0"):
        student_mod.EncoderKDConfig(steps=1, relation_heads=4)
    with pytest.raises(ConfigError, match="relation_heads=2, relation_weight=0.0"):
        student_mod.EncoderKDConfig(steps=1, relation_heads=2, relation_weight=0.0)
    assert student_mod.EncoderKDConfig(steps=1, relation_heads=4, relation_weight=0.5).relation_heads == 4
    assert student_mod.EncoderKDConfig(steps=1, relation_weight=0.5).relation_heads == 0  # the last layer's MiniLM
