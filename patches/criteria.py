"""Pruning criteria: each ranks the root channels of a group; lowest score is removed first.

Adding a criterion is one small class: subclass ``Criterion``, set ``name`` and ``pruner_class`` (the
YAML pruner class that selects it), implement ``channel_scores``. Data-driven criteria also override
``prepare`` to collect statistics from a few batches.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Type

import numpy as np
import torch
import torch.nn as nn

from common.errors import UserError

log = logging.getLogger(__name__)

CRITERIA: Dict[str, Type["Criterion"]] = {}


def _register(cls: Type["Criterion"]) -> Type["Criterion"]:
    CRITERIA[cls.name] = cls
    return cls


class Criterion:
    name = ""
    pruner_class = ""
    needs_data = False

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor], roots: Dict[str, nn.Module]) -> None:
        """Collect data statistics for ``roots`` (name -> module). Weight-only criteria need nothing."""

    def channel_scores(self, root_name: str, root: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def order(self, root_name: str, root: nn.Module) -> List[int]:
        """Root channels from least to most important (ties broken by index, deterministically)."""
        s = self.channel_scores(root_name, root).detach().double().cpu().numpy()
        return [int(i) for i in np.lexsort((np.arange(len(s)), s))]

    def select(self, root_name: str, root: nn.Module, n: int) -> List[int]:
        """Indices of the ``n`` least important root channels, ascending."""
        return sorted(self.order(root_name, root)[:max(n, 0)])


def _filters(root: nn.Module) -> torch.Tensor:
    return root.weight.detach().flatten(1)


@_register
class L1(Criterion):
    name, pruner_class = "l1", "L1RankedStructureParameterPruner"

    def channel_scores(self, root_name, root):
        return _filters(root).abs().sum(1)


@_register
class L2(Criterion):
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


def state_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@_register
class HRank(Criterion):
    """HRank: average matrix rank of each output feature map over ``limit`` batches (low rank goes first).
    Ranks are cached per model fingerprint under ``cache_dir`` (the seed tool's work_space/rank_conv)."""
    name, pruner_class = "hrank", "HRankStructureParameterPruner"
    needs_data = True

    def __init__(self, limit: int = 5, cache_dir: Optional[str] = "work_space/rank_conv", tag: str = "model"):
        self.limit, self.cache_dir, self.tag = limit, cache_dir, tag
        self.ranks: Dict[str, torch.Tensor] = {}

    def prepare(self, model, batches, roots):
        folder = Path(self.cache_dir) / f"{self.tag}_{state_fingerprint(model)}_limit{self.limit}" \
            if self.cache_dir else None
        todo = {}
        for name, m in roots.items():
            f = folder / f"{name}.npy" if folder else None
            if f is not None and f.exists():
                self.ranks[name] = torch.from_numpy(np.load(f))
            elif isinstance(m, nn.modules.conv._ConvNd):
                todo[name] = m
        if not todo:
            return
        sums: Dict[str, torch.Tensor] = {n: torch.zeros(m.out_channels, dtype=torch.float64) for n, m in todo.items()}
        counts = {"n": 0}

        def hook(name):
            def fn(mod, inp, out):
                sums[name] += torch.linalg.matrix_rank(out.detach().double()).sum(0).cpu()
            return fn

        hooks = [m.register_forward_hook(hook(n)) for n, m in todo.items()]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i, x in enumerate(batches):
                    if i >= self.limit:
                        break
                    model(x)
                    counts["n"] += x.shape[0]
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        if counts["n"] == 0:
            raise UserError("hrank: the data loader yielded no batches")
        for n in todo:
            self.ranks[n] = (sums[n] / counts["n"]).float()
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{n}.npy", self.ranks[n].numpy())

    def channel_scores(self, root_name, root):
        if root_name not in self.ranks:
            # rank of a vector is uninformative: Linear groups fall back to L1
            log.info("hrank: %s is not a convolution; ranking it by L1", root_name)
            return L1().channel_scores(root_name, root)
        return self.ranks[root_name]


def make_criterion(name: str, **kwargs) -> Criterion:
    if name not in CRITERIA:
        raise UserError(f"unknown pruning criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    cls = CRITERIA[name]
    import inspect
    accepted = inspect.signature(cls.__init__).parameters if cls.__init__ is not Criterion.__init__ else {}
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def criterion_for_pruner_class(pruner_class: str) -> str:
    for name, cls in CRITERIA.items():
        if cls.pruner_class == pruner_class:
            return name
    known = ", ".join(sorted(c.pruner_class for c in CRITERIA.values()))
    raise UserError(f"unknown pruner class {pruner_class!r}; known: {known}")


from patches import criteria_data, criteria_stats  # noqa: E402,F401  (register the data and statistics criteria)
