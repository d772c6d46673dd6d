"""Sensitivity analysis: sweep every prunable group over sparsity levels and record the metrics.

The CSV has Distiller's shape — ``parameter,sparsity,<metric columns>`` — one row per (group, level),
appended and flushed row by row, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.criteria import Criterion
from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.engine.masking import group_slices, masked
from compression_tool.engine.prefix_cache import PrefixCache
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_text

log = logging.getLogger(__name__)

Metrics = Dict[str, float]
EvalFn = Callable[[nn.Module], Metrics]


def default_sparsities() -> List[float]:
    return [round(0.1 * i, 10) for i in range(10)]


def parse_sparsities(text: str) -> List[float]:
    """'0,0.1,0.5' or 'start:stop:step' (stop exclusive, like range) -> rounded levels in [0, 1)."""
    try:
        if ":" in text:
            a, b, c = (float(t) for t in text.split(":"))
            n = int(round((b - a) / c))
            vals = [a + i * c for i in range(n)]
        else:
            vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--sparsities: expected numbers like '0,0.2,0.4' or '0:1:0.1', got {text!r}") from None
    vals = [round(v, 6) for v in vals]
    bad = [v for v in vals if not 0.0 <= v < 1.0]
    if bad or not vals:
        raise UserError(f"--sparsities: every level must be in [0, 1); got {bad or text!r}")
    return vals


def read_done(path: Path, header: Sequence[str]) -> Set[Tuple[str, float]]:
    """Rows already in an existing CSV (for resuming). A different header is an error, not overwritten."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows[0] != list(header):
        raise UserError(f"{path}: existing CSV has header {rows[0]}, expected {list(header)}; "
                        "pass a different --output or remove it")
    done = set()
    for r in rows[1:]:
        if len(r) == len(header):
            try:
                done.add((r[0], round(float(r[1]), 6)))
            except ValueError:
                pass  # a torn last line from an interrupted run: that row is redone
    return done


def _append_row(path: Path, row: Sequence) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def sweep(model: nn.Module, index: GroupIndex, criterion: Criterion, evaluate: EvalFn, csv_path: Path,
          sparsities: Sequence[float], metric_names: Sequence[str], groups: Optional[Sequence[PrunableGroup]] = None,
          use_cache: bool = True) -> Path:
    """Run the sweep, appending to ``csv_path``; returns it. ``evaluate`` must use a fixed data subset."""
    header = ["parameter", "sparsity", *metric_names]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(csv_path)
    done = read_done(csv_path, header)
    if not done:
        _repair_or_create(csv_path, header)
    groups = list(groups if groups is not None else index.groups)
    todo = [(g, s) for g in groups for s in sparsities if (g.name, round(s, 6)) not in done]
    if not todo:
        log.info("%s already holds every row; nothing to do", csv_path)
        return csv_path
    model.eval()
    cache = PrefixCache(model, index.example_inputs) if use_cache else None
    baseline: Optional[Metrics] = None
    bar = tqdm(total=len(todo), desc="sensitivity", unit="eval")
    for g in groups:
        levels = [s for s in sparsities if (g.name, round(s, 6)) not in done]
        if not levels:
            continue
        order = criterion.order(index, g)
        reuse = cache.reusable(set(g.members) | _touched(index, g)) if cache else []
        for s in levels:
            n = g.n_prune(s)
            if n == 0:
                baseline = baseline or _checked(evaluate(model), metric_names)
                metrics = baseline
            else:
                slices = group_slices(index, g, order[:n])
                with masked(slices):
                    if cache:
                        with cache.reuse(reuse):
                            metrics = _checked(evaluate(model), metric_names)
                    else:
                        metrics = _checked(evaluate(model), metric_names)
            _append_row(csv_path, [g.name, _fmt(round(s, 6)), *(_fmt(metrics[k]) for k in metric_names)])
            bar.set_postfix_str(f"{g.name} {s:.2f} {metric_names[0]}={metrics[metric_names[0]]:.2f}")
            bar.update(1)
    bar.close()
    return csv_path


def _touched(index: GroupIndex, g: PrunableGroup) -> Set[str]:
    """Every module whose tensors change when the group is masked (consumers' input columns too)."""
    names = index.module_names
    return {names[d.target.module] for d, _ in index.pruning_group(g, [0]) if d.target.module in names}


def _checked(metrics: Metrics, names: Sequence[str]) -> Metrics:
    missing = [k for k in names if k not in metrics]
    if missing:
        raise UserError(f"evaluation did not report metrics {missing}; it reported {list(metrics)}")
    return metrics


def _repair_or_create(path: Path, header: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerow(header)


def _drop_torn_tail(path: Path) -> None:
    """An interrupted run may leave half a row without its newline: cut it so appends start clean."""
    if not path.exists():
        return
    text = path.read_text()
    if text and not text.endswith("\n"):
        atomic_write_text(path, text[: text.rfind("\n") + 1])


def load_csv(path: str | os.PathLike) -> Tuple[List[str], Dict[str, List[Tuple[float, Dict[str, float]]]]]:
    """Read a sensitivity CSV -> (metric names, {parameter: [(sparsity, {metric: value})] sorted})."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such sensitivity CSV")
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 3 or rows[0][:2] != ["parameter", "sparsity"]:
        raise UserError(f"{p}: not a sensitivity CSV (expected header 'parameter,sparsity,<metric>,…')")
    metrics = rows[0][2:]
    data: Dict[str, List[Tuple[float, Dict[str, float]]]] = {}
    for line_no, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        if len(r) != len(rows[0]):
            raise UserError(f"{p}:{line_no}: expected {len(rows[0])} fields, got {len(r)}")
        try:
            s = float(r[1])
            vals = {m: float(v) for m, v in zip(metrics, r[2:])}
        except ValueError:
            raise UserError(f"{p}:{line_no}: non-numeric value in {r}") from None
        data.setdefault(r[0], []).append((s, vals))
    if not data:
        raise UserError(f"{p}: the CSV has a header but no rows")
    return metrics, {k: sorted(v, key=lambda t: t[0]) for k, v in data.items()}
