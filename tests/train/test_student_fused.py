"""The distillations' AdamW fused into one kernel (``EncoderKDConfig(fused=True)``, the default): every caller asks
torch for it (and ``fused=False`` for the per-tensor loop of the runs before), and the fused update is the same
algorithm as the loop — an oracle run side by side, step by step."""

import copy

import pytest
import torch

from tests.train._bert import bert_teacher, random_texts

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
student_mod = pytest.importorskip("deepslim.train.student")
token_kd = pytest.importorskip("deepslim.train.token_kd")
thresholds = pytest.importorskip("deepslim.train.token_thresholds")
tokens = pytest.importorskip("deepslim.compress.tokens")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 2)


class _Recorder:
    """Stands in for torch.optim.AdamW: records the ``fused`` each construction asked for, then builds the real one."""

    def __init__(self, real):
        self.real, self.fused = real, []

    def __call__(self, params, **kwargs):
        self.fused.append(kwargs.get("fused"))
        return self.real(params, **kwargs)


def _runs(teacher, config):
    """Each distillation entry point once, briefly, with ``config``'s optimizer setting."""
    ids, mask = random_texts(16, 12, 5, seed=1)
    student_mod.distill_encoder(copy.deepcopy(teacher), teacher, ids, mask, config)
    merged = tokens.merge_tokens_(copy.deepcopy(teacher), tokens.MergeTokensConfig(r=1))
    token_kd.distill_tokens(merged, teacher, ids, mask, config)
    thresholds.learn_token_thresholds(copy.deepcopy(teacher), teacher, ids, mask,
                                      thresholds.TokenThresholdConfig(keep_target=0.5), config)  # fmt: skip


@pytest.mark.parametrize("fused", [True, False])
def test_every_distillation_builds_its_adamw_fused_unless_told_not_to(teacher, monkeypatch, fused):
    recorder = _Recorder(torch.optim.AdamW)
    monkeypatch.setattr(torch.optim, "AdamW", recorder)
    config = student_mod.EncoderKDConfig(lr=1e-3, cpu_seconds=None, steps=2, batch_size=8, fused=fused)
    _runs(teacher, config)
    assert recorder.fused == ([True] * 3 if fused else [None] * 3), recorder.fused


def test_the_default_is_fused_and_a_device_without_the_kernel_gets_the_loop():
    assert student_mod.EncoderKDConfig().fused is True
    for bad in ("false", 0, None):
        with pytest.raises(student_mod.ConfigError, match="fused must be True or False"):
            student_mod.EncoderKDConfig(fused=bad)
    config = student_mod.EncoderKDConfig(lr=2e-3, weight_decay=0.05)
    cpu = torch.nn.Parameter(torch.ones(3))
    opt = student_mod.adamw([cpu], config)
    assert opt.defaults["fused"] is True and opt.defaults["lr"] == 2e-3 and opt.defaults["weight_decay"] == 0.05
    meta = torch.nn.Parameter(torch.ones(3, device="meta"))
    assert not student_mod.adamw([meta], config).defaults["fused"]
    groups = [{"params": [cpu], "lr": 0.5, "weight_decay": 0.0}, {"params": [torch.nn.Parameter(torch.ones(2))]}]
    opt = student_mod.adamw(groups, config)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.5, 0.0), (2e-3, 0.05)]
    assert opt.defaults["fused"] is True


def _largest_change(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_the_fused_update_follows_the_loops_weights_and_losses(teacher):
    """Oracle: the same student distilled 6 steps with the per-tensor loop and with the fused kernel (float32 passes,
    same batches). Each step moves a weight by up to ~lr; the two runs stay within 1 % of that after six steps (a
    different algorithm — no weight decay, no bias correction, another epsilon — would not)."""
    ids, mask = random_texts(48, 12, 5, seed=3)
    students, infos = [], []
    for fused in (False, True):
        student = copy.deepcopy(teacher)
        config = student_mod.EncoderKDConfig(lr=1e-3, weight_decay=0.1, cpu_seconds=None, steps=6, batch_size=8,
                                             fused=fused)  # fmt: skip
        infos.append(student_mod.distill_encoder(student, teacher, ids, mask, config))
        students.append(student)
    moved, apart = _largest_change(students[0], teacher), _largest_change(students[0], students[1])
    assert moved > 1e-3 and apart < 0.01 * moved, (moved, apart)
    assert infos[0]["first_loss"] == pytest.approx(infos[1]["first_loss"], rel=1e-6)
    assert infos[0]["last_loss"] == pytest.approx(infos[1]["last_loss"], rel=1e-3)
