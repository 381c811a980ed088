"""Encoder distillation under a budget (deepslim.train.student): the layer map, length-bucketed batches, the loss
(zero for identical models), recovery of a damaged or layer-dropped student, token-reduced students, bad input."""

import copy

import pytest
import torch

from deepslim.errors import ConfigError, UnsupportedModelError
from tests._autocast import autocast_seen
from tests.train._bert import bert_teacher, random_texts

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")
student_mod = pytest.importorskip("deepslim.train.student")
EncoderKDConfig, distill_encoder = student_mod.EncoderKDConfig, student_mod.distill_encoder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 4)


def _texts(n=64, width=16, seed=0):
    return random_texts(n, width, 4, seed)


def _cosine(a, b, ids, mask):
    with torch.no_grad():
        return torch.nn.functional.cosine_similarity(a(ids, mask), b(ids, mask), dim=-1).mean().item()


def test_the_layer_map_spaces_teacher_layers_evenly_and_ends_at_the_last():
    assert student_mod.layer_map(3, 6) == (1, 3, 5)
    assert student_mod.layer_map(6, 6) == (0, 1, 2, 3, 4, 5)
    assert student_mod.layer_map(2, 6) == (2, 5)
    assert student_mod.layer_map(1, 4) == (3,)


def test_length_batches_cut_each_batch_to_its_longest_text_and_cover_every_text():
    ids, mask = _texts(50)
    batches = student_mod.length_batches(ids, mask, 8, seed=1)
    seen = []
    for _ in range(7):  # ceil(50 / 8) batches make one pass
        b_ids, b_mask = next(batches)
        assert b_ids.shape == b_mask.shape and b_ids.shape[1] == int(b_mask.sum(1).max())
        seen += [tuple(row[row != 0].tolist()) for row in b_ids]
    assert sorted(seen) == sorted(tuple(row[row != 0].tolist()) for row in ids)
    full = next(student_mod.length_batches(ids, mask, 8, trim=False))
    assert full[0].shape[1] == 16


def test_the_loss_is_zero_for_identical_states_and_relative_mse_otherwise():
    mask = torch.ones(2, 3)
    t = [torch.randn(2, 3, 4) for _ in range(2)]
    loss, emb = student_mod._loss(t, t, (0, 1), mask, 1.0)
    assert abs(float(loss)) < 1e-6 and abs(emb) < 1e-6
    s = [t[0], 2 * t[1]]  # relative MSE of 2t against t is 1; the pooled direction is unchanged
    loss, emb = student_mod._loss(s, t, (0, 1), mask, 1.0)
    assert abs(emb) < 1e-6 and abs(float(loss) - 0.5) < 1e-5


def _damaged(teacher):
    """A copy of the teacher with layer 2's parameters perturbed (seeded)."""
    student = copy.deepcopy(teacher)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.encoder.encoder.layer[2].parameters():
            p.add_(0.3 * torch.randn_like(p))
    return student


def test_distillation_recovers_a_damaged_student_within_its_step_budget(teacher):
    ids, mask = _texts()
    student = _damaged(teacher)
    before = _cosine(student, teacher, ids, mask)
    info = distill_encoder(student, teacher, ids, mask, EncoderKDConfig(lr=3e-3, cpu_seconds=None, steps=30,
                                                                          batch_size=16))  # fmt: skip
    assert info["steps"] == 30 and info["layer_map"] == [0, 1, 2, 3]
    assert _cosine(student, teacher, ids, mask) > before + 0.5 * (1 - before)  # half the gap closed, at least
    assert not student.training
    assert EncoderKDConfig(steps=1).dropout is False


def _hidden_gap(student, teacher, ids, mask, mapping):
    with torch.no_grad():
        s = student_mod._states(student.encoder, ids, mask)
        t = student_mod._states(teacher.encoder, ids, mask)
    return [float(((s[i] - t[j]) ** 2).sum() / (t[j] ** 2).sum()) for i, j in enumerate(mapping)]


def test_a_layer_dropped_student_learns_the_mapped_teacher_layers(teacher):
    from deepslim.compress.tokens import drop_layers_

    ids, mask = _texts()
    student = drop_layers_(copy.deepcopy(teacher), [0, 2])
    before = _hidden_gap(student, teacher, ids, mask, (1, 3))
    info = distill_encoder(student, teacher, ids, mask, EncoderKDConfig(lr=3e-3, cpu_seconds=None, steps=30,
                                                                          batch_size=16))  # fmt: skip
    assert info["layer_map"] == [1, 3]
    after = _hidden_gap(student, teacher, ids, mask, (1, 3))
    assert all(a < 0.7 * b for a, b in zip(after, before, strict=True)), (before, after)


def test_a_token_merging_student_distils_on_full_length_batches(teacher):
    from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_

    ids, mask = _texts(16)  # one batch, padded: the merge counts need the full length (a trimmed batch would fail)
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=4))  # real tokens merge too
    info = distill_encoder(student, teacher, ids, mask, EncoderKDConfig(lr=1e-3, cpu_seconds=None, steps=25,
                                                                          batch_size=16))  # fmt: skip
    assert student.reduction is not None and info["steps"] == 25
    assert info["last_loss"] < 0.9 * info["first_loss"]  # the merged model fits the teacher better on its batch


@pytest.mark.parametrize("setting", [{"layer_map": (0, 1, 2, 3)}, {"layer_weights": (1, 1, 1, 1)},
                                     {"relation_weight": 1.0}, {"relation_weight": 1.0, "relation_heads": 2},
                                     {"hidden_weight": 2.0},
                                     {"hidden_weight": 2.0, "layer_map": (0, 1, 2, 3)}])  # fmt: skip
def test_a_token_merging_student_refuses_the_settings_it_would_ignore_by_name(teacher, setting):
    from deepslim.compress.tokens import MergeTokensConfig, merge_tokens_
    from deepslim.train.token_kd import distill_tokens

    ids, mask = _texts(8)
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=2))
    before = [p.detach().clone() for p in student.parameters()]
    config = EncoderKDConfig(steps=1, cpu_seconds=None, lr=1e-2, **setting)
    with pytest.raises(ConfigError, match="would ignore") as refused:
        distill_encoder(student, teacher, ids, mask, config)
    assert all(f"{name}=" in str(refused.value) for name in setting)  # every refused setting, by name
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))  # refused, not trained
    # the advice holds: distill_tokens is offered exactly when it honours every refused setting
    offered = "distill_tokens" in str(refused.value)
    assert offered == (set(setting) <= {"layer_weights", "hidden_weight"}), str(refused.value)
    if offered:
        assert distill_tokens(copy.deepcopy(student), teacher, ids, mask, config)["steps"] == 1
    else:
        assert "no trainer of a token-reducing student uses it" in str(refused.value)
        with pytest.raises(ConfigError, match="distill_tokens does not use"):
            distill_tokens(copy.deepcopy(student), teacher, ids, mask, config)
    # the embeddings-only setting it honours runs (hidden_weight 0, as the default 1.0 does above)
    info = distill_encoder(student, teacher, ids, mask, EncoderKDConfig(steps=1, cpu_seconds=None, hidden_weight=0.0))
    assert info["steps"] == 1


def test_bad_budgets_maps_and_models_are_refused(teacher):
    ids, mask = _texts(8)
    with pytest.raises(ConfigError, match="budget"):
        EncoderKDConfig(cpu_seconds=None)
    with pytest.raises(ConfigError, match="layer_map"):
        distill_encoder(copy.deepcopy(teacher), teacher, ids, mask, EncoderKDConfig(steps=1, layer_map=(0, 1)))
    with pytest.raises(UnsupportedModelError, match="SentenceEncoder"):
        distill_encoder(torch.nn.Linear(2, 2), teacher, ids, mask, EncoderKDConfig(steps=1))
    assert EncoderKDConfig.from_dict(EncoderKDConfig(steps=3, layer_map=[1, 3]).to_dict()).layer_map == (1, 3)


def test_bf16_distillation_keeps_float32_weights_and_recovers_like_fp32(teacher):
    """precision="bf16" runs the passes under CPU autocast: the student's weights stay float32, the loss is finite
    and the damaged layer recovers nearly as far as in float32 on the same batches (an oracle run beside it)."""
    ids, mask = _texts()
    damaged = _damaged(teacher)
    before = _cosine(damaged, teacher, ids, mask)
    after = {}
    for precision in ("fp32", "bf16"):
        student = copy.deepcopy(damaged)
        config = EncoderKDConfig(lr=3e-3, cpu_seconds=None, steps=30, batch_size=16, precision=precision,
                                 relation_weight=1.0)  # fmt: skip
        first = {"student": student.encoder.encoder.layer[0], "teacher": teacher.encoder.encoder.layer[0]}
        with autocast_seen(**first) as seen:
            info = distill_encoder(student, teacher, ids, mask, config)
        assert seen == {"student": [precision == "bf16"] * 30, "teacher": [precision == "bf16"] * 30}, seen
        assert info["steps"] == 30 and info["last_loss"] < info["first_loss"]
        assert all(p.dtype == torch.float32 for p in student.parameters())
        after[precision] = _cosine(student, teacher, ids, mask)
    gap = 1 - before
    assert after["fp32"] > before + 0.5 * gap and after["bf16"] > before + 0.4 * gap, (before, after)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'fp16'"):
        EncoderKDConfig(steps=1, precision="fp16")
    assert EncoderKDConfig.from_dict(EncoderKDConfig(steps=1, precision="bf16").to_dict()).precision == "bf16"
