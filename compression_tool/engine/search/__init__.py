"""Per-layer pruning-ratio search under a FLOPs/params budget: GA, PSO, ABC, ACO behind one interface.

    searcher = make_searcher("abc", population=10, iterations=10, seed=0)
    ratios = searcher.search(fitness, n_groups, budget)      # best ratio per prunable group
"""
from __future__ import annotations

from typing import Dict, Type

from compression_tool.engine.search.abc import BeeColonySearch
from compression_tool.engine.search.aco import AntColonySearch
from compression_tool.engine.search.base import Fitness, Searcher, SearchTrace
from compression_tool.engine.search.ga import GeneticSearch
from compression_tool.engine.search.pso import ParticleSwarmSearch
from compression_tool.io.errors import UserError

ALGORITHMS: Dict[str, Type[Searcher]] = {cls.name: cls for cls in
                                         (GeneticSearch, ParticleSwarmSearch, BeeColonySearch, AntColonySearch)}


def make_searcher(name: str, **kw) -> Searcher:
    """A searcher by name (ga, pso, abc, aco) with population/iterations/seed/low/high/progress settings."""
    if name not in ALGORITHMS:
        raise UserError(f"--algo: unknown search algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](**kw)


__all__ = ["ALGORITHMS", "Fitness", "SearchTrace", "Searcher", "make_searcher", "GeneticSearch",
           "ParticleSwarmSearch", "BeeColonySearch", "AntColonySearch"]
