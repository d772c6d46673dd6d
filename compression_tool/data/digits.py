"""The embedded default data set: scikit-learn's digits (ships inside the dependency, no download)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.data.normalise import HALF_MEAN, HALF_STD, Stats, normalise

DIGITS_CLASSES = 10


def digits_tensors(image_size: int = 16, channels: int = 1, mean: Stats = HALF_MEAN, std: Stats = HALF_STD
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits, upsampled (bilinear) from 8x8 to ``image_size``, from [0, 1] normalised with ``mean``/``std``
    (default: to [-1, 1]; None, None keeps [0, 1])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if channels != 1:
        x = x.repeat(1, channels, 1, 1)
    return normalise(x, mean, std), torch.tensor(d.target, dtype=torch.long)


def digits_split(image_size: int = 16, channels: int = 1, test_fraction: float = 0.2, seed: int = 0,
                 mean: Stats = HALF_MEAN, std: Stats = HALF_STD):
    """Seeded train/test split of digits; returns ((x_train, y_train), (x_test, y_test))."""
    x, y = digits_tensors(image_size, channels, mean, std)
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(len(y)))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def digits_loaders(image_size: int = 16, channels: int = 1, batch_size: int = 64, seed: int = 0
                   ) -> Tuple[DataLoader, DataLoader]:
    """Train (shuffled, seeded) and test loaders for the embedded default."""
    (xtr, ytr), (xte, yte) = digits_split(image_size, channels, seed=seed)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(TensorDataset(xte, yte), batch_size=batch_size, shuffle=False)
    return train, test
