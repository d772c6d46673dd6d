"""Measurement noise of a sensitivity CSV: confidence-interval columns after Distiller's.

``pruning.py --mode sa --ci`` writes ``<metric>_lo,<metric>_hi`` (Wilson score interval of a proportion measured
on ``n`` images, in percent) after Distiller's columns of every row; the CSV stays readable by Distiller tools,
which read the columns they know. ``auto_make_yaml.py`` reads them to say when a target is finer than the
measurement resolves.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Dict, List, Optional, Sequence, Tuple

from compression_tool.io.errors import UserError

CI_SUFFIXES = ("_lo", "_hi")
PROPORTION_METRICS = ("top1", "top5")


def wilson(percent: float, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Two-sided Wilson score interval (percent) for a proportion ``percent`` measured on ``n`` samples."""
    if n <= 0:
        raise UserError("confidence interval: no samples")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = min(max(percent / 100.0, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def with_ci(metric_names: Sequence[str], evaluate, n: int, confidence: float = 0.95,
            metrics: Sequence[str] = PROPORTION_METRICS):
    """(names, evaluate) whose rows carry ``<m>_lo,<m>_hi`` after Distiller's columns, for each proportion metric
    ``m`` (a Wilson interval on the ``n`` evaluation images). The sweep then writes them with every row, so a
    resumed CSV needs no rewriting."""
    present = [m for m in metrics if m in metric_names]
    names = list(metric_names) + [f"{m}{s}" for m in present for s in CI_SUFFIXES]

    def evaluate_ci(model):
        out = dict(evaluate(model))
        for m in present:
            out[f"{m}_lo"], out[f"{m}_hi"] = wilson(out[m], n, confidence)
        return out

    return names, evaluate_ci


def resolution_note(data: Dict[str, List[Tuple[float, Dict[str, float]]]], metric: str, target: float,
                    base: float) -> Optional[str]:
    """One line when ``target`` lies inside the baseline's confidence interval (the CSV's CI columns)."""
    lo_key, hi_key = f"{metric}_lo", f"{metric}_hi"
    zeros = [m for curve in data.values() for s, m in curve if s == 0.0 and lo_key in m and hi_key in m]
    if not zeros:
        return None
    half = (zeros[0][hi_key] - zeros[0][lo_key]) / 2
    if abs(base - target) < half:
        return (f"note: target {target:g} is {abs(base - target):.2f} points from the baseline {base:.4g}, finer than "
                f"the sensitivity measurement resolves (±{half:.2f} points); per-layer levels cannot promise it")
    return None
