"""Measurement noise of a sensitivity CSV: confidence-interval columns after Distiller's.

``pruning.py --mode sa --ci`` writes ``<metric>_lo,<metric>_hi`` (Wilson score interval of a proportion measured
on ``n`` images, in percent) after Distiller's columns of every row; the CSV stays readable by Distiller tools,
which read the columns they know. ``auto_make_yaml.py`` reads them to say when a target is finer than the
measurement resolves.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def samples_to_resolve(base: float, gap: float, confidence: float = 0.95) -> Optional[int]:
    """About how many evaluation images a proportion measured at ``base`` percent needs for the half-width of its
    Wilson interval (the CSV's columns) to shrink to ``gap`` points; None when ``gap`` <= 0."""
    if gap <= 0:
        return None

    def half(n: int) -> float:
        lo, hi = wilson(base, n, confidence)
        return (hi - lo) / 2

    return smallest_n(lambda n: half(n) <= gap)


def smallest_n(fits: Callable[[int], bool], limit: int = 1 << 40) -> Optional[int]:
    """The smallest sample size n >= 1 for which ``fits(n)`` holds, ``fits`` being monotone in n (a bound or a
    half-width that shrinks as n grows): doubling, then bisection. None when not even ``limit`` fits."""
    lo, hi = 0, 1
    while not fits(hi):
        if hi >= limit:
            return None
        lo, hi = hi, hi * 2
    while hi - lo > 1:                     # fits(hi), not fits(lo) (lo = 0: none tried)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def resolution_note(data: Dict[str, List[Tuple[float, Dict[str, float]]]], metric: str, target: float,
                    base: float) -> Optional[str]:
    """One line when ``target`` lies inside the baseline's confidence interval (the CSV's CI columns), with about
    how many evaluation images would resolve it (proportion metrics) or how many times the current number."""
    lo_key, hi_key = f"{metric}_lo", f"{metric}_hi"
    zeros = [m for curve in data.values() for s, m in curve if s == 0.0 and lo_key in m and hi_key in m]
    if not zeros:
        return None
    half = (zeros[0][hi_key] - zeros[0][lo_key]) / 2
    gap = abs(base - target)
    if gap >= half:
        return None
    if metric in PROPORTION_METRICS:
        need = samples_to_resolve(base, gap)
        more = (f"about {need} evaluation images would resolve it" if need is not None else
                "a target equal to the baseline is never resolved")
    else:
        more = (f"about {(half / gap) ** 2:.0f} times as many evaluation samples would resolve it" if gap > 0 else
                "a target equal to the baseline is never resolved")
    return (f"note: target {target:g} is {gap:.2f} points from the baseline {base:.4g}, finer than the sensitivity "
            f"measurement resolves (±{half:.2f} points); per-layer levels cannot promise it; {more}")
