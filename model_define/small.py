"""Small models for the embedded default (digits) and for fast tests."""
from __future__ import annotations

import torch
import torch.nn as nn

from model_define.registry import register


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitsBlock(nn.Module):
    """A residual block, so the default shows coupled (residual) channels being thinned together."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.prelu = nn.PReLU(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x))))))


class DigitsNet(nn.Module):
    """conv-BN-ReLU stem, a residual block with PReLU, a strided conv, flatten, two Linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, image_size: int = 16):
        super().__init__()
        self.stem = _conv_bn(in_channels, width)
        self.block = DigitsBlock(width)
        self.down = _conv_bn(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.down(self.block(self.stem(x))))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


@register("digits_net", input_size=(1, 16, 16))
def digits_net(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    return DigitsNet(num_classes, in_channels, width)
