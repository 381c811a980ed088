"""An addition joins two activations only: a quantized activation plus a constant buffer is not a join and gets no
point of its own, as the fx placer defines joins."""

import torch
from torch import nn

import deepslim as ds


class Offset(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.register_buffer("offset", torch.linspace(-1, 1, 8))

    def forward(self, x):
        return self.head(torch.relu(self.fc(x) + self.offset))


def test_an_activation_plus_a_constant_buffer_gets_no_join_point():
    torch.manual_seed(0)
    model, x = Offset().eval(), torch.randn(16, 4)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[x])
    assert len(model.deepslim_points) == 1  # no point on the sum: a join needs two activations
