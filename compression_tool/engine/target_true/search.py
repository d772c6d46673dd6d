"""The target-true search: bisection on the sensitivity order's prefix, then greedy rounds, on composed models
(see the package doc); its pick re-decided by a guard (``guards``) and judged once on the report split."""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.budget import Move, envelope, ordered_moves, schedule_after
from compression_tool.engine.criteria import Criterion
from compression_tool.engine.latency import LatencyModel
from compression_tool.engine.target_true.bounds import Evaluator
from compression_tool.engine.target_true.checker import ComposedChecker, promise_bound
from compression_tool.engine.target_true.config import TargetTrueConfig, TargetTrueResult, Trial
from compression_tool.engine.target_true.guards import (
    back_off_guards,
    confirm_sequence,
    nested_schedules,
    resolution_hint,
)
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


def sign_of(metric: str) -> float:
    return -1.0 if metric in ("loss", "eer", "threshold", "lfw_std") else 1.0


def _levels(data: Mapping[str, Sequence[Tuple[float, Mapping[str, float]]]]) -> Dict[str, List[float]]:
    return {layer: sorted(s for s, _ in curve if s > 0) for layer, curve in data.items()}


def target_true_schedule(model: nn.Module, example_inputs: torch.Tensor, criterion: Criterion,
                         table: Mapping[str, Sequence[Tuple[float, Mapping[str, float]]]],
                         check_eval: Evaluator, report_eval: Optional[Evaluator], calib_batches: Sequence,
                         cfg: TargetTrueConfig, ignore: Sequence[str] = (), progress: bool = True,
                         latency: Optional[LatencyModel] = None, confirm_eval: Optional[Evaluator] = None,
                         sa_eval: Optional[Evaluator] = None) -> TargetTrueResult:
    """Search the schedule (see the package doc, ``compression_tool.engine.target_true``). ``table`` is the
    sensitivity CSV as ``compression_tool.engine.sensitivity.load_csv`` returns it (measured on the SA split);
    ``check_eval`` / ``report_eval`` measure on the disjoint splits;
    ``calib_batches`` are input batches from the training side for BN re-estimation; ``latency`` predicts each
    candidate's latency (needed for ``resource='latency'``). ``confirm_eval`` (a part of the check data the search
    never saw): the search keeps one candidate among many that passed, so its check margin is optimistic (the
    winner's curse). Its accepted schedules form a nested chain (each adds moves to the last); ``confirm_tries``
    points of that chain, fixed before the confirm data is looked at, are tested there least pruned first with the
    same rule, and the last to pass before the first failure wins (a fixed-sequence test: the chance that the
    winner breaks the promise stays at 1 − ``confidence``, with no correction for the number tested).
    ``sa_eval`` (the SA split; ``cfg.reanalyse``): each greedy round orders its moves by re-measuring every layer's
    next level on the current composed model there (NNI's iterative re-analysis) instead of by the single-layer
    table. ``model`` is not changed."""
    cfg.validate()
    if cfg.reanalyse and sa_eval is None:
        raise UserError("target-true: re-analysis measures moves on the SA split; give its evaluator (sa_eval)")
    if cfg.resource == "latency" and latency is None:
        raise UserError("target-true: a latency reduction needs a latency model (auto_make_yaml.py --resource "
                        "latency measures one)")
    t0 = time.perf_counter()
    if not table:
        raise UserError("target-true: the sensitivity table is empty")
    first = next(iter(table.values()))
    if cfg.metric not in first[0][1]:
        raise UserError(f"target-true: metric {cfg.metric!r} is not in the sensitivity table "
                        f"(columns: {', '.join(first[0][1])})")
    chk = ComposedChecker(model, example_inputs, criterion, check_eval, calib_batches, cfg, ignore, latency)
    base = chk.base
    if cfg.target is not None and cfg.target > base.value:
        raise UserError(f"target {cfg.target:g} is above the unpruned model's {cfg.metric} on the check split "
                        f"({base.value:.4g}): nothing can be pruned to reach it")
    layers = list(table)
    moves: List[Move] = ordered_moves(table, cfg.metric)
    trace: List[Trial] = []
    bar = tqdm(total=cfg.max_evals, desc="target-true", unit="model", leave=False, disable=not progress)

    level = cfg.search_level(confirm_eval is not None)

    def trial(step: str, sp: Dict[str, float]) -> Trial:
        before = chk.evals
        m, cost = chk.measure(sp)
        b, ok = chk.bound(m, base, level)
        t = Trial(step, dict(sp), m.value, b, ok, cost["macs"], cost["params"], cost.get("latency"))
        if chk.evals > before:
            trace.append(t)
            bar.update(1)
            bar.set_postfix_str(f"{step} {cfg.metric}={m.value:.2f} bound={b:.2f} {'ok' if ok else 'fail'}")
        return t

    zero = schedule_after(moves, 0, layers)
    t_zero = trial("baseline", zero)
    trace.insert(0, t_zero)
    chain: List[Trial] = [t_zero]        # the accepted schedules, each a superset of the one before
    resolvable = t_zero.passed
    if cfg.drop is not None:
        # the smallest bound any schedule that changes no check outcome can get: the unpruned model's against itself
        floor = promise_bound(base, base, cfg, level, cfg.pseudo_value())
        resolvable = floor <= cfg.drop + 1e-9
    best = t_zero
    prefix = 0                           # the longest passing prefix of the moves (bisection)
    sa_chk: Optional[ComposedChecker] = None
    if not resolvable:
        log.warning("target-true: the %s target is finer than the %d-sample check split can resolve at %.2f%% "
                    "(its best possible bound: %.3g); nothing is pruned: use a larger check split or a larger drop",
                    cfg.metric, base.n,
                    100 * level,
                    floor if cfg.drop is not None else t_zero.bound)
    else:
        # 1. bisection on the prefix of moves: the longest passing prefix (pass assumed monotone in k)
        lo, hi = 0, len(moves)
        while lo < hi and chk.evals < cfg.max_evals:
            mid = (lo + hi + 1) // 2
            t = trial("bisect", schedule_after(moves, mid, layers))
            if t.passed:
                lo, best = mid, t
                chain.append(t)
            else:
                hi = mid - 1
        prefix = lo
        # 2. greedy: raise single layers by one level on top of the best schedule, least sensitive first
        sa_chk = chk.on(sa_eval) if cfg.reanalyse else None
        if cfg.greedy:
            best = _greedy_rounds(chk, sa_chk, table, best, chain, trial, cfg)
    bar.close()
    search_evals = chk.evals
    if len(chain) > 1:
        chain[-1] = best                  # (a greedy step that changed no count renamed the last link)
    search_pick = {"sparsities": dict(best.sparsities), "adabn": chk.adabn_for(best.sparsities),
                   "check": best.check, "bound": best.bound}
    guards: Optional[Dict[str, Dict[str, object]]] = None
    if resolvable and confirm_eval is None and search_evals > 0 and cfg.multiple_testing != "bonferroni":
        # the pick re-decided once the search's candidates are accounted for, both ways (cached measurements)
        guards, picks = back_off_guards(chk, base, nested_schedules(chk, moves, layers, prefix, chain), chain, cfg,
                                        level, trace)
        search_evals = chk.evals         # the lighter steps measured for the back-off belong to the family too
        if cfg.multiple_testing in picks:
            level, best = float(guards[cfg.multiple_testing]["level"]), picks[cfg.multiple_testing]
    confirmed = None
    if confirm_eval is not None and resolvable:
        best, confirmed = confirm_sequence(chk, model, nested_schedules(chk, moves, layers, prefix, chain),
                                           confirm_eval, cfg)
    m_check, cost = chk.measure(best.sparsities)
    b_check, _ = chk.bound(m_check, base, level)
    pruned = any(n > 0 for n in chk.counts(best.sparsities).values())
    if cfg.drop is not None and resolvable and confirm_eval is None and not pruned:
        resolution_hint(chk, base, trace, cfg, level)
    adjusted = None
    if guards is not None and cfg.multiple_testing == "none":
        # what the pick's check margin is worth once the search's candidates are accounted for (cached: free)
        adj_level = float(guards["simultaneous"]["level"])
        b_adj, ok_adj = chk.bound(m_check, base, adj_level)
        adjusted = {"level": adj_level, "bound": b_adj, "passed": ok_adj}
        if not ok_adj:
            log.warning("target-true: the schedule passes at %.4g %% but not once the %d candidates the search "
                        "measured are accounted for (bound %.3g at %.4g %%): on new data it may miss the target "
                        "(winner's curse); --multiple_testing simultaneous, --confirm or a larger check split guard "
                        "it", 100 * level, search_evals, b_adj, 100 * adj_level)
    final = chk.build(best.sparsities)
    rep_base, rep, rep_bound, rep_n = _on_report(model, final, report_eval, cfg)
    full = chk.cost(model)
    per_layer = _layer_report(chk, table, best.sparsities, base.value, report_eval, cfg)
    return TargetTrueResult(
        sparsities=dict(best.sparsities), metric=cfg.metric, mode="drop" if cfg.drop is not None else "target",
        threshold=float(cfg.drop if cfg.drop is not None else cfg.target), resolvable=resolvable,
        check_baseline=base.value, check=m_check.value, check_bound=b_check, report_baseline=rep_base,
        report=rep, report_bound=rep_bound, macs=cost["macs"], params=cost["params"], base_macs=full["macs"],
        base_params=full["params"], resource=cfg.resource, adabn=chk.adabn_for(best.sparsities), check_n=base.n,
        report_n=rep_n, evals=search_evals,
        seconds=time.perf_counter() - t0, per_layer=per_layer, trace=trace, latency=cost.get("latency"),
        base_latency=full.get("latency"), model=final, confirm=confirmed, level=level,
        sa_evals=sa_chk.evals if sa_chk is not None else 0,
        search_pick=search_pick if search_pick["sparsities"] != best.sparsities else None, adjusted=adjusted,
        bn_method=cfg.bn_method, guards=guards)


def _greedy_rounds(chk: ComposedChecker, sa_chk: Optional[ComposedChecker],
                   table: Mapping[str, Sequence[Tuple[float, Mapping[str, float]]]], best: Trial, chain: List[Trial],
                   trial: Callable[[str, Dict[str, float]], Trial], cfg: TargetTrueConfig) -> Trial:
    """Greedy rounds on top of ``best``: each layer's next level, least sensitive first (by the table, or re-measured
    on the composed model on SA with ``sa_chk``), kept when the composed model still passes; a move that fails is
    not retried (it was the damaging one). Accepted trials are appended to ``chain``; returns the last."""
    levels = _levels(table)
    env = {layer: dict(envelope(curve, cfg.metric)) for layer, curve in table.items()}
    sign = sign_of(cfg.metric)
    failed: set = set()
    improved = True
    while improved and chk.evals < cfg.max_evals:
        improved = False
        options = []
        for layer in table:
            nxt = [s for s in levels[layer] if s > best.sparsities[layer] + 1e-9]
            if nxt and (layer, nxt[0]) not in failed:
                if sa_chk is not None:       # NNI-style: this move on top of the current schedule, on SA
                    score = sa_chk.measure({**best.sparsities, layer: nxt[0]})[0].value
                else:                        # the move alone, from the sensitivity table
                    score = env[layer][nxt[0]]
                options.append((-sign * score, layer, nxt[0]))
        for _, layer, s in sorted(options):
            if chk.evals >= cfg.max_evals:
                break
            sp = dict(best.sparsities)
            sp[layer] = s
            if chk.counts(sp) == chk.counts(best.sparsities):
                best = Trial("greedy", sp, best.check, best.bound, True, best.macs, best.params, best.latency)
                improved = True
                continue
            t = trial("greedy", sp)
            if t.passed and getattr(t, cfg.resource) <= getattr(best, cfg.resource):
                best, improved = t, True
                chain.append(t)
            else:
                failed.add((layer, s))
    return best


def _on_report(model: nn.Module, final: nn.Module, report_eval: Optional[Evaluator], cfg: TargetTrueConfig
               ) -> Tuple[Optional[float], Optional[float], Optional[float], Optional[int]]:
    """(unpruned, pruned, bound, samples) on the report split, measured once; the bound at ``cfg.confidence``:
    upper of the drop, or lower of the metric."""
    if report_eval is None:
        return None, None, None, None
    rb, rm = report_eval(model), report_eval(final)
    return rb.value, rm.value, promise_bound(rm, rb, cfg, cfg.confidence), rm.n


def _layer_report(chk: ComposedChecker, table: Mapping[str, Sequence[Tuple[float, Mapping[str, float]]]],
                  sparsities: Mapping[str, float], unpruned: float, report_eval: Optional[Evaluator],
                  cfg: TargetTrueConfig) -> List[Dict[str, object]]:
    """Per pruned layer: its level and the metric the table predicts for it alone; with ``cfg.layer_report`` also
    the composed metric as the layers are added, least sensitive first, on check (cached) and report."""
    rows: List[Dict[str, object]] = [
        {"layer": layer, "sparsity": sparsities[layer],
         "predicted_alone": dict(envelope(table[layer], cfg.metric)).get(sparsities[layer], unpruned)}
        for layer in table if sparsities[layer] > 0]
    if cfg.layer_report:
        rows.sort(key=lambda row: -sign_of(cfg.metric) * float(row["predicted_alone"]))
        cum = {layer: 0.0 for layer in table}
        for row in rows:
            cum[str(row["layer"])] = float(row["sparsity"])
            row["composed_check"] = chk.measure(cum)[0].value
            if report_eval is not None:
                row["composed_report"] = report_eval(chk.build(cum)).value
    return rows
