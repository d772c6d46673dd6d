"""The before/after report: params, MACs, latency and metrics side by side with their ratios."""
from __future__ import annotations

from typing import Mapping


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
