"""The planner's saved-for-backward rules for division, embedding lookups and ``where`` against what autograd
itself saves (saved_tensors_hooks, through measure_saved_bytes), in every training regime. The zoo models of
test_training_profile.py use none of these operators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepslim.analysis.training import measure_saved_bytes, training_profile


class _Divide(nn.Module):
    """Tensor / tensor where either side may need a gradient, tensor / number, and an in-place division."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) / (self.b(x).abs() + 1)
        frozen = x / (x.abs() + 2)  # no operand needs a gradient: nothing saved
        z = self.c(y + frozen) / 3
        return z.div_(torch.full((3,), 2.0)) / (x[:, :3].abs() + 1)


class _Where(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, self.a(x), self.b(x)).sum(dim=1, keepdim=True)


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 8), nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids)).mean(dim=1)


_CASES = {"divide": (_Divide, lambda: torch.randn(3, 6)), "where": (_Where, lambda: torch.randn(3, 6)),
          "embedding": (_Embed, lambda: torch.randint(0, 20, (3, 5)))}  # fmt: skip


@pytest.mark.parametrize("regime", ["all", "none", "bias", "last", "sparse:bias:1"])
@pytest.mark.parametrize("case", list(_CASES))
def test_planned_saved_bytes_of_division_where_and_embedding_equal_autograds(case: str, regime: str) -> None:
    torch.manual_seed(0)
    cls, make = _CASES[case]
    model, x = cls(), make()
    for batch in (2, 5):
        planned = training_profile(model, x, trainable=regime, batch_size=batch)
        assert planned.unknown_ops == ()
        assert planned.saved_bytes == measure_saved_bytes(model, x, trainable=regime, batch_size=batch), batch


def test_an_embedding_with_a_trainable_table_saves_its_indices_and_a_frozen_one_nothing() -> None:
    torch.manual_seed(0)
    model, ids = _Embed(), torch.randint(0, 20, (4, 5))
    every = training_profile(model, ids, trainable="all").saved_bytes
    head_only = training_profile(model, ids, trainable="last").saved_bytes
    assert every - head_only == ids.numel() * 8  # the int64 indices: 8 bytes each
