"""ShuffleNetV2: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018.

Torchvision's layout; the 1.0× model has 2,278,604 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from deepslim.models._layers import ConvBNAct, init_weights
from deepslim.models._registry import register_model

_PAPER = "Ma et al., ShuffleNet V2, ECCV 2018"
_WIDTHS = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024], 1.5: [24, 176, 352, 704, 1024],
           2.0: [24, 244, 488, 976, 2048]}  # fmt: skip


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # (B, C, H, W) -> (B, g, C/g, H, W) -> swap -> (B, C, H, W); written without reading x.shape, so torch.fx traces it
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = out_ch // 2
        if stride > 1:
            self.branch1: nn.Module = nn.Sequential(
                ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=None), ConvBNAct(in_ch, branch, 1)
            )
        else:
            self.branch1 = nn.Identity()
        b2_in = in_ch if stride > 1 else branch
        self.branch2 = nn.Sequential(
            ConvBNAct(b2_in, branch, 1),
            ConvBNAct(branch, branch, 3, stride, groups=branch, act=None),
            ConvBNAct(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths: list[int], num_classes: int, in_channels: int, small_input: bool):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, widths[0], 3, 1 if small_input else 2)
        self.maxpool: nn.Module = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        ch = widths[0]
        stages = []
        for repeats, out in zip((4, 8, 4), widths[1:4], strict=True):
            blocks = [ShuffleBlock(ch, out, 2)] + [ShuffleBlock(out, out, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*blocks))
            ch = out
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = ConvBNAct(ch, widths[4], 1)
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))  # global average pool: (B, C)


@register_model(paper=_PAPER)
def shufflenet_v2(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, width_mult: float = 1.0,
                  small_input: bool = False) -> nn.Module:  # fmt: skip
    """ShuffleNetV2 at width 0.5, 1.0, 1.5 or 2.0; 2,278,604 parameters at 1.0×."""
    if width_mult not in _WIDTHS:
        raise ValueError(f"width_mult must be one of {sorted(_WIDTHS)}, got {width_mult}")
    return init_weights(ShuffleNetV2(_WIDTHS[width_mult], num_classes, in_channels, small_input))
