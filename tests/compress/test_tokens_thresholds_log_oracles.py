"""Learning token thresholds logs its progress every 10 steps: the step, CPU seconds, the embedding loss, the share
of tokens kept and the thresholds, in that order (what a user watches while a long run learns). At every step the
soft mask's temperature narrows linearly to a fifth, the thresholds' learning rate follows a cosine from the start and
the weights' rate warms up then follows it."""

import copy
import logging
import math
import re

import pytest
import torch

from deepslim.compress.tokens import encoders
from deepslim.train import TokenThresholdConfig, learn_token_thresholds, token_thresholds
from deepslim.train.student import EncoderKDConfig
from tests.compress._minilm import minilm_batch


@pytest.fixture(scope="module")
def minilm():
    return minilm_batch(["Birds sing at dawn.", "The river flooded the fields after heavy rain last night."],
                        seq_len=16)  # fmt: skip


def test_every_tenth_step_logs_step_cpu_loss_kept_share_and_thresholds(minilm, caplog):
    model, ids, mask = minilm
    student = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="deepslim.train.token_thresholds"):
        result = learn_token_thresholds(student, model, ids, mask,
                                        TokenThresholdConfig(keep_target=0.5, init=0.0, train_weights=False),
                                        EncoderKDConfig(cpu_seconds=None, steps=10, batch_size=2))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "deepslim.train.token_thresholds"]
    assert result["steps"] == 10 and len(lines) == 1
    found = re.fullmatch(r"step 10  cpu \d+s  embedding loss (\d\.\d{4})  kept (\d\.\d{3})  thresholds \[(.*)\]",
                         lines[0])  # fmt: skip
    assert found is not None, lines[0]
    assert len(found.group(3).split(", ")) == 6  # one threshold per layer
    assert 0.0 < float(found.group(2)) <= 1.0


def test_temperature_and_learning_rates_follow_their_schedules_step_by_step(minilm, monkeypatch):
    model, ids, mask = minilm
    temperatures, rates = [], []

    class Recording(encoders.SoftThresholds):
        def __setattr__(self, name, value):
            if name == "temperature":
                temperatures.append(value)
            super().__setattr__(name, value)

    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        rates.append([g["lr"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(token_thresholds, "SoftThresholds", Recording)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    config = TokenThresholdConfig(keep_target=0.5, init=0.0, temperature=0.5, threshold_lr=0.02, train_weights=True)
    kd = EncoderKDConfig(cpu_seconds=None, steps=4, batch_size=2, lr=1e-3, warmup=0.5)
    result = learn_token_thresholds(copy.deepcopy(model), model, ids, mask, config, kd)
    assert result["steps"] == 4
    fracs = [0.0, 0.25, 0.5, 0.75]
    assert temperatures[0] == 0.5  # the constructor's, then one per step
    assert temperatures[1:] == pytest.approx([0.5 * (1 - 0.8 * f) for f in fracs], abs=1e-12)
    cosine = [0.5 * (1 + math.cos(math.pi * f)) for f in fracs]
    warm = [f / 0.5 if f < 0.5 else c for f, c in zip(fracs, cosine, strict=True)]
    assert [r[0] for r in rates] == pytest.approx([0.02 * c for c in cosine], abs=1e-12)  # thresholds
    assert [r[1] for r in rates] == pytest.approx([1e-3 * w for w in warm], abs=1e-12)  # weights
