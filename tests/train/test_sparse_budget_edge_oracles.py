"""The sparse-update planner's refusal sits exactly at the smallest update's peak: one byte below it is refused
naming that figure, the figure itself is planned (a survivor of the session-8 mutation sample turned the check's
sum into a difference)."""

import re

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from deepslim.errors import ConfigError
from deepslim.models import load_model
from deepslim.train.ondevice import plan_sparse_update


def test_the_budget_refusal_is_exact_at_the_smallest_updates_peak() -> None:
    torch.manual_seed(0)
    model = load_model("lenet5")
    x = torch.randn(4, 1, 28, 28)
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(2)]
    with pytest.raises(ConfigError, match=r"needs \d+ bytes") as refused:
        plan_sparse_update(model, batches, F.cross_entropy, budget_bytes=0, example_batch=x)
    needed = int(re.search(r"needs (\d+) bytes", str(refused.value)).group(1))
    below = f"a memory budget of {needed - 1} bytes cannot be met.* needs {needed} bytes"
    with pytest.raises(ConfigError, match=below):
        plan_sparse_update(model, batches, F.cross_entropy, budget_bytes=needed - 1, example_batch=x)
    plan = plan_sparse_update(model, batches, F.cross_entropy, budget_bytes=needed, example_batch=x)
    assert plan.trainable and plan.peak_bytes <= needed
