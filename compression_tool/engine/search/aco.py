"""Ant colony optimisation for continuous domains (ACO_R, Socha & Dorigo 2008).

The pheromone is an archive of the ``population`` best solutions, ranked. Each ant picks a guide from the
archive (rank-weighted Gaussian, parameter ``q``) and samples every coordinate from a normal centred on the
guide with the spread of the archive along that coordinate (times ``xi``); the archive keeps the best.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from compression_tool.engine.search.base import Fitness, Searcher

State = Tuple[np.ndarray, np.ndarray]   # archive (best first), scores


class AntColonySearch(Searcher):
    name = "aco"

    def __init__(self, *args, q: float = 0.3, xi: float = 0.85, min_sigma: float = 0.005, **kw):
        super().__init__(*args, **kw)
        self.q, self.xi = q, xi
        self.min_sigma = min_sigma * (self.high - self.low)

    @staticmethod
    def _ranked(xs: np.ndarray, scores: np.ndarray, k: int) -> State:
        order = np.argsort(-scores, kind="stable")[:k]
        return xs[order], scores[order]

    def start(self, fitness: Fitness, n_groups: int, budget: Optional[float]) -> State:
        xs, scores = self.evaluate_all(fitness, self.initial_population(n_groups, budget))
        return self._ranked(xs, scores, self.population)

    def guide_weights(self, k: int) -> np.ndarray:
        rank = np.arange(k)
        w = np.exp(-(rank ** 2) / (2.0 * (self.q * k) ** 2))
        return w / w.sum()

    def step(self, fitness: Fitness, state: State, iteration: int) -> State:
        archive, scores = state
        k = len(archive)
        p = self.guide_weights(k)
        ants = np.empty((self.population, archive.shape[1]))
        for a in range(self.population):
            guide = archive[int(self.rng.choice(k, p=p))]
            sigma = self.xi * np.abs(archive - guide).sum(0) / max(k - 1, 1)
            ants[a] = self.clip(self.rng.normal(guide, np.maximum(sigma, self.min_sigma)))
        xs, s = self.evaluate_all(fitness, ants)
        return self._ranked(np.concatenate([archive, xs]), np.concatenate([scores, s]), k)
