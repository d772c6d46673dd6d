"""ResNet-IR and ResNet-IR-SE face embedders (insightface "improved residual" layout, BN-first blocks, PReLU).

input_layer: conv3x3-BN-PReLU (64) -> body: 4 stages of bottleneck_IR units (64, 128, 256, 512 channels, the
first unit of each stage has stride 2) -> output_layer: BN2d -> Dropout -> Flatten -> Linear(512*h*w -> E)
-> BatchNorm1d. h, w are computed from the input size (7x7 at 112x112), so other face sizes work too.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from model_define.layers import downsample, init_weights, spatial_size
from model_define.registry import register

STAGE_UNITS: Dict[int, Tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
STAGE_DEPTHS = (64, 128, 256, 512)


class SEModule(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 conv (c/r) -> ReLU -> 1x1 conv (c) -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (-> SE), plus shortcut.

    Shortcut: MaxPool(1, stride) when the depth is unchanged, else conv1x1(stride) + BN.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers: List[nn.Module] = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(depth), nn.PReLU(depth),
                                   nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class ResNetIR(nn.Module):
    def __init__(self, num_layers: int = 50, se: bool = False, embedding_size: int = 512, in_channels: int = 3,
                 input_size: Sequence[int] = (112, 112), drop_ratio: float = 0.4):
        super().__init__()
        if num_layers not in STAGE_UNITS:
            raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, not {num_layers}")
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for depth, n in zip(STAGE_DEPTHS, STAGE_UNITS[num_layers]):
            for i in range(n):
                units.append(BottleneckIR(cin, depth, 2 if i == 0 else 1, se))
                cin = depth
        self.body = nn.Sequential(*units)
        h, w = downsample(spatial_size(input_size), len(STAGE_DEPTHS))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(cin * h * w, embedding_size), nn.BatchNorm1d(embedding_size))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def _register_ir(depth: int, se: bool) -> None:
    name = f"resnet_ir{'se' if se else ''}{depth}"

    @register(name, input_size=(3, 112, 112), kind="embedder")
    def build(embedding_size: int = 512, in_channels: int = 3, input_size: Sequence[int] = (112, 112),
              drop_ratio: float = 0.4) -> nn.Module:
        return ResNetIR(depth, se, embedding_size, in_channels, input_size, drop_ratio)

    build.__name__ = name


for _depth in STAGE_UNITS:
    for _se in (False, True):
        _register_ir(_depth, _se)
