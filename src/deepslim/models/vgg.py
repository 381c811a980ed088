"""VGG: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.

ImageNet variants match torchvision's parameter counts (VGG-16: 138,357,544). The CIFAR-style variants use batch
norm and a single linear head on the 1×1×512 feature map of a 32×32 input, as is common for CIFAR-10.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models._layers import init_weights
from deepslim.models._registry import image_input, register_model

_PAPER = "Simonyan & Zisserman, ICLR 2015"
_CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _features(cfg: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    ch = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(ch, int(v), 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        ch = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Module, pool: nn.Module):
        super().__init__()
        self.features, self.avgpool, self.classifier = features, pool, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (B, 512, h, w)
        return self.classifier(torch.flatten(x, 1))


def _imagenet(cfg: str, num_classes: int, in_channels: int, batch_norm: bool, dropout: float) -> nn.Module:
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )  # fmt: skip
    return init_weights(VGG(_features(_CFGS[cfg], in_channels, batch_norm), classifier, nn.AdaptiveAvgPool2d(7)))


def _cifar(cfg: str, num_classes: int, in_channels: int) -> nn.Module:
    return init_weights(VGG(_features(_CFGS[cfg], in_channels, True), nn.Linear(512, num_classes), nn.Identity()))


def _cifar_input(batch_size: int = 1, *, in_channels: int = 3, **_: object) -> torch.Tensor:
    return image_input(batch_size, in_channels=in_channels, input_size=32)


@register_model(paper=_PAPER)
def vgg11(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, batch_norm: bool = False,
          dropout: float = 0.5) -> nn.Module:  # fmt: skip
    """VGG-11 (configuration A), ImageNet head: 132,863,336 parameters."""
    return _imagenet("A", num_classes, in_channels, batch_norm, dropout)


@register_model(paper=_PAPER)
def vgg16(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, batch_norm: bool = False,
          dropout: float = 0.5) -> nn.Module:  # fmt: skip
    """VGG-16 (configuration D), ImageNet head: 138,357,544 parameters."""
    return _imagenet("D", num_classes, in_channels, batch_norm, dropout)


@register_model(paper=_PAPER, example=_cifar_input)
def vgg11_cifar(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-11 with batch norm and a single linear head for 32×32 inputs."""
    return _cifar("A", num_classes, in_channels)


@register_model(paper=_PAPER, example=_cifar_input)
def vgg16_cifar(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-16 with batch norm and a single linear head for 32×32 inputs."""
    return _cifar("D", num_classes, in_channels)
