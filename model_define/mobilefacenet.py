"""MobileFaceNet (Chen et al. 2018), parameter names matching the CASIA-WebFace checkpoint (068.ckpt).

Layout: conv1 (Conv_block 3x3/2) -> dw_conv1 (depthwise Conv_block) -> 15 depthwise bottlenecks -> conv2
(1x1 Conv_block to 512) -> linear7 (GDC: depthwise conv whose kernel is the final feature map, no PReLU)
-> linear1 (1x1 Linear_block to the embedding). The output is the (un-normalised) embedding.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn

from model_define.layers import Size2, conv_bn_layers, downsample, init_weights, spatial_size
from model_define.registry import register

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat) -- from the paper.
MOBILEFACENET_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBlock(nn.Module):
    """Conv (no bias) + BN (+ per-channel PReLU unless ``linear``): the paper's Conv_block / Linear_block."""

    def __init__(self, cin: int, cout: int, kernel: Size2, stride: int = 1, padding: Size2 = 0,
                 depthwise: bool = False, linear: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.linear = linear
        if not linear:
            self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class Bottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 project; residual when stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(*conv_bn_layers(cin, hidden, 1, act="prelu"),
                                  *conv_bn_layers(hidden, hidden, 3, stride, groups=hidden, act="prelu"),
                                  *conv_bn_layers(hidden, cout, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.connect else self.conv(x)


def gdc_kernel(input_size: Sequence[int], setting: Sequence[Tuple[int, int, int, int]] = MOBILEFACENET_SETTING
               ) -> Tuple[int, int]:
    """Feature-map size before the GDC layer: conv1 plus every stride-2 stage halve (3x3, pad 1)."""
    n_stride2 = 1 + sum(1 for _, _, _, s in setting if s == 2)
    return downsample(spatial_size(input_size), n_stride2)


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 128, in_channels: int = 3, input_size: Sequence[int] = (112, 96),
                 setting: Sequence[Tuple[int, int, int, int]] = MOBILEFACENET_SETTING):
        super().__init__()
        self.conv1 = ConvBlock(in_channels, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        blocks, cin = [], 64
        for t, c, n, s in setting:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(cin, 512, 1)
        self.linear7 = ConvBlock(512, 512, gdc_kernel(input_size, setting), depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, embedding_size, 1, linear=True)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.blocks(self.dw_conv1(self.conv1(x))))
        return torch.flatten(self.linear1(self.linear7(x)), 1)


@register("mobilefacenet", input_size=(3, 112, 96), kind="embedder")
def mobilefacenet(embedding_size: int = 128, in_channels: int = 3, input_size: Sequence[int] = (112, 96)
                  ) -> nn.Module:
    return MobileFaceNet(embedding_size, in_channels, input_size)
