"""The fitness of a per-group pruning-ratio candidate, and its repair onto a FLOPs/params budget.

``PruningFitness(ratios)``:
  1. repair: move the candidate (keeping its shape) until the thinned model's cost is within
     ``[budget - tolerance, budget]`` of the unpruned cost (a cost model predicts the cost without thinning);
  2. thin a deep copy of the model: each group loses its lowest-ranked channels under the chosen criterion;
  3. cheap proxy: re-estimate the BatchNorm statistics on a few training batches (pruning shifts them);
  4. evaluate on a small held-out subset; the score is the first metric (top-1) minus ``loss_weight`` x loss.
Scores are cached per distinct channel-count vector (many candidates round to the same model).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.cost import RESOURCES, CostModel, params_and_macs, thinned_copy
from compression_tool.engine.criteria import Criterion
from compression_tool.engine.device import to_model_device
from compression_tool.engine.groups import GroupIndex
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], Mapping[str, float]]
Plan = Dict[str, List[int]]                          # {group name: root channels to remove}
PlanPool = Callable[[List[Plan]], Iterator[Tuple[int, Mapping[str, float]]]]


# ---------------------------------------------------------------------------- BN re-calibration

@torch.no_grad()
def bn_recalibrate(model: nn.Module, batches: Iterable, max_batches: Optional[int] = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (plain average) on ``batches``.

    Only the BN layers run in training mode (dropout stays off). Returns the number of batches used; the
    model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None          # cumulative average over the calibration batches
        m.train()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            model(to_model_device(model, batch[0] if isinstance(batch, (list, tuple)) else batch))
            used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    if used == 0:
        raise UserError("BN re-calibration: the calibration data yielded no batches")
    return used


def recalibrated_copy(model: nn.Module, x: torch.Tensor, plan: Plan, ignore: Sequence[str],
                      calib_batches: Iterable) -> nn.Module:
    """A candidate as the fitness evaluates it: ``model`` thinned by ``plan``, its BN statistics re-estimated."""
    thin = thinned_copy(model, x, plan, ignore)
    bn_recalibrate(thin, calib_batches)
    return thin


# ---------------------------------------------------------------------------- fitness

@dataclass
class Candidate:
    pruned: Tuple[int, ...]          # channels removed per group (index.groups order)
    cost: float                      # predicted resource of the thinned model
    score: Optional[float] = None
    metrics: Optional[Dict[str, float]] = None


def default_score(metrics: Mapping[str, float], loss_weight: float = 1.0) -> float:
    """First metric (top-1 %, or verification accuracy) minus ``loss_weight`` x loss when there is one: the
    loss breaks ties smoothly on a small subset where top-1 moves in coarse steps."""
    first = float(next(iter(metrics.values())))
    return first - loss_weight * float(metrics.get("loss", 0.0))


class PruningFitness:
    """``fitness(ratios) -> score`` for the searchers; ``project(ratios)`` snaps a candidate onto the budget."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, criterion: Criterion, evaluate: EvalFn,
                 calib_batches: Sequence, budget: float, resource: str = "macs", tolerance: float = 0.02,
                 high: float = 0.9, ignore: Sequence[str] = (), loss_weight: float = 1.0,
                 index: Optional[GroupIndex] = None, latency=None, pool: Optional[PlanPool] = None):
        """``latency``: an ``engine.latency.LatencyModel`` — required for ``resource='latency_ms'`` (the budget
        is then a fraction of the latency measured on its runtime). ``pool`` (``--workers``): evaluates
        ``[plan…]`` elsewhere (each worker: ``recalibrated_copy`` of its replica, then the same evaluation) and
        yields ``(index, metrics)`` in any order; ``prefetch`` hands it whole populations."""
        self.pool = pool
        if resource not in RESOURCES + ("latency_ms",) or (resource == "latency_ms") != (latency is not None):
            raise UserError(f"unknown budget resource {resource!r}; expected one of {RESOURCES + ('latency_ms',)} "
                            "(latency_ms needs a latency model)")
        flag = {"macs": "flops", "params": "params", "latency_ms": "latency"}[resource]
        if not 0.0 < budget < 1.0:
            raise UserError(f"--{flag}: the fraction of the model to keep must be in (0, 1), got {budget}")
        self.model, self.x, self.evaluate_fn = model.eval(), example_inputs, evaluate
        self.calib_batches, self.ignore, self.loss_weight = list(calib_batches), list(ignore), loss_weight
        self.index = index or GroupIndex(model, example_inputs, ignore=ignore)
        self.groups = self.index.groups
        if not self.groups:
            raise UserError("the model has no prunable channel groups")
        self.orders = [criterion.order(self.index, g) for g in self.groups]
        self.channels = np.array([g.channels for g in self.groups])
        self.max_pruned = np.array([g.n_prune(high) for g in self.groups])
        self.resource, self.tolerance = resource, tolerance
        self.full = params_and_macs(model, example_inputs)
        self.latency = latency
        if latency is not None:
            from compression_tool.engine.latency import GroupLatencyModel

            self.full["latency_ms"] = latency.base
            self.costs = GroupLatencyModel(latency, model, self.index, example_inputs)
        else:
            self.costs = CostModel(model, self.index, example_inputs, ignore)
        self.target = budget * self.full[resource]
        self.cache: "OrderedDict[Tuple[int, ...], Candidate]" = OrderedDict()
        floor_cost = self.cost(self.max_pruned)
        if floor_cost > self.target:
            raise UserError(f"--{flag} {budget}: even pruning every group "
                            f"by {high:.0%} leaves {floor_cost / self.full[resource]:.3f} of the model")

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    # -------------------------------------------------------------- candidates and the budget

    def cost(self, pruned: np.ndarray) -> float:
        return self.costs.predict(self.channels - np.asarray(pruned))[self.resource]

    def counts(self, ratios: np.ndarray) -> np.ndarray:
        """Channels removed per group at ``ratios`` (Distiller's floor, capped at the search bound)."""
        r = np.clip(np.asarray(ratios, dtype=float), 0.0, 1.0)
        return np.minimum(np.array([g.n_prune(float(s)) for g, s in zip(self.groups, r)]), self.max_pruned)

    def ratios(self, pruned: Sequence[int]) -> np.ndarray:
        return np.asarray(pruned, dtype=float) / self.channels

    def _along(self, ratios: np.ndarray, t: float) -> np.ndarray:
        """t in [-1, 1]: -1 = no pruning, 0 = the candidate, 1 = every group at the bound. Cost falls with t."""
        high = self.max_pruned / self.channels
        r = ratios * (1.0 + t) if t < 0 else ratios + t * (high - ratios)
        return self.counts(r)

    def repair(self, ratios: np.ndarray) -> np.ndarray:
        """Channel counts of the candidate moved along ``_along`` to the cheapest point that meets the budget,
        then filled back channel by channel while the cost stays within the budget."""
        ratios = np.clip(np.asarray(ratios, dtype=float), 0.0, self.max_pruned / self.channels)
        lo, hi = -1.0, 1.0                     # invariant: cost(hi) <= target
        if self.cost(self._along(ratios, lo)) <= self.target:
            hi = lo
        for _ in range(40):
            if hi - lo < 1e-6:
                break
            mid = (lo + hi) / 2
            if self.cost(self._along(ratios, mid)) <= self.target:
                hi = mid
            else:
                lo = mid
        return self._fill(self._along(ratios, hi))

    def _fill(self, pruned: np.ndarray) -> np.ndarray:
        """Give channels back until the cost is close to the budget: the single channel that adds the most
        while staying within it; when no single channel fits (coarse groups), give one back and take the
        finest-grained channels elsewhere until within the budget again (a swap)."""
        pruned = pruned.copy()
        cost = self.cost(pruned)
        while cost < self.target * (1.0 - self.tolerance / 4):
            moves = [self._give_back(pruned, j) for j in np.flatnonzero(pruned > 0)]
            fits = [(c, m) for m, c in moves if c <= self.target]
            if not fits:
                swaps = [self._trim(m, frozen=j) for (m, _), j in zip(moves, np.flatnonzero(pruned > 0))]
                fits = [(self.cost(m), m) for m in swaps if m is not None]
            fits = [(c, m) for c, m in fits if c > cost]
            if not fits:
                break
            cost, pruned = max(fits, key=lambda cm: cm[0])
        return pruned

    def _give_back(self, pruned: np.ndarray, j: int) -> Tuple[np.ndarray, float]:
        moved = pruned.copy()
        moved[j] = self.groups[j].snap(moved[j] - self.groups[j].round_to)   # one step: round_to channels
        return moved, self.cost(moved)

    def _trim(self, pruned: np.ndarray, frozen: int) -> Optional[np.ndarray]:
        """Remove the cheapest single channels (never from group ``frozen``) until within the budget."""
        pruned = pruned.copy()
        cost = self.cost(pruned)
        while cost > self.target:
            options = []
            for i in np.flatnonzero(pruned < self.max_pruned):
                if i != frozen:
                    step = self._take(pruned, int(i))
                    if step is None:
                        continue
                    old, pruned[i] = pruned[i], step
                    options.append((cost - self.cost(pruned), int(i), step))
                    pruned[i] = old
            options = [o for o in options if o[0] > 0]
            if not options:
                return None
            drop, i, step = min(options)
            pruned[i] = step
            cost -= drop
        return pruned

    def _take(self, pruned: np.ndarray, i: int) -> Optional[int]:
        """Group ``i``'s count after removing one more step (``round_to`` channels), None past the bound."""
        g = self.groups[i]
        n = g.snap(int(pruned[i]) + g.round_to)
        return n if int(pruned[i]) < n <= self.max_pruned[i] else None

    def project(self, ratios: np.ndarray) -> np.ndarray:
        """The repaired candidate as exact ratios (what the searchers keep)."""
        return self.ratios(self.repair(ratios))

    # -------------------------------------------------------------- evaluation

    def plan(self, pruned: Sequence[int]) -> Plan:
        """{group name: root channels to remove} for channel counts ``pruned``."""
        return {g.name: sorted(order[:int(n)]) for g, order, n in zip(self.groups, self.orders, pruned) if n > 0}

    def build(self, pruned: Sequence[int]) -> nn.Module:
        """The thinned, BN-recalibrated copy for channel counts ``pruned``."""
        return recalibrated_copy(self.model, self.x, self.plan(pruned), self.ignore, self.calib_batches)

    def exact_costs(self, pruned: Sequence[int]) -> Dict[str, float]:
        """Params and MACs counted on the really thinned model (the cost model's check); with a latency
        model also its latency predicted from the per-layer tables at the thinned model's exact widths."""
        thin = thinned_copy(self.model, self.x, self.plan(pruned), self.ignore)
        out = params_and_macs(thin, self.x)
        if self.latency is not None:
            out["latency_ms"] = self.latency.predict(thin)
        return out

    def meet_exactly(self, pruned: np.ndarray) -> Tuple[np.ndarray, Dict[str, float]]:
        """Counts whose *counted* cost is within the budget: when the cost model under-estimated (layers with
        biases), aim a little lower and repair again. Returns (counts, exact costs)."""
        target = self.target
        try:
            # latency: the fast group predictor and the per-layer tables of the exact widths can disagree by more
            # than the MACs model does, so allow more (and slightly deeper) tightening steps
            steps, extra = (12, 0.98) if self.resource == "latency_ms" else (5, 1.0)
            for _ in range(steps):
                exact = self.exact_costs(pruned)
                if exact[self.resource] <= target:
                    return pruned, exact
                log.info("cost model under-estimated (%.0f > %.0f); tightening", exact[self.resource], target)
                self.target *= extra * target / exact[self.resource]
                pruned = self.repair(self.ratios(pruned))
        finally:
            self.target = target
        raise UserError("could not meet the budget exactly; try a slightly different --flops/--params")

    def candidate(self, ratios: np.ndarray) -> Candidate:
        """The repaired candidate, evaluated."""
        return self.evaluate_counts(self.repair(ratios))

    def evaluate_counts(self, pruned: Sequence[int]) -> Candidate:
        """Thin, re-calibrate and evaluate for channel counts ``pruned`` as given (cached)."""
        key = tuple(int(v) for v in pruned)
        if key not in self.cache:
            self._remember(key, dict(self.evaluate_fn(self.build(pruned))))
        return self.cache[key]

    def _remember(self, key: Tuple[int, ...], metrics: Dict[str, float]) -> None:
        self.cache[key] = Candidate(key, self.cost(np.array(key)), default_score(metrics, self.loss_weight), metrics)

    def prefetch(self, points: Sequence[np.ndarray]) -> None:
        """With a ``pool``: the candidates of ``points`` not yet evaluated, evaluated on it (each distinct one once)
        and cached in the order the serial search would have evaluated them, so scoring them is a cache hit."""
        if self.pool is None:
            return
        keys = list(dict.fromkeys(tuple(int(v) for v in self.repair(p)) for p in points))
        keys = [k for k in keys if k not in self.cache]
        if not keys:
            return
        results = dict(self.pool([self.plan(k) for k in keys]))
        for i, key in enumerate(keys):
            self._remember(key, dict(results[i]))

    def __call__(self, ratios: np.ndarray) -> float:
        return float(self.candidate(ratios).score)

    def uniform_ratios(self) -> np.ndarray:
        """The uniform schedule at the budget: one ratio for every group (then repaired like any candidate)."""
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.cost(self.counts(np.full(self.n_groups, mid))) <= self.target:
                hi = mid
            else:
                lo = mid
        return self.ratios(self._fill(self.counts(np.full(self.n_groups, hi))))
