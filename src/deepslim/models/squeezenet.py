"""SqueezeNet 1.0: Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters", 2016.

Torchvision's layout: 1,248,424 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models._registry import register_model

_PAPER = "Iandola et al., SqueezeNet, arXiv:1602.07360, 2016"


class Fire(nn.Module):
    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(512, 64, 256, 256),
        )  # fmt: skip
        final = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), final, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model(paper=_PAPER)
def squeezenet1_0(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                  dropout: float = 0.5) -> nn.Module:  # fmt: skip
    """SqueezeNet 1.0: 1,248,424 parameters with the ImageNet head."""
    return SqueezeNet(num_classes, in_channels, dropout)
