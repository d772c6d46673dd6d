"""Latency of several models measured side by side, for benchmarks on a shared machine.

Timing one model after another lets a change in machine load pass for a speed-up; interleaving the models round
by round exposes them to the same load, and the median over rounds drops the unlucky ones.
"""
from __future__ import annotations

import statistics
from typing import Dict, Mapping

import torch
import torch.nn as nn

from compression_tool.engine.cost import latency_ms


def side_by_side_latency(models: Mapping[str, nn.Module], example_inputs: torch.Tensor, rounds: int = 5,
                         repeats: int = 5) -> Dict[str, float]:
    """Median forward time (ms) of each model over ``rounds`` interleaved rounds of ``repeats`` passes each."""
    times: Dict[str, list] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(latency_ms(model, example_inputs, repeats=repeats, warmup=1))
    return {name: statistics.median(t) for name, t in times.items()}
