"""Learning token thresholds logs its progress every 10 steps: the step, CPU seconds, the embedding loss, the share
of tokens kept and the thresholds, in that order (what a user watches while a long run learns)."""

import copy
import logging
import re

import pytest

from deepslim.train import TokenThresholdConfig, learn_token_thresholds
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
