"""Residual networks: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.

ImageNet variants (ResNet-18/34/50) match torchvision's parameter counts (ResNet-18: 11,689,512; ResNet-50:
25,557,032). ``small_input=True`` swaps the 7×7/2 stem and max-pool for a 3×3/1 stem, for 32×32 images.
CIFAR variants (ResNet-20/56) follow the paper's Section 4.2: three stages of 16/32/64 channels and, by default,
the parameter-free option-A shortcut (stride-2 subsampling, zero-padded channels); ``shortcut="B"`` uses 1×1
projections instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.models._layers import init_weights
from deepslim.models._registry import image_input, register_model

_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)  # stride on the 3×3, as torchvision (v1.5)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, ch * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(ch * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int,
                 in_channels: int, small_input: bool):  # fmt: skip
        super().__init__()
        self.in_ch = 64
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block: type[BasicBlock | Bottleneck], ch: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_ch != ch * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_ch, ch * block.expansion, 1, stride, bias=False), nn.BatchNorm2d(ch * block.expansion)
            )
        layers = [block(self.in_ch, ch, stride, downsample)]
        self.in_ch = ch * block.expansion
        layers += [block(self.in_ch, ch) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int, in_channels: int,
            small_input: bool) -> nn.Module:  # fmt: skip
    return init_weights(ResNet(block, layers, num_classes, in_channels, small_input))


@register_model(paper=_PAPER)
def resnet18(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
             small_input: bool = False) -> nn.Module:  # fmt: skip
    """ResNet-18: 11,689,512 parameters with the ImageNet head."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, small_input)


@register_model(paper=_PAPER)
def resnet34(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
             small_input: bool = False) -> nn.Module:  # fmt: skip
    """ResNet-34: 21,797,672 parameters with the ImageNet head."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, small_input)


@register_model(paper=_PAPER)
def resnet50(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
             small_input: bool = False) -> nn.Module:  # fmt: skip
    """ResNet-50: 25,557,032 parameters with the ImageNet head."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, small_input)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially, then zero-pad the new channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, shortcut: str):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], 16
        for ch, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or in_ch != ch:
                    down = ShortcutA(in_ch, ch, s) if shortcut == "A" else nn.Sequential(
                        nn.Conv2d(in_ch, ch, 1, s, bias=False), nn.BatchNorm2d(ch))
                blocks.append(BasicBlock(in_ch, ch, s, down))
                in_ch = ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 8, 8)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_input(batch_size: int = 1, *, in_channels: int = 3, **_: object) -> torch.Tensor:
    return image_input(batch_size, in_channels=in_channels, input_size=32)


@register_model(paper=_PAPER, example=_cifar_input)
def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> nn.Module:
    """ResNet-20 for CIFAR: 269,722 parameters (option A, 10 classes)."""
    return init_weights(CifarResNet(20, num_classes, in_channels, shortcut))


@register_model(paper=_PAPER, example=_cifar_input)
def resnet56(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> nn.Module:
    """ResNet-56 for CIFAR: 853,018 parameters (option A, 10 classes)."""
    return init_weights(CifarResNet(56, num_classes, in_channels, shortcut))
