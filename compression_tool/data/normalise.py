"""The one normalisation source: per-channel ``(x - mean) / std`` on the [0, 1] scale, and each data kind's default.

A model's registry entry may name its own statistics (``model_define.register(..., mean=, std=)``); a user's
``--mean/--std`` override both. Face images follow the field's ``(x - 127.5) / 128`` on 0..255.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from compression_tool.io.errors import UserError

Stats = Union[float, Sequence[float], None]

RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # ImageNet/CIFAR-style RGB checkpoints
FACE_MEAN_255, FACE_STD_255 = 127.5, 128.0                          # face embedders, on the 0..255 scale
FACE_MEAN, FACE_STD = FACE_MEAN_255 / 255.0, FACE_STD_255 / 255.0
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
HALF_MEAN, HALF_STD = (0.5,), (0.5,)                                # digits and custom JSON data: [-1, 1]

# data kind -> (mean, std) used when neither the user nor the model's registry entry says otherwise
KIND_DEFAULTS = {"digits": (HALF_MEAN, HALF_STD), "json": (HALF_MEAN, HALF_STD), "mnist": (MNIST_MEAN, MNIST_STD),
                 "cifar10": (RGB_MEAN, RGB_STD), "cifar100": (RGB_MEAN, RGB_STD), "image_folder": (RGB_MEAN, RGB_STD)}


def default_stats(kind: str, channels: int, mean: Stats = None, std: Stats = None,
                  model_mean: Stats = None, model_std: Stats = None) -> Tuple[Stats, Stats]:
    """(mean, std) for a data kind: the user's values, else the model's, else the kind's (RGB stats only fit
    3-channel data: grey image folders stay unnormalised)."""
    if mean is not None or std is not None:
        return mean, std
    if model_mean is not None or model_std is not None:
        return model_mean, model_std
    m, s = KIND_DEFAULTS.get(kind, (None, None))
    if m is not None and not isinstance(m, (int, float)) and len(m) not in (1, channels):
        return None, None
    return m, s


def _per_channel(values: Stats, default: float, c: int, x: torch.Tensor, flag: str) -> torch.Tensor:
    if values is None:
        values = [default]
    v = [float(values)] if isinstance(values, (int, float)) else [float(t) for t in values]
    if len(v) == 1:
        v = v * c
    if len(v) != c:
        raise UserError(f"{flag}: give 1 or {c} values (the data has {c} channels), got {len(v)}")
    return torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1)


def normalise(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """``x`` (N, C, H, W) in [0, 1] -> ``(x - mean) / std`` per channel (one value applies to every channel)."""
    if mean is None and std is None:
        return x
    c = x.shape[1]
    std_t = _per_channel(std, 1.0, c, x, "--std")
    if bool((std_t == 0).any()):
        raise UserError("--std: values must be non-zero")
    return (x - _per_channel(mean, 0.0, c, x, "--mean")) / std_t
