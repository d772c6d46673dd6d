"""The common interface of the per-layer ratio searchers (GA, PSO, ABC, ACO).

A searcher maximises ``fitness(ratios) -> float`` over the box ``[low, high] ** n_groups`` with a seeded RNG
and returns the best ratio vector found. A fitness may also have ``project(ratios) -> ratios`` (e.g. the
pruning fitness scales a candidate onto the FLOPs budget); searchers then keep the projected candidate
(a Lamarckian repair), so the population always holds feasible schedules. A fitness may have
``prefetch(points)``: a whole population is handed to it before it is scored one by one (the pruning fitness then
evaluates the population on its worker pool).

``budget`` is the fraction of the cost to keep (e.g. 0.5 FLOPs); it only places one member of the first
population at the uniform ratio ``1 - sqrt(budget)`` (a conv's cost scales with the square of its width), so
the search starts from the uniform schedule and can only improve on it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

Fitness = Callable[[np.ndarray], float]


@dataclass
class SearchTrace:
    """What a search did: best score after each iteration, evaluations made."""
    best_scores: List[float] = field(default_factory=list)
    evaluations: int = 0


class Searcher:
    """Base class: holds the settings, the RNG, the best-so-far and the progress bar."""

    name = ""

    def __init__(self, population: int = 10, iterations: int = 10, seed: int = 0, low: float = 0.0,
                 high: float = 0.9, progress: bool = True):
        if population < 2:
            raise UserError(f"--population must be >= 2, got {population}")
        if iterations < 1:
            raise UserError(f"--iterations must be >= 1, got {iterations}")
        if not 0.0 <= low < high <= 1.0:
            raise UserError(f"search bounds must satisfy 0 <= low < high <= 1, got {low}, {high}")
        self.population, self.iterations, self.seed = population, iterations, seed
        self.low, self.high, self.progress = low, high, progress
        self.rng = np.random.default_rng(seed)
        self.trace = SearchTrace()
        self.best_x: Optional[np.ndarray] = None
        self.best_score = -math.inf

    # ------------------------------------------------------------------ helpers for the algorithms

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.low, self.high)

    def random_points(self, n: int, n_groups: int) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, size=(n, n_groups))

    def initial_population(self, n_groups: int, budget: Optional[float]) -> np.ndarray:
        """Random points; the first one is the uniform schedule for ``budget`` when a budget is given."""
        pop = self.random_points(self.population, n_groups)
        if budget is not None:
            pop[0] = self.clip(np.full(n_groups, 1.0 - math.sqrt(min(max(budget, 0.0), 1.0))))
        return pop

    def projected(self, fitness: Fitness, x: np.ndarray) -> np.ndarray:
        """``x`` projected (when the fitness can) and clipped: the point the searcher keeps."""
        project = getattr(fitness, "project", None)
        return self.clip(np.asarray(project(x) if project is not None else x, dtype=float))

    def score(self, fitness: Fitness, x: np.ndarray) -> float:
        """Score a projected point and remember the best."""
        score = float(fitness(x))
        self.trace.evaluations += 1
        if score > self.best_score:
            self.best_score, self.best_x = score, x.copy()
        return score

    def evaluate(self, fitness: Fitness, x: np.ndarray) -> Tuple[np.ndarray, float]:
        """Project (when the fitness can), score, and remember the best; returns (point, score)."""
        x = self.projected(fitness, x)
        return x, self.score(fitness, x)

    def evaluate_all(self, fitness: Fitness, xs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """A population: projected, handed to the fitness's ``prefetch`` when it has one (``--workers``: evaluated
        in parallel into its cache), then scored in order, so the search is the serial one whatever the pool."""
        points = [self.projected(fitness, x) for x in xs]
        prefetch = getattr(fitness, "prefetch", None)
        if prefetch is not None:
            prefetch(points)
        return np.stack(points), np.array([self.score(fitness, x) for x in points])

    # ------------------------------------------------------------------ the interface

    def search(self, fitness: Fitness, n_groups: int, budget: Optional[float] = None) -> np.ndarray:
        """Maximise ``fitness`` over ``n_groups`` ratios; returns the best ratio vector found."""
        if n_groups < 1:
            raise UserError("nothing to search: the model has no prunable groups")
        state = self.start(fitness, n_groups, budget)
        bar = tqdm(range(self.iterations), desc=f"search {self.name}", unit="it", disable=not self.progress,
                   dynamic_ncols=True)
        for it in bar:
            state = self.step(fitness, state, it)
            self.trace.best_scores.append(self.best_score)
            bar.set_postfix(best=f"{self.best_score:.4g}", evals=self.trace.evaluations)
        bar.close()
        log.info("%s: best fitness %.4g after %d evaluations", self.name, self.best_score, self.trace.evaluations)
        assert self.best_x is not None
        return self.best_x.copy()

    def start(self, fitness: Fitness, n_groups: int, budget: Optional[float]):
        """Build and score the first population; returns the algorithm's state."""
        raise NotImplementedError

    def step(self, fitness: Fitness, state, iteration: int):
        """One iteration (generation / swarm move / bee cycle / ant tour); returns the new state."""
        raise NotImplementedError
