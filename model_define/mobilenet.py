"""MobileNetV1 / MobileNetV2 classifiers.

Small inputs (below 96 px, e.g. CIFAR 32x32) use the common CIFAR adaptation: the stem conv has stride 1 (and for
V2 the second stage too), so the final feature map is 2x2 instead of 1x1. Larger inputs keep ImageNet strides.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from model_define.layers import PoolClassifier, conv_bn, conv_bn_layers, spatial_size
from model_define.registry import register

SMALL_INPUT = 96

# (output channels, stride) of each depthwise-separable layer after the 32-channel stem.
V1_SETTING: Tuple[Tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# t (expansion), c, n, s -- Sandler et al. 2018, table 2.
V2_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _is_small(input_size: Sequence[int]) -> bool:
    return min(spatial_size(input_size)) < SMALL_INPUT


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU."""
    return nn.Sequential(*conv_bn_layers(cin, cin, 3, stride, groups=cin),
                         *conv_bn_layers(cin, cout, 1))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; residual if stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: List[nn.Module] = conv_bn_layers(cin, hidden, 1, act="relu6") if expansion != 1 else []
        layers += conv_bn_layers(hidden, hidden, 3, stride, groups=hidden, act="relu6")
        layers += conv_bn_layers(hidden, cout, 1, act=None)
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v1_features(in_channels: int, small: bool) -> Tuple[nn.Sequential, int]:
    layers: List[nn.Module] = [conv_bn(in_channels, 32, 3, 1 if small else 2)]
    cin = 32
    for cout, stride in V1_SETTING:
        layers.append(depthwise_separable(cin, cout, stride))
        cin = cout
    return nn.Sequential(*layers), cin


def mobilenet_v2_features(in_channels: int, small: bool) -> Tuple[nn.Sequential, int]:
    layers: List[nn.Module] = [conv_bn(in_channels, 32, 3, 1 if small else 2, act="relu6")]
    cin = 32
    for stage, (t, c, n, s) in enumerate(V2_SETTING):
        if small and stage == 1:
            s = 1
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(conv_bn(cin, 1280, 1, act="relu6"))
    return nn.Sequential(*layers), 1280


@register("mobilenet_v1", input_size=(3, 32, 32))
def mobilenet_v1(num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)) -> nn.Module:
    features, channels = mobilenet_v1_features(in_channels, _is_small(input_size))
    return PoolClassifier(features, channels, num_classes)


@register("mobilenet_v2", input_size=(3, 32, 32))
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32),
                 dropout: float = 0.2) -> nn.Module:
    features, channels = mobilenet_v2_features(in_channels, _is_small(input_size))
    return PoolClassifier(features, channels, num_classes, dropout)
