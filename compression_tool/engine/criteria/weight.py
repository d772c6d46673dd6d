"""Weight-magnitude criteria: L1, L2 and FPGM (geometric median) over a root's filters."""
from __future__ import annotations

import torch

from compression_tool.engine.criteria.base import Criterion, _filters, _register


@_register
class L1(Criterion):
    """L1 norm of each filter (Distiller's L1RankedStructureParameterPruner)."""
    name, pruner_class = "l1", "L1RankedStructureParameterPruner"

    def channel_scores(self, root_name, root):
        return _filters(root).abs().sum(1)


@_register
class L2(Criterion):
    """L2 norm of each filter."""
    name, pruner_class = "l2", "L2RankedStructureParameterPruner"

    def channel_scores(self, root_name, root):
        return _filters(root).norm(p=2, dim=1)


@_register
class FPGM(Criterion):
    """Filter Pruning via Geometric Median: filters nearest the others' geometric median are redundant."""
    name, pruner_class = "fpgm", "FPGMStructureParameterPruner"

    def channel_scores(self, root_name, root):
        w = _filters(root).double()
        return torch.cdist(w, w).sum(1)
