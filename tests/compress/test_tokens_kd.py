"""Token-level distillation of a merging encoder (``deepslim.train.token_kd``): the members that a reduced token
stands for are merged like the states, so their targets pool to the teacher's embedding; an unreduced student has
no token loss; a short run lowers the loss; bad students are refused."""

import copy
import re
import time

import pytest
import torch
import torch.nn.functional as F

from deepslim.compress.tokens import MergeTokensConfig, PruneTokensConfig, merge_tokens_, prune_tokens_
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.train.student import EncoderKDConfig
from deepslim.train.token_kd import distill_tokens, token_targets_loss
from tests._autocast import autocast_seen
from tests.compress._minilm import minilm_batch


@pytest.fixture(scope="module")
def minilm():
    texts = ["A man plays a guitar on a busy street corner while the crowd listens.", "Birds sing at dawn.",
             "The river flooded the fields after heavy rain last night, and the farmers lost their crops."]  # fmt: skip
    return minilm_batch(texts, seq_len=24)


def _teacher_states(model, ids, mask):
    with torch.no_grad():
        return tuple(model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:])


def _traced(model, ids, mask):
    model.reduction.trace = True
    with torch.no_grad():
        emb = model(ids, mask)
    traced, model.reduction.trace = model.reduction.traced, False
    return emb, traced


def test_members_are_shares_of_real_input_tokens_and_their_targets_pool_to_the_teachers_embedding(minilm):
    teacher, ids, mask = minilm
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=(4, 3, 2, 2, 1, 1), metric="keys_states"))
    emb, traced = _traced(student, ids, mask)
    assert torch.allclose(emb, student(ids, mask), atol=1e-6)  # tracing changes nothing computed
    assert [s.shape[1] for s, _, _ in traced] == [20, 17, 15, 13, 12, 11]
    t_states = _teacher_states(teacher, ids, mask)
    for (_, size, members), t in zip(traced, t_states, strict=True):
        real = size > 0
        # each real token's members: shares >= 0 of real input tokens only, summing to 1 ...
        assert (members >= -1e-6).all() and torch.allclose(members.sum(-1)[real], torch.ones(int(real.sum())))
        assert (members[real] * (mask == 0).to(members.dtype)[:, None, :].expand_as(members)[real]).abs().max() < 1e-6
        # ... with their sizes adding up to the real token count, so the size-weighted targets pool to the teacher
        counted = (members * size.unsqueeze(-1)).sum(1)  # (B, T): how much of each input token is present
        assert torch.allclose(counted, mask.to(counted.dtype), atol=1e-5)
        pooled = ((members @ t) * size.unsqueeze(-1)).sum(1) / size.sum(1, keepdim=True)
        want = (t * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(pooled, want, atol=1e-5)


def test_an_unreduced_student_has_no_token_loss_and_a_merged_one_has_some(minilm):
    teacher, ids, mask = minilm
    t_states = _teacher_states(teacher, ids, mask)
    same = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=0))
    assert float(token_targets_loss(_traced(same, ids, mask)[1], t_states)) < 1e-10
    merged = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=3, metric="keys_states"))
    traced = _traced(merged, ids, mask)[1]
    loss = float(token_targets_loss(traced, t_states))
    assert loss > 1e-4
    # a layer weight of 0 leaves that layer out: the last layer's term alone
    last = float(token_targets_loss(traced, t_states, (0, 0, 0, 0, 0, 1)))
    _, size, members = traced[-1]
    target = members @ t_states[-1]
    want = float(((traced[-1][0] - target) ** 2 * size[..., None]).sum() / (target**2 * size[..., None]).sum())
    assert abs(last - want) < 1e-6 * max(1.0, want)
    with pytest.raises(ConfigError, match="traced 6 layers"):
        token_targets_loss(traced, t_states[:5])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_short_token_distillation_brings_a_merged_and_pruned_student_closer_to_the_teacher(minilm, precision):
    """Also under bf16 autocast (``precision="bf16"``): the weights stay float32 and the run still learns."""
    teacher, ids, mask = minilm
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=(3, 3, 2, 2, 2, 1), metric="keys_states"))
    student = prune_tokens_(student, PruneTokensConfig(keep_ratio=(1.0, 1.0, 0.95, 1.0, 1.0, 1.0)))
    with torch.no_grad():
        ref, before = teacher(ids, mask), student(ids, mask)
    config = EncoderKDConfig(steps=6, lr=1e-5, batch_size=3, cpu_seconds=None, warmup=0.0, precision=precision)
    with autocast_seen(student=student.encoder.embeddings, teacher=teacher.encoder.embeddings) as seen:
        info = distill_tokens(student, teacher, ids, mask, config)
    assert seen == {"student": [precision == "bf16"] * 6, "teacher": [precision == "bf16"] * 6}, seen
    with torch.no_grad():
        after = student(ids, mask)
    assert info["steps"] == 6 and not student.training and student.reduction.trace is False
    assert info["last_token_loss"] < info["first_token_loss"]
    assert float(F.cosine_similarity(after, ref).mean()) > float(F.cosine_similarity(before, ref).mean())
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_students_without_token_reduction_or_of_another_depth_are_refused(minilm):
    teacher, ids, mask = minilm
    kd = EncoderKDConfig(steps=1, cpu_seconds=None)
    with pytest.raises(UnsupportedModelError, match="token merging or pruning"):
        distill_tokens(copy.deepcopy(teacher), teacher, ids, mask, kd)
    merged = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=2))
    with pytest.raises(UnsupportedModelError, match="without token reduction"):
        distill_tokens(merged, merged, ids, mask, kd)
    from deepslim.compress.tokens import drop_layers_

    shallow = drop_layers_(copy.deepcopy(merged), keep=[0, 2, 4])
    with pytest.raises(ConfigError, match="3 layers and the teacher 6"):
        distill_tokens(shallow, teacher, ids, mask, kd)


def test_layer_weights_of_another_length_and_settings_distill_tokens_does_not_use_are_refused_by_name(minilm):
    teacher, ids, mask = minilm
    merged = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=2))
    with pytest.raises(ConfigError, match="layer_weights has 2 weights, the student 6 layers"):
        distill_tokens(merged, teacher, ids, mask, EncoderKDConfig(steps=1, cpu_seconds=None, layer_weights=(1, 1)))
    for kw, name in ((dict(relation_weight=1.0, relation_heads=4), "relation_weight=1.0, relation_heads=4"),
                     (dict(layer_map=(0, 1, 2, 3, 4, 5)), "layer_map=(0, 1, 2, 3, 4, 5)")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(f"does not use {name}")) as refused:
            distill_tokens(merged, teacher, ids, mask, EncoderKDConfig(steps=1, cpu_seconds=None, **kw))
        assert "\n" not in str(refused.value)
    assert merged.reduction.trace is False  # refused before any training step


def test_a_monitor_sees_the_student_in_eval_mode_untraced_and_is_called_at_the_start_and_end(minilm):
    teacher, ids, mask = minilm
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=2, metric="keys_states"))
    with torch.no_grad():
        ref = teacher(ids, mask)
    seen = []

    def watch(model):
        seen.append((model.training, model.reduction.trace, torch.is_grad_enabled()))
        return {"cos": float(F.cosine_similarity(model(ids, mask), ref).mean())}

    kd = EncoderKDConfig(steps=4, lr=1e-5, batch_size=3, cpu_seconds=None, warmup=0.0)
    info = distill_tokens(student, teacher, ids, mask, kd, monitor=watch, monitor_every=1e-9)
    # every step passes 1e-9 CPU seconds: a call before the first step and after each step, none twice
    assert [m["step"] for m in info["monitored"]] == [0, 1, 2, 3, 4]
    assert seen == [(False, False, False)] * 5 and not student.training and student.reduction.trace is False
    with torch.no_grad():
        assert info["monitored"][-1]["cos"] == pytest.approx(float(F.cosine_similarity(student(ids, mask), ref).mean()))
    assert "monitored" not in distill_tokens(student, teacher, ids, mask, kd)
    with pytest.raises(ConfigError, match="monitor_every is the CPU seconds between monitor calls"):
        distill_tokens(student, teacher, ids, mask, kd, monitor=watch, monitor_every=0)


def test_a_monitors_cpu_time_is_not_charged_to_the_cpu_budget(minilm):
    teacher, ids, mask = minilm
    student = merge_tokens_(copy.deepcopy(teacher), MergeTokensConfig(r=2, metric="keys_states"))
    burnt = []

    def watch(model):  # burns 0.6 CPU seconds a call: the first call, before any step, alone exceeds the budget
        start = time.process_time()
        while time.process_time() - start < 0.6:
            pass
        burnt.append(time.process_time() - start)
        return {}

    kd = EncoderKDConfig(steps=None, cpu_seconds=0.5, lr=1e-5, batch_size=3, warmup=0.0)
    start = time.process_time()
    info = distill_tokens(student, teacher, ids, mask, kd, monitor=watch, monitor_every=0.25)
    total = time.process_time() - start
    # the budget went to training: steps were taken, and this process' CPU time less the monitor's reaches it ...
    assert info["steps"] >= 1 and total - sum(burnt) >= 0.5
    assert len(burnt) == len(info["monitored"]) >= 2  # at the start and at the end
    # ... and both are reported, each apart from the other (rounded to 0.1 s)
    assert info["cpu_s"] >= 0.45 and info["monitor_cpu_s"] >= sum(burnt) - 0.05
    assert info["cpu_s"] + info["monitor_cpu_s"] <= total + 0.1
