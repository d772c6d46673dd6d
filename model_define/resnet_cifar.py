"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, section 4.2) with the parameter-free "option A" shortcut.

Parameter names match the widely used pretrained checkpoints (conv1, bn1, layer1.0.conv1, ..., linear) once the
DataParallel prefix ``module.`` is stripped.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.data.normalise import RGB_MEAN, RGB_STD
from model_define.layers import init_weights
from model_define.registry import register

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, zero-pad channels from ``planes_in`` to ``planes_out``.

    Input channel ``i`` lands on output channel ``pos[i]`` (``pad_front + i`` before pruning, -1 once dropped).
    Thinning shrinks the map (``remove_inputs`` / ``remove_outputs``, see patches/handlers.py), and soft
    pruning zeroes ``out_mask``; both are non-persistent buffers, so checkpoints keep their plain keys.
    """

    def __init__(self, planes_in: int, planes_out: int, stride: int = 2):
        super().__init__()
        if planes_out < planes_in:
            raise ValueError(f"PadShortcut cannot shrink channels ({planes_in} -> {planes_out})")
        self.planes_in, self.planes_out, self.stride = planes_in, planes_out, stride
        self.pad_front = (planes_out - planes_in) // 2
        self.register_buffer("pos", torch.arange(planes_in) + self.pad_front, persistent=False)
        self.register_buffer("out_mask", torch.ones(planes_out), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        if self._is_plain_pad():
            out = F.pad(x, (0, 0, 0, 0, self.pad_front, self.planes_out - self.planes_in - self.pad_front))
        else:
            keep = self.pos >= 0
            out = x.new_zeros(x.shape[0], self.planes_out, *x.shape[2:])
            out[:, self.pos[keep]] = x[:, keep]
        if not bool(self.out_mask.all()):
            out = out * self.out_mask.view(1, -1, 1, 1)
        return out

    def _is_plain_pad(self) -> bool:
        return bool(torch.equal(self.pos, torch.arange(self.planes_in, device=self.pos.device) + self.pad_front))

    def remove_inputs(self, idxs) -> None:
        keep = [i for i in range(self.planes_in) if i not in set(idxs)]
        self.pos = self.pos[keep]
        self.planes_in = len(keep)

    def remove_outputs(self, idxs) -> None:
        gone = set(int(i) for i in idxs)
        keep = [j for j in range(self.planes_out) if j not in gone]
        new_index = {old: new for new, old in enumerate(keep)}
        self.pos = torch.tensor([new_index.get(int(p), -1) for p in self.pos], dtype=torch.long)
        self.out_mask = self.out_mask[keep]
        self.planes_out = len(keep)
        self.pad_front = -1  # no longer a plain pad: forward takes the general path

    def soft_mask_slices(self, idxs, out: bool):
        """Soft pruning of output channels zeroes them; input channels arrive as zeros already."""
        return [(self.out_mask, 0, torch.as_tensor(list(idxs), dtype=torch.long))] if out else []

    def extra_repr(self) -> str:
        return f"{self.planes_in}, {self.planes_out}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = PadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth not in CIFAR_DEPTHS:
            raise ValueError(f"depth must be one of {CIFAR_DEPTHS}, not {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        cin = STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            blocks = [BasicBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def _register_cifar(depth: int) -> None:
    @register(f"resnet{depth}", input_size=(3, 32, 32), mean=RGB_MEAN, std=RGB_STD)
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return ResNetCifar(depth, num_classes, in_channels)

    build.__name__ = f"resnet{depth}"


for _depth in CIFAR_DEPTHS:
    _register_cifar(_depth)
