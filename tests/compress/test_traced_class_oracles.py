"""Static int8 of a model torch.fx traces swaps in a subclass that runs the traced forward with its activation points:
the subclass keeps the model's name and module (what pickling, logs and ``type(model)`` checks read) and records the
class it was traced from."""

from __future__ import annotations

import torch
from torch import nn

import deepslim as ds


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((torch.relu(self.c(x)) + 1.0).flatten(1))


def test_the_traced_subclass_keeps_the_models_name_and_module():
    torch.manual_seed(0)
    model = _Net()
    g = torch.Generator().manual_seed(0)
    ds.quantize_(model, ds.LinearQuantConfig(min_cosine=0), calib_data=[torch.randn(4, 3, 4, 4, generator=g)])
    cls = type(model)
    assert cls is not _Net and issubclass(cls, _Net)
    assert (cls.__name__, cls.__module__) == ("_Net", __name__)
    assert cls.deepslim_traced_from is _Net
