"""Classic classifiers: VGG-16-BN (CIFAR style), LeNet-5, AlexNet (small-input variant), DNN-2 / DNN-4 (MLPs)."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from model_define.layers import PoolClassifier, conv_bn_layers, init_weights, mlp, spatial_size
from model_define.registry import register

VGG16_CFG: Sequence[Union[int, str]] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                        512, 512, 512, "M", 512, 512, 512, "M")
DNN2_HIDDEN = (300, 100)              # LeNet-300-100 (Han et al. 2015)
DNN4_HIDDEN = (1024, 512, 256, 128)


class FlatClassifier(nn.Module):
    """features -> flatten -> classifier (an MLP)."""

    def __init__(self, features: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.classifier = classifier
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@torch.no_grad()
def flat_features(features: nn.Module, in_channels: int, input_size: Sequence[int]) -> int:
    """Number of features ``features`` produces per sample at ``input_size`` (one dummy forward)."""
    was_training = features.training
    out = features.eval()(torch.zeros(1, in_channels, *spatial_size(input_size)))
    features.train(was_training)
    return out[0].numel()


def vgg_features(cfg: Sequence[Union[int, str]], in_channels: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    cin = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += conv_bn_layers(cin, int(v), 3)
            cin = int(v)
    return nn.Sequential(*layers)


@register("vgg16_bn", input_size=(3, 32, 32))
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """13 conv3x3-BN-ReLU layers with 5 max-pools, global pool, Linear(512 -> classes)."""
    return PoolClassifier(vgg_features(VGG16_CFG, in_channels), 512, num_classes)


def _conv_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True)]


@register("lenet5", input_size=(1, 28, 28))
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)) -> nn.Module:
    """conv5x5(6, pad 2)-ReLU-pool, conv5x5(16)-ReLU-pool, FC 120-84-classes."""
    features = nn.Sequential(*_conv_relu(in_channels, 6, 5, padding=2), nn.MaxPool2d(2),
                             *_conv_relu(6, 16, 5), nn.MaxPool2d(2))
    return FlatClassifier(features, mlp([flat_features(features, in_channels, input_size), 120, 84, num_classes]))


@register("alexnet", input_size=(3, 32, 32))
def alexnet(num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32),
            hidden: int = 1024, dropout: float = 0.5) -> nn.Module:
    """AlexNet's five convs (64-192-384-256-256) with 3x3 kernels and three max-pools, sized for 32x32."""
    features = nn.Sequential(*_conv_relu(in_channels, 64, 3, 2, 1), nn.MaxPool2d(2),
                             *_conv_relu(64, 192, 3, 1, 1), nn.MaxPool2d(2),
                             *_conv_relu(192, 384, 3, 1, 1), *_conv_relu(384, 256, 3, 1, 1),
                             *_conv_relu(256, 256, 3, 1, 1), nn.MaxPool2d(2))
    flat = flat_features(features, in_channels, input_size)
    return FlatClassifier(features, mlp([flat, hidden, hidden, num_classes], dropout))


def dnn(hidden: Sequence[int], num_classes: int, in_channels: int, input_size: Sequence[int]) -> nn.Module:
    h, w = spatial_size(input_size)
    return FlatClassifier(nn.Identity(), mlp([in_channels * h * w, *hidden, num_classes]))


@register("dnn2", input_size=(1, 28, 28))
def dnn2(num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28),
         hidden: Sequence[int] = DNN2_HIDDEN) -> nn.Module:
    """Two hidden fully-connected layers (LeNet-300-100) on the flattened image."""
    return dnn(hidden, num_classes, in_channels, input_size)


@register("dnn4", input_size=(1, 28, 28))
def dnn4(num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28),
         hidden: Sequence[int] = DNN4_HIDDEN) -> nn.Module:
    """Four hidden fully-connected layers (1024-512-256-128) on the flattened image."""
    return dnn(hidden, num_classes, in_channels, input_size)
