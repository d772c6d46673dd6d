"""The cost model: parameters and MACs (torch-pruning's counter), CPU latency, and the cost of a thinned copy.

Every budget of the project (schedules, search, ``ChannelPruner.prune_to_budget``) is measured here.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.thinning import thin

RESOURCES = ("macs", "params")


def params_and_macs(model: nn.Module, example_inputs: torch.Tensor) -> Dict[str, float]:
    was = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was)
    return {"params": float(params), "macs": float(macs)}


def median_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 15, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls: at least ``reps`` timed calls, more
    until ``min_seconds`` have passed. The one timing loop of the project (PyTorch, ONNX Runtime, per layer)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def latency_ms(model: nn.Module, example_inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    was = model.training
    model.eval()
    for _ in range(warmup):
        model(example_inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example_inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was)
    return statistics.median(times)


@torch.no_grad()
def interleaved_latency(models: Sequence[nn.Module], example_inputs: torch.Tensor, rounds: int = 7,
                        reps: int = 3) -> List[float]:
    """Median ms per forward of each model, alternating models every round so load drifts hit all alike."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
        m(example_inputs)
    times: List[List[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            for _ in range(reps):
                m(example_inputs)
            times[i].append((time.perf_counter() - t0) * 1e3 / reps)
    for m, mode in zip(models, modes):
        m.train(mode)
    return [statistics.median(t) for t in times]


def measure(model: nn.Module, example_inputs: torch.Tensor, metrics: Optional[Mapping[str, float]] = None,
            repeats: int = 20) -> Dict[str, float]:
    out = params_and_macs(model, example_inputs)
    out["latency_ms"] = latency_ms(model, example_inputs, repeats=repeats)
    out.update(metrics or {})
    return out


def thinned_copy(model: nn.Module, example_inputs: torch.Tensor, pruned: Mapping[str, Sequence[int]],
                 ignore: Sequence[str] = (), prune_outputs: bool = False) -> nn.Module:
    """A deep copy of ``model`` with root channels ``pruned[group]`` physically removed; the model is untouched."""
    clone = copy.deepcopy(model).eval()
    thin(GroupIndex(clone, example_inputs, ignore=ignore, prune_outputs=prune_outputs),
         {k: v for k, v in pruned.items() if len(v)})
    return clone


def thinned_cost(model: nn.Module, example_inputs: torch.Tensor, counts: Mapping[str, int],
                 ignore: Sequence[str] = ()) -> Dict[str, float]:
    """Params and MACs of ``model`` with ``counts[group]`` channels removed per group (which channels does not
    change the cost)."""
    pruned = {name: list(range(n)) for name, n in counts.items() if n > 0}
    return params_and_macs(thinned_copy(model, example_inputs, pruned, ignore), example_inputs)


def leaf_costs(model: nn.Module, example_inputs: torch.Tensor) -> Dict[str, Tuple[float, float]]:
    """{leaf module name: (MACs, params)} as torch-pruning counts them (the same counter as
    ``params_and_macs``)."""
    was = model.training
    model.eval()
    _, _, flops, params = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    model.train(was)
    return {n: (float(flops.get(m) or 0.0), float(params.get(m) or 0.0))
            for n, m in model.named_modules() if not list(m.children())}


class CostModel:
    """Predicts the MACs and params of the thinned model from the kept channel counts, without thinning.

    Each layer's cost is a product of powers of its groups' kept fractions (a conv scales with its input and
    its output width, a depthwise conv or a BN with one of them). One probe per group (thin half of it, count
    per layer) reveals the powers; the prediction is then exact for bias-free layers.
    """

    def __init__(self, model: nn.Module, index: GroupIndex, example_inputs: torch.Tensor,
                 ignore: Sequence[str] = ()):
        base = leaf_costs(model, example_inputs)
        self.names = list(base)
        self.base = np.array([base[n] for n in self.names])           # [layers, 2]: macs, params
        self.channels = np.array([g.channels for g in index.groups], dtype=float)
        self.powers = np.zeros((2, len(self.names), len(index.groups)))  # [resource, layer, group]
        for j, g in enumerate(index.groups):
            n = g.channels // 2
            if n == 0:
                continue
            probe = leaf_costs(thinned_copy(model, example_inputs, {g.name: list(range(n))}, ignore),
                               example_inputs)
            frac = (g.channels - n) / g.channels
            for i, name in enumerate(self.names):
                for r in range(2):
                    before, after = self.base[i, r], probe.get(name, (0.0, 0.0))[r]
                    if before > 0 and after > 0 and after != before:
                        self.powers[r, i, j] = math.log(after / before) / math.log(frac)

    def predict(self, kept: np.ndarray) -> Dict[str, float]:
        """{'macs', 'params'} of the model thinned to ``kept`` channels per group (index.groups order)."""
        logf = np.log(np.asarray(kept, dtype=float) / self.channels)
        return {res: float((self.base[:, r] * np.exp(self.powers[r] @ logf)).sum())
                for r, res in enumerate(RESOURCES)}


