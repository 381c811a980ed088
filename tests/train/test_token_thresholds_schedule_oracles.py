"""Learning token thresholds: at every step the soft mask's temperature narrows linearly from the configured one to
a fifth of it, the thresholds' learning rate follows a cosine from the start (no warm-up) and the weights' rate warms
up then follows the same cosine — recorded step by step from the optimizer and the soft thresholds themselves."""

import copy
import math

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
