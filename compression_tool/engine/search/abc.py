"""Artificial bee colony (Karaboga), with a modification rate: employed bees, onlookers, scouts.

Each food source is a ratio vector. Employed and onlooker bees move a source towards/away from a random other
one on a random subset of coordinates (each with probability ``mr``, at least one) and keep the move only
when it is better; a source not improved for ``limit`` tries is abandoned and a scout draws a new one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from compression_tool.engine.search.base import Fitness, Searcher


@dataclass
class Hive:
    foods: np.ndarray
    scores: np.ndarray
    trials: np.ndarray


class BeeColonySearch(Searcher):
    name = "abc"

    def __init__(self, *args, limit: Optional[int] = None, mr: float = 0.3, **kw):
        super().__init__(*args, **kw)
        self.limit, self.mr = limit, mr

    def start(self, fitness: Fitness, n_groups: int, budget: Optional[float]) -> Hive:
        foods, scores = self.evaluate_all(fitness, self.initial_population(n_groups, budget))
        if self.limit is None:
            self.limit = max(3, n_groups)
        return Hive(foods, scores, np.zeros(len(foods), dtype=int))

    def neighbour(self, foods: np.ndarray, i: int) -> np.ndarray:
        k = int(self.rng.choice([j for j in range(len(foods)) if j != i]))
        dims = self.rng.random(foods.shape[1]) < self.mr
        dims[self.rng.integers(foods.shape[1])] = True
        v = foods[i].copy()
        phi = self.rng.uniform(-1.0, 1.0, size=int(dims.sum()))
        v[dims] += phi * (foods[i, dims] - foods[k, dims])
        return self.clip(v)

    def try_move(self, fitness: Fitness, hive: Hive, i: int) -> None:
        v, s = self.evaluate(fitness, self.neighbour(hive.foods, i))
        if s > hive.scores[i]:
            hive.foods[i], hive.scores[i], hive.trials[i] = v, s, 0
        else:
            hive.trials[i] += 1

    def onlooker_choice(self, scores: np.ndarray) -> int:
        """Richer sources (higher fitness) attract more onlookers."""
        w = scores - scores.min()
        p = w / w.sum() if w.sum() > 0 else np.full(len(scores), 1.0 / len(scores))
        return int(self.rng.choice(len(scores), p=p))

    def step(self, fitness: Fitness, hive: Hive, iteration: int) -> Hive:
        for i in range(len(hive.foods)):                      # employed bees
            self.try_move(fitness, hive, i)
        for _ in range(len(hive.foods)):                      # onlooker bees
            self.try_move(fitness, hive, self.onlooker_choice(hive.scores))
        worn = int(np.argmax(hive.trials))                    # scout: abandon the most exhausted source
        if hive.trials[worn] > self.limit and int(np.argmax(hive.scores)) != worn:
            hive.foods[worn], hive.scores[worn] = self.evaluate(fitness, self.random_points(1, hive.foods.shape[1])[0])
            hive.trials[worn] = 0
        return hive
