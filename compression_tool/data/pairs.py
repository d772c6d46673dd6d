"""Verification pairs: preprocessed images and the pairs (with same/different labels) that index them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from compression_tool.io.errors import UserError


def _shown(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_issame(labels: object, where: str) -> np.ndarray:
    """Pair labels as a flat bool array. Accepted: bools and the numbers 0/1; anything else (2, -1, 'no', 0.5)
    is a one-line UserError naming ``where`` and the first bad value."""
    arr = np.asarray(labels).reshape(-1)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iuf":
        bad = arr[(arr != 0) & (arr != 1)]
        if bad.size == 0:
            return arr != 0
        value = bad[0]
    else:  # strings, objects: only real bools and 0/1 numbers pass
        ok = [isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, float, np.number)) and v in (0, 1))
              for v in arr.tolist()]
        if all(ok):
            return np.array([bool(v) for v in arr.tolist()], dtype=bool)
        value = arr[ok.index(False)]
    raise UserError(f"{where}: issame label {_shown(value)} is not a bool or 0/1")


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
        self.issame = torch.from_numpy(check_issame(torch.as_tensor(self.issame).numpy(), "PairSet").copy())
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

    def subset(self, max_pairs: int, seed: int = 0) -> "PairSet":
        """At most ``max_pairs`` pairs, with only the images they use: a seeded random sample within each
        class (same / different) in proportion to its share, kept in the original order so contiguous folds
        stay mixed. (Evenly spaced picks alias with an interleaved same/different list: every other pair of
        an ORL-style list is a same pair.)"""
        if max_pairs >= len(self):
            return self
        if max_pairs < 2:
            raise UserError(f"a verification subset needs at least 2 pairs, got {max_pairs}")
        same, diff = torch.nonzero(self.issame).flatten(), torch.nonzero(~self.issame).flatten()
        k_same = _stratum_size(max_pairs, len(same), len(diff))
        g = torch.Generator().manual_seed(seed)
        keep = torch.cat([same[torch.randperm(len(same), generator=g)[:k_same]],
                          diff[torch.randperm(len(diff), generator=g)[:max_pairs - k_same]]]).sort().values
        return self.select(keep)

    def identities(self) -> Optional[np.ndarray]:
        """Identity index per image, from the folder each image lies in (``<root>/<identity>/<image>``: identity
        folders, LFW); None without ``paths`` (e.g. ``bin:`` files) or when all images share one folder (a flat
        list names no identities)."""
        if self.paths is None:
            return None
        folders = [str(Path(str(p)).parent) for p in self.paths]
        names, index = np.unique(np.asarray(folders), return_inverse=True)
        if len(names) < 2:
            return None
        return index.astype(np.int64)

    def select(self, keep: torch.Tensor) -> "PairSet":
        """The pairs at indices ``keep`` (in that order), with only the images they use."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        pairs = self.pairs[keep]
        used, inverse = torch.unique(pairs.reshape(-1), return_inverse=True)
        paths = [self.paths[i] for i in used.tolist()] if self.paths is not None else None
        return PairSet(self.images[used], inverse.reshape(-1, 2), self.issame[keep], paths)


def _stratum_size(total: int, n_same: int, n_diff: int) -> int:
    """Same pairs in a stratified sample of ``total``: the proportional share, at least one of each class."""
    k = round(total * n_same / (n_same + n_diff))
    k = max(k, 1 if n_same else 0, total - n_diff)
    return min(k, n_same, total - (1 if n_diff else 0))
