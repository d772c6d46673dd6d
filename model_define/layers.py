"""Shared building blocks for the model zoo: conv-BN-activation stacks and output-size arithmetic."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

Size2 = Union[int, Tuple[int, int]]


def make_act(name: Optional[str], channels: int) -> Optional[nn.Module]:
    """Activation module by name: None, "relu", "relu6" or "prelu" (per-channel)."""
    if name is None:
        return None
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {name!r}")


def conv_bn_layers(cin: int, cout: int, kernel: Size2 = 3, stride: Size2 = 1, padding: Optional[Size2] = None,
                   groups: int = 1, act: Optional[str] = "relu") -> List[nn.Module]:
    """[Conv2d (no bias), BatchNorm2d, activation?] as a list, to splice into larger Sequentials."""
    if padding is None:
        padding = kernel // 2 if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2)
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    a = make_act(act, cout)
    if a is not None:
        layers.append(a)
    return layers


def conv_bn(cin: int, cout: int, kernel: Size2 = 3, stride: Size2 = 1, padding: Optional[Size2] = None,
            groups: int = 1, act: Optional[str] = "relu") -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d -> activation (None for a linear block)."""
    return nn.Sequential(*conv_bn_layers(cin, cout, kernel, stride, padding, groups, act))


def spatial_size(input_size: Sequence[int]) -> Tuple[int, int]:
    """(H, W) from an (H, W) or (C, H, W) input size."""
    if len(input_size) not in (2, 3):
        raise ValueError(f"input_size must be (H, W) or (C, H, W), got {tuple(input_size)}")
    h, w = input_size[-2:]
    return int(h), int(w)


def conv_out(size: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> int:
    """Output length of a convolution / pooling along one axis."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input of size {size} is too small for kernel {kernel}, stride {stride}")
    return out


def downsample(hw: Tuple[int, int], times: int, kernel: int = 3, stride: int = 2, padding: int = 1
               ) -> Tuple[int, int]:
    """Apply ``conv_out`` ``times`` times to both axes of ``hw``."""
    h, w = hw
    for _ in range(times):
        h, w = conv_out(h, kernel, stride, padding), conv_out(w, kernel, stride, padding)
    return h, w


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) ... -> Linear through ``sizes`` (no activation after the last layer)."""
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan-in, so fresh models in eval mode keep signal through depth), unit BN, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class PoolClassifier(nn.Module):
    """features -> global average pool -> (dropout) -> Linear."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))
