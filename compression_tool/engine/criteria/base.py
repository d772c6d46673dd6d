"""Pruning criteria: each scores a whole coupled group, one score per root channel; lowest is removed first.

The interface is torch-pruning's ``Importance.__call__(group)`` shape::

    crit = make_criterion("l1", reduction="mean")
    scores = crit(index, group)          # Tensor[group.channels]; index: GroupIndex, group: PrunableGroup
    crit.order(index, group)             # root channels, least important first
    crit.select(index, group, n)         # the n least important, ascending

``index.coupled(group)`` gives every coupled slice (root filters, BN, PReLU, the consumers' input columns, mapped
per root channel). Adding a criterion is one small class: subclass ``Criterion``, set ``name`` and
``pruner_class`` (the YAML pruner class that selects it) and implement ``__call__`` — or, for a statistic measured
at the group's root or activation, ``channel_scores(root_name, root)``, which the default ``__call__`` reads.
Data-driven criteria also override ``prepare`` to collect statistics from a few batches.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Type

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

CRITERIA: Dict[str, Type["Criterion"]] = {}


def _register(cls: Type["Criterion"]) -> Type["Criterion"]:
    CRITERIA[cls.name] = cls
    return cls


class Criterion:
    name = ""
    pruner_class = ""
    needs_data = False
    comparable_across_layers = False    # True: raw scores of different layers may be ranked together (BN gammas)

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor], roots: Dict[str, nn.Module]) -> None:
        """Collect data statistics for ``roots`` (name -> module). Weight-only criteria need nothing."""

    def __call__(self, index: GroupIndex, group: PrunableGroup) -> torch.Tensor:
        """One score per root channel of ``group`` (``index`` is the GroupIndex it belongs to)."""
        return self.channel_scores(group.root_name, group.root)

    def channel_scores(self, root_name: str, root: nn.Module) -> torch.Tensor:
        """The statistic measured at a group's root (its filters, or its activation for data criteria)."""
        raise NotImplementedError

    def order(self, index: GroupIndex, group: PrunableGroup) -> List[int]:
        """Root channels from least to most important (ties broken by index, deterministically)."""
        s = self(index, group).detach().double().cpu().numpy()
        if len(s) != group.channels:
            raise UserError(f"{self.name}: {len(s)} scores for the {group.channels} channels of {group.name}")
        return [int(i) for i in np.lexsort((np.arange(len(s)), s))]

    def select(self, index: GroupIndex, group: PrunableGroup, n: int) -> List[int]:
        """Indices of the ``n`` least important root channels, ascending."""
        return sorted(self.order(index, group)[:max(n, 0)])


def _filters(root: nn.Module) -> torch.Tensor:
    return root.weight.detach().flatten(1)


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


def describe_criteria() -> str:
    """One line per criterion (name: first line of its docstring), for ``--help``."""
    def summary(cls: Type[Criterion]) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else cls.pruner_class
    return "\n".join(f"  {name:<16}{summary(cls)}" for name, cls in sorted(CRITERIA.items()))
