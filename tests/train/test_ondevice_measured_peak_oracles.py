"""On-device fine-tuning reports the measured peak of the step it plans: the converted model training only what the
mode leaves trainable (bias-only here), not every parameter (whose gradients and Adam moments weigh far more)."""

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepslim.analysis.training import measure_peak_bytes
from deepslim.data._bundle import DataBundle
from deepslim.train.ondevice import finetune_ondevice


def _bundle() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return DataBundle(name="toy", train=loader, val=loader, test=loader, calib=loader, example_input=x[:1],
                      num_classes=4)  # fmt: skip


def test_the_measured_peak_is_of_the_modes_trainable_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))  # fmt: skip
    result = finetune_ondevice(model, _bundle(), mode="bias", epochs=1, batch_size=8)
    example = torch.randn(8, 3, 8, 8)
    everything = measure_peak_bytes(copy.deepcopy(model), example, trainable="all")
    weights = sum(p.numel() * 4 for p in model.parameters() if p.dim() > 1)
    assert result.trainable_params == sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert result.measured_peak_bytes < everything - 2 * weights  # no weight gradients, no Adam moments of weights
