"""Particle swarm optimisation: inertia decreasing linearly, cognitive and social pulls, velocity clamp."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from compression_tool.engine.search.base import Fitness, Searcher


@dataclass
class Swarm:
    x: np.ndarray
    v: np.ndarray
    best_x: np.ndarray
    best_s: np.ndarray


class ParticleSwarmSearch(Searcher):
    name = "pso"

    def __init__(self, *args, w_start: float = 0.9, w_end: float = 0.4, c1: float = 1.5, c2: float = 1.5,
                 v_max: float = 0.2, **kw):
        super().__init__(*args, **kw)
        self.w_start, self.w_end, self.c1, self.c2 = w_start, w_end, c1, c2
        self.v_max = v_max * (self.high - self.low)

    def start(self, fitness: Fitness, n_groups: int, budget: Optional[float]) -> Swarm:
        x, s = self.evaluate_all(fitness, self.initial_population(n_groups, budget))
        v = self.rng.uniform(-self.v_max, self.v_max, size=x.shape)
        return Swarm(x, v, x.copy(), s.copy())

    def step(self, fitness: Fitness, sw: Swarm, iteration: int) -> Swarm:
        w = self.w_start + (self.w_end - self.w_start) * iteration / max(self.iterations - 1, 1)
        g = sw.best_x[np.argmax(sw.best_s)]
        r1, r2 = self.rng.random(sw.x.shape), self.rng.random(sw.x.shape)
        v = w * sw.v + self.c1 * r1 * (sw.best_x - sw.x) + self.c2 * r2 * (g - sw.x)
        v = np.clip(v, -self.v_max, self.v_max)
        x, s = self.evaluate_all(fitness, self.clip(sw.x + v))
        better = s > sw.best_s
        sw.best_x[better], sw.best_s[better] = x[better], s[better]
        return Swarm(x, v, sw.best_x, sw.best_s)
