"""Weight-magnitude criteria: L1, L2 and FPGM (geometric median), on a group's leading filters or all its slices.

``reduction`` says which weights a channel is judged by:

- ``first``  only the leading layer's filters (Distiller's L1RankedStructureParameterPruner semantics);
- ``mean`` / ``sum`` / ``max``  every coupled slice of the group: each conv/linear whose output channels the group
  removes (its filters), each conv/linear that consumes them (its input-channel columns, several per channel after a
  flatten), each affine BN (gamma) and each per-channel PReLU (its slopes). The statistic (L1, L2, FPGM distance) is
  computed per slice, divided by that slice's mean over the group's channels — so a 3x3x256 filter and a BN gamma
  weigh alike — and the normalised slices are combined per channel by their mean, sum or max. ``mean`` and ``sum``
  order channels identically (the same number of slices per channel); both are offered for torch-pruning users.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from compression_tool.engine.criteria.base import Criterion, _filters, _register
from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.io.errors import UserError

REDUCTIONS = ("first", "mean", "sum", "max")
DEFAULT_REDUCTION = "first"    # measured best on the pretrained ResNet-20 (docs/criteria.md, "Group reduction")


def slice_features(index: GroupIndex, group: PrunableGroup) -> List[torch.Tensor]:
    """Every weight slice of ``group`` as a (channels, features) matrix: row c holds what root channel c owns."""
    feats = []
    for c in index.coupled(group):
        m, blocks = c.module, torch.tensor(c.blocks)           # blocks: (channels, k)
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() == 0:
            continue
        w = w.detach().double()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if getattr(m, "transposed", False):
                continue
            if c.out:
                rows = w.flatten(1)
            elif getattr(m, "groups", 1) == 1:
                rows = w.transpose(0, 1).flatten(1)                # (in, out * kernel): one input column per row
            else:
                continue  # a depthwise conv's input is its output: its filters already count as an out slice
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.PReLU)) and c.out and w.numel() > 1:
            rows = w.reshape(-1, 1)
        else:
            continue
        feats.append(rows[blocks].flatten(1))                   # (channels, k * features)
    return feats


class WeightCriterion(Criterion):
    """A statistic of each channel's weights (``statistic``: (channels, features) -> (channels,))."""

    def __init__(self, reduction: str = DEFAULT_REDUCTION):
        if reduction not in REDUCTIONS:
            raise UserError(f"{self.name}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction

    def statistic(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def channel_scores(self, root_name, root):
        return self.statistic(_filters(root))

    def __call__(self, index, group):
        feats = slice_features(index, group) if self.reduction != "first" else []
        if not feats:
            return self.channel_scores(group.root_name, group.root)
        per = torch.stack([s / s.mean().clamp_min(1e-30) for s in map(self.statistic, feats)])
        if self.reduction == "max":
            return per.max(0).values
        return per.mean(0) if self.reduction == "mean" else per.sum(0)


@_register
class L1(WeightCriterion):
    """L1 norm of each filter (Distiller's L1RankedStructureParameterPruner); --reduction for the whole group."""
    name, pruner_class = "l1", "L1RankedStructureParameterPruner"

    def statistic(self, w):
        return w.abs().sum(1)


@_register
class L2(WeightCriterion):
    """L2 norm of each filter; --reduction for the whole group."""
    name, pruner_class = "l2", "L2RankedStructureParameterPruner"

    def statistic(self, w):
        return w.norm(p=2, dim=1)


@_register
class FPGM(WeightCriterion):
    """Filter Pruning via Geometric Median: filters nearest the others' geometric median are redundant."""
    name, pruner_class = "fpgm", "FPGMStructureParameterPruner"

    def statistic(self, w):
        w = w.double()
        return torch.cdist(w, w).sum(1)
