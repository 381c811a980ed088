"""LeNet-300-100 and LeNet-5 as used by Deep Compression.

LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998; the variants (an MLP with
300 and 100 hidden units; Caffe's LeNet-5 with 20 and 50 5×5 filters and 500 hidden units) are those of
Han et al., "Deep Compression", ICLR 2016, Table 2-3.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models._registry import register_model

_PAPER = "LeCun et al. 1998; variants of Han et al., Deep Compression, ICLR 2016"


def _vector_input(batch_size: int = 1, *, in_features: int = 784, **_: object) -> torch.Tensor:
    return torch.randn(batch_size, in_features)


class LeNet300(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, int]):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, in_features)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


@register_model(paper=_PAPER, task="vector", example=_vector_input)
def lenet300(*, num_classes: int = 10, in_features: int = 784, hidden: tuple[int, int] = (300, 100)) -> nn.Module:
    """MLP in_features-300-100-num_classes (266,610 parameters on 28×28 MNIST)."""
    return LeNet300(in_features, num_classes, (hidden[0], hidden[1]))


class LeNet5(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: int, padding: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5, padding=padding),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=padding),
            nn.MaxPool2d(2),
        )
        side = input_size
        for _ in range(2):
            side = (side + 2 * padding - 4) // 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet-5 with padding {padding}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, num_classes)


@register_model(paper=_PAPER)
def lenet5(
    *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, padding: int | None = None
) -> nn.Module:
    """Caffe's LeNet-5 (431,080 parameters on 28×28 MNIST).

    ``padding`` defaults to 0 (the original geometry) for inputs of 28 pixels or more and to 2 ("same") for
    smaller ones, so the 8×8 scikit-learn digits run through the same layer stack.
    """
    pad = padding if padding is not None else (0 if input_size >= 28 else 2)
    return LeNet5(in_channels, num_classes, input_size, pad)
