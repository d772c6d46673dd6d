"""Per-layer pruning-ratio search under a FLOPs/params budget: GA, PSO, ABC, ACO behind one interface.

    searcher = make_searcher("abc", population=10, iterations=10, seed=0)
    ratios = searcher.search(fitness, n_groups, budget)      # best ratio per prunable group
"""
from __future__ import annotations

from typing import Dict, Type

from common.errors import UserError
from core.search.abc import BeeColonySearch
from core.search.aco import AntColonySearch
from core.search.base import Fitness, SearchTrace, Searcher
from core.search.ga import GeneticSearch
from core.search.pso import ParticleSwarmSearch

ALGORITHMS: Dict[str, Type[Searcher]] = {cls.name: cls for cls in
                                         (GeneticSearch, ParticleSwarmSearch, BeeColonySearch, AntColonySearch)}


def make_searcher(name: str, **kw) -> Searcher:
    """A searcher by name (ga, pso, abc, aco) with population/iterations/seed/low/high/progress settings."""
    if name not in ALGORITHMS:
        raise UserError(f"--algo: unknown search algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](**kw)


__all__ = ["ALGORITHMS", "Fitness", "SearchTrace", "Searcher", "make_searcher", "GeneticSearch",
           "ParticleSwarmSearch", "BeeColonySearch", "AntColonySearch"]
