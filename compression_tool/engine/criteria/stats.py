"""Statistics criteria, as users of the channel-pruning platform know them (lowest score removed first).

- ``bn``              |BN gamma| (network slimming); summed over every BN of the group (a residual stream has
                      one BN per block). Train inside ``bn_sparsity(model, s)`` to make gammas sparse.
- ``conv_avg``        mean |w| of each filter; ``conv_all``: the sum; ``conv_max``: the largest |w|.
- ``conv_threshold``  how many |w| of the filter exceed ``threshold`` (ties broken by the filter's L1).
- ``random``          a seeded random order (a baseline), reproducible per layer name and seed.
- ``conv_similarity`` most redundant first: repeatedly take the two most similar remaining filters (cosine) and
                      drop the weaker (smaller L1) of them.
- ``bn_similarity``   the same on each channel's BN parameters (gamma, beta of every BN in the group, Euclidean),
                      dropping the one with the smaller |gamma|.
- ``neuron``          for fully-connected nets: mean |incoming weight| of a neuron (on a conv: of its filter).

``bn`` and ``bn_similarity`` need one batch: it is only used to find the BNs of each group (dependency graph).
"""
from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.criteria.base import Criterion, _filters, _register
from compression_tool.engine.criteria.data import take_batches
from compression_tool.engine.criteria.weight import L1
from compression_tool.engine.groups import coupled_layers
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


class FilterStatistic(Criterion):
    """A reduction of each filter's |w| (``reduce``: (channels, weights) -> (channels,))."""
    reduce: Callable[[torch.Tensor], torch.Tensor]

    def channel_scores(self, root_name, root):
        return self.reduce(_filters(root).abs())


def _statistic(name: str, pruner_class: str, reduce: Callable[[torch.Tensor], torch.Tensor]) -> type:
    cls = type(pruner_class.replace("StructureParameterPruner", ""), (FilterStatistic,),
               {"name": name, "pruner_class": pruner_class, "reduce": staticmethod(reduce)})
    return _register(cls)


ConvAvg = _statistic("conv_avg", "ConvAvgStructureParameterPruner", lambda a: a.mean(1))
ConvAll = _statistic("conv_all", "ConvAllStructureParameterPruner", lambda a: a.sum(1))
ConvMax = _statistic("conv_max", "ConvMaxStructureParameterPruner", lambda a: a.max(1).values)


@_register
class ConvThreshold(Criterion):
    name, pruner_class = "conv_threshold", "ConvThresholdStructureParameterPruner"

    def __init__(self, threshold: float = 1e-2):
        if threshold < 0:
            raise UserError(f"conv_threshold: threshold must be >= 0, got {threshold}")
        self.threshold = threshold

    def channel_scores(self, root_name, root):
        w = _filters(root).abs()
        l1 = w.sum(1)
        return (w > self.threshold).sum(1).to(w.dtype) + 0.5 * l1 / l1.max().clamp_min(1e-30)


@_register
class Random(Criterion):
    name, pruner_class = "random", "RandomRankedFilterPruner"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def channel_scores(self, root_name, root):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(root_name.encode()))
        return torch.rand(root.weight.shape[0], generator=gen)


@_register
class Neuron(ConvAvg):
    """Mean |weight| of a neuron's incoming connections (a Linear row); on a conv it is ``conv_avg``."""
    name, pruner_class = "neuron", "NeuronStructureParameterPruner"


def redundancy_rank(dist: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Removal step of each channel: repeatedly the closest remaining pair loses its smaller-magnitude member
    (the lower index on a tie). ``dist`` is a symmetric (C, C) distance, ``magnitude`` (C,)."""
    d = dist.detach().double().cpu().numpy().copy()
    mag = magnitude.detach().double().cpu().numpy()
    c = d.shape[0]
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)                      # each row's closest remaining channel, updated lazily
    rank = np.full(c, c - 1, dtype=np.float64)
    for step in range(c - 1):
        i = int(np.argmin(d[np.arange(c), nearest]))
        j = int(nearest[i])
        drop = i if (mag[i], i) < (mag[j], j) else j
        rank[drop] = step
        d[drop, :] = np.inf
        d[:, drop] = np.inf
        stale = np.flatnonzero(nearest == drop)
        nearest[stale] = d[stale].argmin(1)
    return torch.from_numpy(rank).float()


@_register
class ConvSimilarity(Criterion):
    name, pruner_class = "conv_similarity", "ConvSimilarityStructureParameterPruner"

    def channel_scores(self, root_name, root):
        w = _filters(root).double()
        unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return redundancy_rank(1.0 - unit @ unit.T, w.abs().sum(1))


# ---------------------------------------------------------------- BN criteria (need the group structure)

BNBlocks = List[Tuple[nn.modules.batchnorm._BatchNorm, List[List[int]]]]


class _GroupBN(Criterion):
    """Finds, in ``prepare``, every BN whose channels each root's group removes; scores read them live."""
    needs_data = True

    def __init__(self):
        self.bns: Dict[str, BNBlocks] = {}

    def prepare(self, model, batches, roots):
        x = take_batches(batches, 1, self.name)[0][0]
        for name, layers in coupled_layers(model, x, list(roots)).items():
            self.bns[name] = [(c.module, c.blocks) for c in layers
                              if c.out and isinstance(c.module, nn.modules.batchnorm._BatchNorm) and c.module.affine]

    def _per_channel(self, root_name: str, attr: str, absolute: bool = True) -> List[torch.Tensor]:
        """One (C,) tensor per BN of the group: ``attr`` (|attr|) summed over the BN channels of each root channel."""
        if root_name not in self.bns:
            raise UserError(f"{self.name}: {root_name!r} is unknown; call prepare(model, batches, roots) with it first")
        out = []
        for bn, blocks in self.bns[root_name]:
            v = getattr(bn, attr).detach()
            out.append((v.abs() if absolute else v)[torch.tensor(blocks)].sum(1))  # blocks: (C, k) indices
        return out

    def channel_scores(self, root_name, root):
        gammas = self._per_channel(root_name, "weight")
        if not gammas:
            log.info("%s: no BN follows %s; ranking it by L1", self.name, root_name)
            return L1().channel_scores(root_name, root)
        return self.scores_from(root_name, gammas)

    def scores_from(self, root_name: str, gammas: List[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@_register
class BNGamma(_GroupBN):
    """Network slimming: channels with small |gamma| contribute little and go first."""
    name, pruner_class = "bn", "BNGammaStructureParameterPruner"
    comparable_across_layers = True

    def scores_from(self, root_name, gammas):
        return torch.stack(gammas).sum(0)


@_register
class BNSimilarity(_GroupBN):
    name, pruner_class = "bn_similarity", "BNSimilarityStructureParameterPruner"

    def scores_from(self, root_name, gammas):
        signed = self._per_channel(root_name, "weight", False) + self._per_channel(root_name, "bias", False)
        feats = torch.stack(signed, 1).double()
        return redundancy_rank(torch.cdist(feats, feats), torch.stack(gammas).sum(0))


@contextlib.contextmanager
def bn_sparsity(model: nn.Module, s: float) -> Iterator[None]:
    """Network slimming's sparsity training: adds ``s * sign(gamma)`` to every BN gamma's gradient
    (the subgradient of ``s * sum |gamma|``) while active."""
    hooks = []
    if s > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                w = m.weight
                hooks.append(w.register_hook(lambda g, w=w: g + s * torch.sign(w.detach())))
        if not hooks:
            raise UserError("BN sparsity (--sr): the model has no affine BatchNorm layer to make sparse")
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
