"""Sensitivity-guided schedules under a FLOPs budget: the least sensitive layers are pruned first, until the
thinned model keeps at most ``1 - reduction`` of the MACs.

``auto_make_yaml.py`` answers "how far can each layer go for this metric target"; a budget asks "which layers,
and how far, for this many MACs". Bisecting auto_make_yaml's target is too coarse for that: a target at the
baseline already prunes every layer whose sensitivity curve never drops below the baseline (on a small face
embedder that alone removed 55 % of the MACs), and targets above the baseline are refused. So the CSV is read as
an ordered list of moves, each raising one layer by one level:

1. each layer's curve is made non-increasing (running minimum over the levels: a lucky value at a high level
   does not outrank a bad lower one — pruning more is taken never to help);
2. the moves are sorted by that metric, best first (the order in which lowering auto_make_yaml's
   ``--rule strict`` target would take them, with ties and the levels above the baseline taken one at a time);
3. the number of moves is bisected: each candidate schedule is thinned on a copy of the model and measured with
   ``compression_tool.engine.cost.params_and_macs``. The result is the shortest prefix that meets the budget.

The schedule is written in auto_make_yaml's (Distiller) format, so ``pruning.py --mode prune --yaml`` takes it:

    python pruning_analysis_tools/auto_make_yaml.py work_space/sensitivity_data/mobilefacenet_l1.csv --flops 0.7 \\
        --model mobilefacenet --best_model_path ckpt.pth --input_size 56,48 --output yaml_file/mfn_flops-30.yaml
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.cost import params_and_macs, thinned_copy, thinned_cost  # noqa: F401 (tests use it)
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel
from compression_tool.engine.schedule import LOWER_IS_BETTER, Curve, build_schedule, write_schedule
from compression_tool.engine.sensitivity import load_csv
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

Move = Tuple[str, float, float]       # (layer weight, sparsity, metric at that level after the running minimum)


@dataclass
class BudgetResult:
    sparsities: Dict[str, float]       # per-layer level (weights as in the CSV; 0 = not pruned)
    metric: str
    threshold: Optional[float]         # the (non-increasing) metric of the last move taken; None = no move
    moves: int                         # moves taken, of ``total_moves``
    total_moves: int
    macs: float
    params: float
    base_macs: float
    base_params: float
    latency_ms: Optional[float] = None   # predicted, when the budget is latency
    base_latency_ms: Optional[float] = None

    @property
    def macs_kept(self) -> float:
        return self.macs / self.base_macs

    @property
    def reduction(self) -> float:
        return 1.0 - self.macs_kept


def envelope(curve: Curve, metric: str) -> List[Tuple[float, float]]:
    """(sparsity, metric) of one layer made non-increasing in quality: each level is as good as the worst level
    at or below it. For lower-is-better metrics (loss, eer) the running maximum."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    out, worst = [], float("inf")
    for s, m in sorted(curve, key=lambda t: t[0]):
        worst = min(worst, sign * m[metric])
        out.append((s, sign * worst))
    return out


def ordered_moves(data: Mapping[str, Curve], metric: str) -> List[Move]:
    """Every (layer, level > 0) by its envelope metric, best first; ties: lower level, then CSV order."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    order = {layer: i for i, layer in enumerate(data)}
    moves = [(layer, s, m) for layer, curve in data.items() for s, m in envelope(curve, metric) if s > 0]
    return sorted(moves, key=lambda mv: (-sign * mv[2], mv[1], order[mv[0]]))


def schedule_after(moves: Sequence[Move], k: int, layers: Sequence[str]) -> Dict[str, float]:
    """Per-layer level after the first ``k`` moves (a layer's highest level among them; 0 when untouched)."""
    levels = {layer: 0.0 for layer in layers}
    for layer, s, _ in moves[:k]:
        levels[layer] = max(levels[layer], s)
    return levels


def prune_counts(index: GroupIndex, sparsities: Mapping[str, float]) -> Dict[str, int]:
    """Channels each group loses at the given per-weight levels (coupled weights: the largest count)."""
    counts: Dict[str, int] = {}
    for name, s in sparsities.items():
        g = index.find(name, source="sensitivity CSV")
        n = g.n_prune(s)
        if n > 0:
            counts[g.name] = max(n, counts.get(g.name, 0))
    return counts


def first_feasible(n: int, feasible: Callable[[int], bool]) -> int:
    """Smallest i in [0, n] with feasible(i), assuming feasibility is monotone and feasible(n) holds."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def schedule_for_budget(csv_path: str, model: nn.Module, example_inputs: torch.Tensor, keep: float,
                        metric: Optional[str] = None, ignore: Sequence[str] = (), round_to: int = 1,
                        latency: Optional[LatencyModel] = None) -> BudgetResult:
    """The shortest prefix of ``ordered_moves`` whose thinned model keeps at most ``keep`` of the MACs.
    ``round_to`` > 1: every group keeps a multiple of that many channels (rounded up), and the schedule names
    each pruned group with the exact ratio of its rounded count, so ``--mode prune`` needs no ``--round_to``.
    ``latency``: the budget is ``keep`` of the latency the model measured on its runtime (``engine.latency``),
    each candidate's latency predicted from the per-layer tables."""
    res = "latency_ms" if latency is not None else "macs"
    what = "latency" if latency is not None else "MACs"
    if not 0.0 < keep < 1.0:
        raise UserError(f"--{'latency' if latency is not None else 'flops'}: expected the fraction of the {what} to "
                        f"keep, in (0, 1), e.g. 0.7, got {keep}")
    reduction = 1.0 - keep
    metrics, data = load_csv(csv_path)
    metric = metric or metrics[0]
    if metric not in metrics:
        raise UserError(f"--metric {metric!r} is not a column of {csv_path} (columns: {', '.join(metrics)})")
    base = params_and_macs(model, example_inputs)
    if latency is not None:
        base["latency_ms"] = latency.base
    index = GroupIndex(model, example_inputs, ignore=ignore, round_to=round_to)
    moves = ordered_moves(data, metric)
    cache: Dict[Tuple[Tuple[str, int], ...], Dict[str, float]] = {}
    bar = tqdm(desc="budget", unit="thinning", leave=False)

    def cost(k: int) -> Dict[str, float]:
        key = tuple(sorted(prune_counts(index, schedule_after(moves, k, list(data))).items()))
        if key not in cache:
            thin = thinned_copy(model, example_inputs, {n: list(range(c)) for n, c in key}, ignore)
            cache[key] = params_and_macs(thin, example_inputs)
            if latency is not None:
                cache[key]["latency_ms"] = latency.predict(thin)
            bar.update(1)
            log.debug("%d of %d moves: %.1f%% of the %s kept", k, len(moves),
                      100 * cache[key][res] / base[res], what)
        return cache[key]

    limit = (1.0 - reduction) * base[res] * (1 + 1e-9)
    try:
        if cost(len(moves))[res] > limit:
            most = cost(len(moves))[res] / base[res]
            raise UserError(f"{csv_path}: even every layer at its highest level keeps {most:.1%} of the {what}, more "
                            f"than the {1 - reduction:.0%} budget; sweep higher sparsities "
                            "(pruning.py --mode sa --sparsities)")
        k = first_feasible(len(moves), lambda i: cost(i)[res] <= limit)
    finally:
        bar.close()
    c = cost(k)
    sparsities = schedule_after(moves, k, list(data))
    if round_to > 1:
        counts = prune_counts(index, sparsities)
        sparsities = {**{layer: 0.0 for layer in data if index.find(layer, source="CSV").name not in counts},
                      **{g.name: g.ratio_for(counts[g.name]) for g in index.groups if g.name in counts}}
    return BudgetResult(sparsities=sparsities, metric=metric,
                        threshold=moves[k - 1][2] if k else None, moves=k, total_moves=len(moves),
                        macs=c["macs"], params=c["params"], base_macs=base["macs"], base_params=base["params"],
                        latency_ms=c.get("latency_ms"), base_latency_ms=base.get("latency_ms"))


def write_budget_schedule(result: BudgetResult, path: str | Path, csv_path: str, criterion: str, arch: str,
                          dataset: str, input_size: Sequence[int], force: bool = False) -> Path:
    doc = build_schedule(result.sparsities, criterion, arch, dataset, input_size)
    if result.latency_ms is not None:
        header = (f"generated by auto_make_yaml.py --latency from {csv_path}\n"
                  f"budget: predicted latency {result.latency_ms:.3f} ms of the measured "
                  f"{result.base_latency_ms:.3f} ms ({result.latency_ms / result.base_latency_ms:.1%}); "
                  f"{result.macs / 1e6:.3f}M of "
                  f"{result.base_macs / 1e6:.3f}M MACs; {result.moves} of {result.total_moves} moves, last at "
                  f"{result.metric} = {result.threshold}")
    else:
        header = (f"generated by auto_make_yaml.py --flops from {csv_path}\n"
                  f"budget: at most {100 * (1 - result.reduction):.1f}% of {result.base_macs / 1e6:.3f}M MACs kept "
                  f"({result.macs / 1e6:.3f}M, {result.params / 1e6:.3f}M params); {result.moves} of "
                  f"{result.total_moves} moves, last at {result.metric} = {result.threshold}")
    return write_schedule(doc, path, header, force=force)
