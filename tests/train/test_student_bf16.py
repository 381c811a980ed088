"""bf16 distillation (``EncoderKDConfig(precision="bf16")``) beyond the basic run: the relation losses are computed in
float32 whatever the projections' dtype (an oracle on float32 copies), and a token-merging student's pass in
``distill_encoder`` runs under autocast like the teacher's."""

import copy

import pytest
import torch

from tests._autocast import autocast_seen
from tests.train._bert import bert_teacher, random_texts

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
student_mod = pytest.importorskip("deepslim.train.student")
tokens = pytest.importorskip("deepslim.compress.tokens")


def _projections(batch: int, length: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """Query, key and value projections (B, T, width) as autocast leaves them: bfloat16, with a wide spread (scores
    of several units, where bfloat16's 8-bit mantissa rounds the products visibly)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: (3 * torch.randn(batch, length, width, generator=gen)).bfloat16()
            for name in ("query", "key", "value")}  # fmt: skip


def _float(projections: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.float() for name, p in projections.items()}


def test_relation_losses_on_bf16_projections_equal_the_losses_on_their_float32_copies():
    """The oracle: the same projections as float32 copies. Relations computed in bfloat16 instead (without
    ``_log_relation``'s cast) differ by ~1e-2 relative here; the float32 ones agree to rounding."""
    mask = torch.ones(3, 9)
    mask[1, 6:] = 0  # padded keys are masked out and padded queries not counted, in both dtypes
    s, t = _projections(3, 9, 16, seed=1), _projections(3, 9, 24, seed=2)
    got = float(student_mod.relation_loss(s, t, mask, 4, 4))
    want = float(student_mod.relation_loss(_float(s), _float(t), mask, 4, 4))
    assert want > 0.1 and abs(got - want) <= 1e-6 * want, (got, want)
    s_layers, t_layers = [s, _projections(3, 9, 16, seed=3)], [t, _projections(3, 9, 24, seed=4)]
    got = float(student_mod.relation_heads_loss(s_layers, t_layers, mask, 4))
    want = float(student_mod.relation_heads_loss([_float(p) for p in s_layers], [_float(p) for p in t_layers], mask, 4))
    assert want > 0.1 and abs(got - want) <= 1e-6 * want, (got, want)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_token_merging_students_pass_in_distill_encoder_runs_under_autocast_with_bf16(teacher, precision):
    """The reduced branch of ``distill_encoder`` (embeddings only, full-length batches) runs the student under the
    same autocast as the teacher: one autocast pass each per step with bf16, none with fp32."""
    ids, mask = random_texts(24, 16, 6, seed=2)
    student = tokens.merge_tokens_(copy.deepcopy(teacher), tokens.MergeTokensConfig(r=2, metric="keys_states"))
    config = student_mod.EncoderKDConfig(lr=1e-3, cpu_seconds=None, steps=4, batch_size=8, precision=precision)
    with autocast_seen(student=student.encoder.embeddings, teacher=teacher.encoder.embeddings) as seen:
        info = student_mod.distill_encoder(student, teacher, ids, mask, config)
    assert seen == {"student": [precision == "bf16"] * 4, "teacher": [precision == "bf16"] * 4}, seen
    assert info["steps"] == 4 and info["first_loss"] > 0 and info["last_loss"] == info["last_loss"]  # not NaN
    assert all(p.dtype == torch.float32 for p in student.parameters())
