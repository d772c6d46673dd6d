"""Verification pairs: preprocessed images and the pairs (with same/different labels) that index them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from compression_tool.io.errors import UserError


@dataclass
class PairSet:
    """Preprocessed images [N, C, H, W], ``pairs`` LongTensor [P, 2] indexing them, ``issame`` BoolTensor [P].

    ``paths`` (optional) names each image, for reports and debugging.
    """

    images: torch.Tensor
    pairs: torch.Tensor
    issame: torch.Tensor
    paths: Optional[List[str]] = None

    def __post_init__(self) -> None:
        self.pairs = torch.as_tensor(self.pairs, dtype=torch.long)
        self.issame = torch.as_tensor(self.issame, dtype=torch.bool).reshape(-1)
        if self.images.dim() != 4:
            raise ValueError(f"PairSet images must be [N, C, H, W], got {tuple(self.images.shape)}")
        if self.pairs.dim() != 2 or self.pairs.shape[1] != 2 or self.pairs.shape[0] != self.issame.numel():
            raise ValueError(f"PairSet pairs must be [P, 2] with P = len(issame) = {self.issame.numel()}, "
                             f"got {tuple(self.pairs.shape)}")
        if self.pairs.numel() and (self.pairs.min() < 0 or self.pairs.max() >= self.images.shape[0]):
            raise ValueError("PairSet pairs index outside the images")
        if self.paths is not None and len(self.paths) != self.images.shape[0]:
            raise ValueError("PairSet paths must name every image")

    def __len__(self) -> int:
        return int(self.issame.numel())

    def subset(self, max_pairs: int) -> "PairSet":
        """At most ``max_pairs`` pairs spread evenly over the list (every fold and both classes keep a
        share; a prefix would take LFW's all-same first half-fold), with only the images they use."""
        if max_pairs >= len(self):
            return self
        if max_pairs < 2:
            raise UserError(f"a verification subset needs at least 2 pairs, got {max_pairs}")
        keep = torch.from_numpy(np.unique(np.linspace(0, len(self) - 1, max_pairs).round().astype(np.int64)))
        pairs = self.pairs[keep]
        used, inverse = torch.unique(pairs.reshape(-1), return_inverse=True)
        paths = [self.paths[i] for i in used.tolist()] if self.paths is not None else None
        return PairSet(self.images[used], inverse.reshape(-1, 2), self.issame[keep], paths)
