"""Training-time augmentation of preprocessed image tensors (``python -m train_module --augment``).

Works on the normalised ``(C, H, W)`` tensors the readers return, so it serves every data kind. One draw per image
per fetch from the global torch RNG (the fine-tuning loop re-seeds it per batch, so a resumed run replays the same
draws): a small random rotation, scale and shift (edges replicated, bilinear), then brightness and contrast jitter.
Horizontal flips are ``--hflip`` (``compression_tool.apps.finetune.RandomHFlip``), not repeated here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


@dataclass(frozen=True)
class AugmentConfig:
    rotate: float = 10.0         # degrees, uniform in [-rotate, rotate]
    scale: float = 0.1           # zoom uniform in [1 - scale, 1 + scale]
    shift: float = 0.06          # translation, fraction of the side, uniform in [-shift, shift]
    brightness: float = 0.2      # added offset, in units of the normalised range / 2, uniform in [-b, b]
    contrast: float = 0.2        # gain around the image mean, uniform in [1 - c, 1 + c]


def _u(width: float) -> float:
    return float((torch.rand(()) * 2 - 1) * width)


def augment_image(x: torch.Tensor, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """One random geometric + photometric variant of a normalised image ``x`` (C, H, W)."""
    angle, zoom = math.radians(_u(cfg.rotate)), 1.0 + _u(cfg.scale)
    tx, ty = 2 * _u(cfg.shift), 2 * _u(cfg.shift)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=x.dtype)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    y = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    mean = y.mean()
    return (y - mean) * (1.0 + _u(cfg.contrast)) + mean + _u(cfg.brightness)


class RandomAugment(Dataset):
    """Wrap a tensor dataset: each fetched image is a fresh :func:`augment_image` variant."""

    def __init__(self, base: Dataset, cfg: AugmentConfig = AugmentConfig()):
        self.base, self.cfg = base, cfg

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, *rest = self.base[i]
        return (augment_image(x, self.cfg), *rest)


class CropFlip(Dataset):
    """CIFAR-style training augmentation on normalised ``(x, y)`` tensors: random crop of the ``pad``-px
    zero-padded image (zero is the mean colour in normalised space) and, with ``flip``, a random horizontal flip.
    Draws use the global RNG, which the fine-tuning loop seeds per batch, so a run is reproducible."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int = 4, flip: bool = True):
        self.x, self.y, self.pad, self.flip = x, y, pad, flip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = F.pad(self.x[i], (self.pad,) * 4)
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        h, w = self.x.shape[-2:]
        img = img[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            img = torch.flip(img, dims=[2])
        return img, self.y[i]
