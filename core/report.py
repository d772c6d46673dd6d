"""Cost report: parameters, FLOPs (multiply-accumulates), CPU latency, next to the metric."""
from __future__ import annotations

import statistics
import time
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp


def params_and_macs(model: nn.Module, example_inputs: torch.Tensor) -> Dict[str, float]:
    was = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was)
    return {"params": float(params), "macs": float(macs)}


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


def _fmt(key: str, v: float) -> str:
    if key in ("params", "macs"):
        return f"{v / 1e6:.3f}M"
    return f"{v:.4g}"


def format_report(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """A small before/after table with ratios."""
    lines = [f"{'':<14}{'before':>14}{'after':>14}{'after/before':>14}"]
    for k in before:
        if k not in after:
            continue
        ratio = after[k] / before[k] if before[k] else float("nan")
        lines.append(f"{k:<14}{_fmt(k, before[k]):>14}{_fmt(k, after[k]):>14}{ratio:>14.3f}")
    return "\n".join(lines)
