"""After the search: the nested schedules along its moves, and the two ways its pick is re-decided on them — a
back-off guard at a multiplicity-adjusted level on check, or a fixed-sequence test on a confirm split — plus the
hint printed when nothing passes."""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Sequence, Tuple, TypeVar

import numpy as np
import torch.nn as nn

from compression_tool.engine.budget import Move, schedule_after
from compression_tool.engine.target_true.bounds import PLURAL, Evaluator, Measurement, samples_to_vouch
from compression_tool.engine.target_true.checker import ComposedChecker
from compression_tool.engine.target_true.config import TargetTrueConfig, Trial

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolution_hint(chk: ComposedChecker, base: Measurement, trace: Sequence[Trial], cfg: TargetTrueConfig,
                     level: float) -> None:
    """Nothing was pruned: say what the lightest schedule tried did to the check predictions, and how large a
    check split would vouch for it (the search's bounds are too wide for the churn of even a light cut)."""
    tried = [t for t in trace if t.step != "baseline"]
    if not tried:
        return
    light = max(tried, key=lambda t: getattr(t, cfg.resource))
    m, _ = chk.measure(light.sparsities)
    diff = base.per_sample - m.per_sample
    bound, _ = chk.bound(m, base, level)
    if m.pairs is None:
        need = samples_to_vouch(diff, float(cfg.drop), level, cfg.pseudo_value())
        what = (f"about {need} check samples would vouch for it" if need is not None else
                "its measured drop alone exceeds the budget")
    else:                                # clustered samples: scale the bootstrap's own width by the units
        units = len(np.unique(m.groups[np.unique(m.pairs)] if m.groups is not None else m.pairs))
        margin = float(cfg.drop) - float(diff.mean())
        width = bound - float(diff.mean())
        plural = PLURAL.get(m.unit, m.unit + "s")
        what = ("its measured drop alone exceeds the budget" if margin <= 0 else
                f"about {math.ceil(units * (width / margin) ** 2)} check {plural} would vouch for it (it has {units})")
    cut = 100 * (1 - getattr(light, cfg.resource) / getattr(trace[0], cfg.resource))
    log.warning("target-true: nothing pruned. The lightest schedule tried (%.1f%% %s removed) changed %.1f%% of the "
                "%d check outcomes for a drop of %.2f (bound %.2f at %.4g %%); %s; the check split has %d samples",
                cut, cfg.resource, 100 * float(np.mean(diff != 0)), base.n, float(diff.mean()), bound,
                100 * level, what, base.n)


def guard_steps(chk: ComposedChecker, base: Measurement, sequence: Sequence[Dict[str, float]],
                 chain: Sequence[Trial], cfg: TargetTrueConfig, level: float, trace: List[Trial]) -> List[Trial]:
    """The nested schedules a back-off guard walks: the search's chain plus up to ``cfg.guard_steps`` evenly
    spaced schedules of ``sequence`` (``nested_schedules``), measured on check and added to ``trace``. The bisection
    lands on few, coarse links; without lighter ones a guard that rejects them keeps nothing, where a light cut that
    changes almost no prediction would pass. Nested light cuts change much the same predictions, so the simultaneous
    level barely rises for them."""
    extra = {chk.key(sp) for sp in chain_points(sequence, cfg.guard_steps)}
    on_chain = {chk.key(t.sparsities): t for t in chain}
    steps = [chain[0]]
    for sp in sequence[1:]:
        key = chk.key(sp)
        if key in on_chain:
            steps.append(on_chain[key])
        elif key in extra:
            before = chk.evals
            m, cost = chk.measure(sp)
            b, ok = chk.bound(m, base, level)
            steps.append(Trial("guard", dict(sp), m.value, b, ok, cost["macs"], cost["params"], cost.get("latency")))
            if chk.evals > before:
                trace.append(steps[-1])
    return steps


def back_off_guards(chk: ComposedChecker, base: Measurement, sequence: Sequence[Dict[str, float]],
                    chain: Sequence[Trial], cfg: TargetTrueConfig, level: float, trace: List[Trial]
                    ) -> Tuple[Dict[str, Dict[str, object]], Dict[str, Trial]]:
    """The search's pick re-decided both ways once its candidates are accounted for: ``posthoc`` (Bonferroni over
    every check measurement) and ``simultaneous`` (``ComposedChecker.family_level``), each backing off along the
    guard's steps (``guard_steps``). Returns the record for the report ({guard: {level, tests, sparsities, adabn,
    reduction}}) and each guard's pick; only ``cfg.multiple_testing``'s logs what it did."""
    steps = guard_steps(chk, base, sequence, chain, cfg, level, trace)
    tests = len(chk.family())        # check measurements: candidates, each BN variant, the guard's steps
    levels = {"posthoc": cfg.adjusted_level(tests), "simultaneous": chk.family_level(base)}
    record: Dict[str, Dict[str, object]] = {}
    picks: Dict[str, Trial] = {}
    for guard, lv in levels.items():
        t = back_off(chk, base, steps, lv, quiet=guard != cfg.multiple_testing)
        picks[guard] = t
        record[guard] = {"level": lv, "tests": tests, "sparsities": dict(t.sparsities),
                         "adabn": chk.adabn_for(t.sparsities),
                         "reduction": 1.0 - getattr(t, cfg.resource) / getattr(chain[0], cfg.resource)}
    return record, picks


def back_off(chk: ComposedChecker, base: Measurement, chain: Sequence[Trial], level: float,
              quiet: bool = False) -> Trial:
    """The most pruned link of the chain whose check bound passes at ``level`` (its measurement is cached: no new
    evaluation), else the unpruned start. ``quiet``: a diagnostic, nothing logged."""
    for t in reversed(chain[1:]):
        m, _ = chk.measure(t.sparsities)
        if chk.bound(m, base, level)[1]:
            if t is not chain[-1] and not quiet:
                log.info("target-true: the search's pick does not pass once its %d candidates are accounted for "
                         "(%.4g %%); backed off along its moves", chk.evals, 100 * level)
            return t
    if not quiet:
        log.warning("target-true: no schedule passes on the check split once the search's %d candidates are "
                    "accounted for (%.4g %%); nothing is pruned: use a larger check split, a larger drop or a lower "
                    "target", chk.evals, 100 * level)
    return chain[0]


def chain_points(chain: Sequence[T], k: int) -> List[T]:
    """At most ``k`` links of the nested chain (the unpruned start excluded), evenly spaced along it, the last (the
    search's winner) always included; least pruned first."""
    links = list(chain[1:])
    if len(links) <= k:
        return links
    picks = sorted({round((i + 1) * len(links) / k) - 1 for i in range(k)})
    return [links[i] for i in picks]


def nested_schedules(chk: ComposedChecker, moves: Sequence[Move], layers: Sequence[str], prefix: int,
                     chain: Sequence[Trial]) -> List[Dict[str, float]]:
    """The nested schedules along the search's moves, unpruned first: every prefix of the move order up to the
    bisection's (not only the few links the bisection happened to land on), then the greedy's links. Schedules that
    thin the same channels appear once. A back-off guard (``guard_steps``) and a confirm test
    (``confirm_sequence``) walk them; for the confirm test they are fixed by the search alone, as a fixed-sequence
    test needs."""
    seq: List[Dict[str, float]] = [dict(chain[0].sparsities)]
    seen = {chk.key(seq[0])}
    steps = [schedule_after(moves, k, layers) for k in range(1, prefix + 1)]
    steps += [dict(t.sparsities) for t in chain[1:] if t.step == "greedy"]
    for sp in steps:
        key = chk.key(sp)
        if key not in seen:
            seen.add(key)
            seq.append(sp)
    return seq


def confirm_sequence(chk: ComposedChecker, model: nn.Module, sequence: Sequence[Dict[str, float]],
                     confirm_eval: Evaluator, cfg: TargetTrueConfig) -> Tuple[Trial, Dict[str, object]]:
    """Fixed-sequence test of the search's nested schedules on the confirm split (up to ``confirm_tries`` of them,
    evenly spaced): least pruned first, stop at the first failure; the last that held wins."""
    base = confirm_eval(model)
    full = chk.cost(model)
    info: Dict[str, object] = {"n": base.n, "unpruned": base.value, "tries": 0, "passed": False,
                               "chain": len(sequence) - 1, "tested": []}
    held = Trial("baseline", dict(sequence[0]), base.value, 0.0, True, full["macs"], full["params"],
                 full.get("latency"))
    for sp in chain_points(sequence, cfg.confirm_tries):
        chk.measure(sp)              # the BN variant chosen on the search's data, as for the links it measured
        built = chk.build(sp)
        m, cost = confirm_eval(built), chk.cost(built)
        b, ok = chk.bound(m, base, cfg.confidence)     # a fixed sequence needs no multiplicity correction
        info["tries"] = int(info["tries"]) + 1
        info["tested"].append({"reduction": 1.0 - cost[cfg.resource] / full[cfg.resource],
                               "value": m.value, "bound": b, "passed": ok})
        if not ok:
            break
        held = Trial("confirm", dict(sp), m.value, b, True, cost["macs"], cost["params"], cost.get("latency"))
        info.update(value=m.value, bound=b, passed=True)
    if held.step == "baseline" and info["tries"]:
        log.warning("target-true: the least pruned schedule of the search did not hold on the confirm split; "
                    "nothing is pruned")
    return held, info
