"""MobileNets.

V1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", 2017
(4,231,976 parameters at width 1.0 with batch norm). V2: Sandler et al., "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018 (torchvision's layout, 3,504,872 parameters). ``small_input=True`` removes the
first two stride-2 steps so 32×32 images keep a useful spatial size, as CIFAR adaptations do.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models._layers import ConvBNAct, init_weights, make_divisible
from deepslim.models._registry import register_model

_V1_PAPER = "Howard et al., MobileNets, arXiv:1704.04861, 2017"
_V2_PAPER = "Sandler et al., MobileNetV2, CVPR 2018"

# (out_channels, stride) of each depthwise-separable block of MobileNetV1
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, small_input: bool, dropout: float):
        super().__init__()
        ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, ch, 3, 1 if small_input else 2)]
        for i, (out, stride) in enumerate(_V1_BLOCKS):
            out = make_divisible(out * width_mult)
            s = 1 if small_input and i == 1 else stride
            layers.append(nn.Sequential(ConvBNAct(ch, ch, 3, s, groups=ch), ConvBNAct(ch, out, 1)))
            ch = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(paper=_V1_PAPER)
def mobilenet_v1(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, width_mult: float = 1.0,
                 small_input: bool = False, dropout: float = 0.0) -> nn.Module:  # fmt: skip
    """MobileNetV1: 13 depthwise-separable blocks; 4,231,976 parameters at width 1.0."""
    return init_weights(MobileNetV1(num_classes, in_channels, width_mult, small_input, dropout))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# expansion t, channels c, repeats n, stride s (Table 2 of the paper)
_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # fmt: skip


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, small_input: bool, dropout: float):
        super().__init__()
        ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_channels, ch, 3, 1 if small_input else 2, act=nn.ReLU6)]
        for i, (t, c, n, s) in enumerate(_V2_SETTINGS):
            out = make_divisible(c * width_mult)
            stride = 1 if small_input and i == 1 else s
            for j in range(n):
                layers.append(InvertedResidual(ch, out, stride if j == 0 else 1, t))
                ch = out
        layers.append(ConvBNAct(ch, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(paper=_V2_PAPER)
def mobilenet_v2(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, width_mult: float = 1.0,
                 small_input: bool = False, dropout: float = 0.2) -> nn.Module:  # fmt: skip
    """MobileNetV2: 3,504,872 parameters at width 1.0 with the ImageNet head."""
    return init_weights(MobileNetV2(num_classes, in_channels, width_mult, small_input, dropout))
