"""Genetic algorithm: elitism, tournament selection, blend (BLX-alpha) crossover, Gaussian mutation."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from compression_tool.engine.search.base import Fitness, Searcher

State = Tuple[np.ndarray, np.ndarray]   # population, scores


class GeneticSearch(Searcher):
    name = "ga"

    def __init__(self, *args, elite: int = 2, tournament: int = 3, crossover: float = 0.9, alpha: float = 0.3,
                 mutation: Optional[float] = None, sigma: float = 0.15, **kw):
        super().__init__(*args, **kw)
        self.elite = max(1, min(elite, self.population - 1))
        self.tournament, self.crossover, self.alpha = tournament, crossover, alpha
        self.mutation, self.sigma = mutation, sigma

    def start(self, fitness: Fitness, n_groups: int, budget: Optional[float]) -> State:
        return self.evaluate_all(fitness, self.initial_population(n_groups, budget))

    def select(self, scores: np.ndarray) -> int:
        """Tournament: the best of ``tournament`` members drawn at random."""
        entrants = self.rng.choice(len(scores), size=min(self.tournament, len(scores)), replace=False)
        return int(entrants[np.argmax(scores[entrants])])

    def child(self, a: np.ndarray, b: np.ndarray, iteration: int) -> np.ndarray:
        if self.rng.random() < self.crossover:
            u = self.rng.uniform(-self.alpha, 1.0 + self.alpha, size=a.shape)
            c = a + u * (b - a)
        else:
            c = a.copy()
        rate = self.mutation if self.mutation is not None else max(1.0 / len(a), 0.2)
        hit = self.rng.random(len(a)) < rate
        # the step shrinks over the run: explore first, refine later
        scale = self.sigma * (self.high - self.low) * (1.0 - 0.8 * iteration / max(self.iterations - 1, 1))
        c[hit] += self.rng.normal(0.0, scale, size=int(hit.sum()))
        return self.clip(c)

    def step(self, fitness: Fitness, state: State, iteration: int) -> State:
        pop, scores = state
        order = np.argsort(-scores, kind="stable")
        keep = order[: self.elite]
        children = np.stack([self.child(pop[self.select(scores)], pop[self.select(scores)], iteration)
                             for _ in range(self.population - self.elite)])
        kids, kid_scores = self.evaluate_all(fitness, children)
        return np.concatenate([pop[keep], kids]), np.concatenate([scores[keep], kid_scores])
