"""Pruning strategies on top of the criteria: soft and hard pruning from one object, ratio plans, budgets.

    pruner = ChannelPruner(model, example_inputs, "fpgm")
    pruner.soft(0.3)                     # masks; pruner.attach(optimizer) keeps them zero while training
    ... train ...
    keep = pruner.hard()                 # thin exactly the channels the masks zeroed
    ChannelPruner(model, x, "l1").prune_to_budget(flops=0.5)    # thin until MACs <= 50% of the original

Ratios are a float (the same fraction of every group), a dict ``{weight or layer name: fraction}`` (groups not
named are left alone) or, with ``global_ranking=True``, one float over all channels ranked together by their
group-normalised scores (each group keeps at least one channel and loses at most ``max_ratio`` of them).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.cost import params_and_macs, thinned_copy
from compression_tool.engine.criteria import Criterion, make_criterion
from compression_tool.engine.groups import GroupIndex, PrunableGroup, output_modules
from compression_tool.engine.masking import apply_slices, gradient_masks, group_slices
from compression_tool.engine.thinning import thin
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

Ratios = Union[float, Mapping[str, float]]
Selection = Dict[str, List[int]]
BUDGET_TOLERANCE = 0.02


def check_ratio(r: float, what: str) -> float:
    r = float(r)
    if not 0.0 <= r < 1.0:
        raise UserError(f"{what}: a pruning ratio must be in [0, 1), got {r}")
    return r


def if_zero(model: nn.Module) -> "OrderedDict[str, float]":
    """Fraction of each conv / linear / BN layer's output channels whose weights are all zero (soft-pruned)."""
    out: "OrderedDict[str, float]" = OrderedDict()
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)) \
                and getattr(m, "weight", None) is not None:
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            out[name] = (w == 0).all(1).double().mean().item()
    return out


def format_zero_report(report: Mapping[str, float]) -> List[str]:
    return [f"{name}: {100 * frac:.2f}% of channels zero" for name, frac in report.items()]


def extend_selection(previous: Sequence[int], order: Sequence[int], n: int) -> List[int]:
    """``previous`` (already pruned) stays; the next lowest-ranked channels are added until there are ``n``."""
    chosen = list(dict.fromkeys(int(i) for i in previous))
    taken = set(chosen)
    for i in order:
        if len(chosen) >= n:
            break
        if i not in taken:
            chosen.append(int(i))
            taken.add(int(i))
    return sorted(chosen)


def _budget_target(flops: Optional[float], params: Optional[float], how: str):
    if (flops is None) == (params is None):
        raise UserError("prune_to_budget: give exactly one of flops=… or params=… (a fraction of the original)")
    key, target = ("macs", flops) if flops is not None else ("params", params)
    if not 0.0 < target < 1.0:
        raise UserError(f"prune_to_budget: the {key} target must be a fraction in (0, 1), got {target}")
    if how not in ("hard", "soft", "none"):
        raise UserError(f"prune_to_budget: how must be hard, soft or none, got {how!r}")
    return key, float(target)


def global_counts(channels: Sequence[int], scores: Sequence[torch.Tensor], ratio: float, max_ratio: float = 0.9,
                  normalise: bool = True) -> List[int]:
    """The project's one global ranking: every channel of every group is ranked together and the lowest
    ``ratio`` of all channels go (ties: group order, then channel order). A group loses at most ``max_ratio`` of its
    channels and always keeps one; channels past a group's cap pass to the next candidates, so the total is met.
    Scores are divided by their group's mean |score| so that layers of different scale compete fairly, unless the
    criterion's scores are comparable across layers as they are (BN gammas under network slimming)."""
    entries = []
    for gi, s in enumerate(scores):
        s = s.detach().double().cpu()
        if normalise:
            s = s / s.abs().mean().clamp_min(1e-30)
        entries += [(float(v), gi, c) for c, v in enumerate(s)]
    entries.sort()
    want = int(ratio * sum(channels) + 1e-9)
    caps = [min(int(max_ratio * n + 1e-9), n - 1) for n in channels]
    counts = [0] * len(channels)
    taken = 0
    for _, gi, _ in entries:
        if taken >= want:
            break
        if counts[gi] < caps[gi]:
            counts[gi] += 1
            taken += 1
    return counts


class ChannelPruner:
    """Select channels with ``criterion`` (a name or a ``Criterion``) and prune them softly or by thinning.

    ``batches`` feed data-driven criteria (apoz, taylor, thinet, hrank, bn…); by default ``example_inputs``.
    ``assign({group: criterion})`` gives some groups their own criterion (a schedule with several pruner classes);
    each criterion collects its statistics the first time a group it ranks is ordered."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, criterion: Union[str, Criterion],
                 ignore: Sequence[str] = (), batches: Union[Sequence, Callable[[], Iterable], None] = None,
                 round_to: int = 1, **criterion_kw):
        self.model, self.example_inputs, self.ignore = model, example_inputs, tuple(ignore)
        self.round_to = round_to               # kept widths are multiples of this (hardware-friendly widths)
        self.criterion = make_criterion(criterion, **criterion_kw) if isinstance(criterion, str) else criterion
        # a callable is called (lazily) each time a data-driven criterion collects its statistics
        self.batches = batches if callable(batches) else list(batches) if batches is not None else [example_inputs]
        self.selected: Selection = {}
        self._hooks: List = []
        self._slices: List = []
        self._prepared: set = set()            # ids of the criteria whose statistics are collected
        self._criteria: Dict[str, Criterion] = {}
        # the output layers are found once, so every index we build (the model's, a copy's) names the same groups
        names = {m: n for n, m in model.named_modules()}
        self._frozen = self.ignore + tuple(names[m] for m in output_modules(model, example_inputs))
        self.index = self.index_of(model)

    def refresh_statistics(self) -> None:
        """Data-driven criteria collect their statistics again on next use (the model changed: masked, trained)."""
        self._prepared = set()

    def index_of(self, model: nn.Module) -> GroupIndex:
        return GroupIndex(model, self.example_inputs, ignore=self._frozen, prune_outputs=True, round_to=self.round_to)

    # ------------------------------------------------------------ ranking
    def assign(self, criteria: Mapping[str, Union[str, Criterion]]) -> None:
        """Rank the named groups (any member weight or layer name) with their own criterion (name or object)."""
        made: Dict[str, Criterion] = {}
        for name, c in criteria.items():
            if isinstance(c, str):
                c = made.setdefault(c, make_criterion(c))
            self._criteria[self.index.find(name, source="criteria").name] = c

    def criterion_for(self, g: PrunableGroup) -> Criterion:
        crit = self._criteria.get(g.name, self.criterion)
        if crit.needs_data and id(crit) not in self._prepared:
            data = self.batches() if callable(self.batches) else self.batches
            crit.prepare(self.model, data, {h.root_name: h.root for h in self.index.groups})
        self._prepared.add(id(crit))
        return crit

    def order(self, g: PrunableGroup) -> List[int]:
        return self.criterion_for(g).order(self.index, g)

    def counts(self, ratios: Ratios, global_ranking: bool = False, max_ratio: float = 0.9) -> Dict[str, int]:
        """Channels to remove per group name."""
        if global_ranking:
            if isinstance(ratios, Mapping):
                raise UserError("global ranking takes one ratio for the whole model, not a per-layer dict")
            return self._global_counts(check_ratio(ratios, "global ratio"), max_ratio)
        if isinstance(ratios, Mapping):
            out: Dict[str, int] = {}
            for name, r in ratios.items():
                g = self.index.find(name, source="ratios")
                out[g.name] = g.n_prune(check_ratio(r, f"ratio of {name}"))
            return out
        r = check_ratio(ratios, "ratio")
        return {g.name: g.n_prune(r) for g in self.index.groups}

    def _global_counts(self, ratio: float, max_ratio: float) -> Dict[str, int]:
        groups = self.index.groups
        scores = [self.criterion_for(g)(self.index, g) for g in groups]
        counts = global_counts([g.channels for g in groups], scores, ratio, max_ratio,
                               normalise=not self.criterion.comparable_across_layers)
        return {g.name: n for g, n in zip(groups, counts)}

    def select(self, ratios: Ratios, global_ranking: bool = False, max_ratio: float = 0.9) -> Selection:
        """Root channels to remove per group; channels already soft-pruned stay selected."""
        return self.select_counts(self.counts(ratios, global_ranking, max_ratio))

    def select_counts(self, counts: Mapping[str, int]) -> Selection:
        out: Selection = {}
        for name, n in counts.items():
            prev = self.selected.get(name, [])
            if n > 0 or prev:
                out[name] = extend_selection(prev, self.order(self.index.find(name)), n)
        return out

    # ------------------------------------------------------------ soft pruning
    def soft(self, ratios: Ratios, global_ranking: bool = False, max_ratio: float = 0.9) -> Selection:
        """Zero the selected channels everywhere they live and keep their gradients zero."""
        return self.soft_select(self.select(ratios, global_ranking, max_ratio))

    def soft_select(self, selection: Selection) -> Selection:
        self.selected.update(selection)
        self._mask()
        return dict(self.selected)

    def _mask(self) -> None:
        self._remove_hooks()
        self._slices = [s for name, idxs in self.selected.items()
                        for s in group_slices(self.index, self.index.find(name), idxs)]
        apply_slices(self._slices)
        for p, mask in gradient_masks(self._slices).items():
            if p.requires_grad:  # buffers (e.g. a shortcut's channel map) are only re-zeroed by reapply()
                self._hooks.append(p.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype)))

    def reapply(self) -> None:
        """Re-zero the masked slices (call after ``optimizer.step()``: momentum or weight decay may move them)."""
        apply_slices(self._slices)

    def attach(self, optimizer: torch.optim.Optimizer):
        """Re-zero after every step of ``optimizer``; returns the hook handle (``.remove()`` to detach)."""
        return optimizer.register_step_post_hook(lambda *_: self.reapply())

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def zero_report(self) -> "OrderedDict[str, float]":
        return if_zero(self.model)

    # ------------------------------------------------------------ hard pruning
    def hard(self, ratios: Optional[Ratios] = None, global_ranking: bool = False, max_ratio: float = 0.9
             ) -> Dict[str, dict]:
        """Thin the soft-selected channels (plus ``ratios``' selection, if given); returns the keep-arrays."""
        return self.hard_select(self.select(ratios, global_ranking, max_ratio) if ratios is not None else {})

    def hard_select(self, selection: Selection) -> Dict[str, dict]:
        self.selected.update(selection)
        self._remove_hooks()
        keep = thin(self.index, {k: v for k, v in self.selected.items() if v})
        self._reset()
        return keep

    def _reset(self) -> None:
        """After thinning: channel numbers changed, so selections, statistics and the index start afresh."""
        self.selected, self._slices, self._prepared = {}, [], set()
        self.index = self.index_of(self.model)

    # ------------------------------------------------------------ budgets
    def measure_selection(self, selection: Selection) -> Dict[str, float]:
        """Params and MACs of the model thinned with ``selection`` (on a copy; the model is untouched)."""
        clone = thinned_copy(self.model, self.example_inputs, selection, self._frozen, prune_outputs=True)
        return params_and_macs(clone, self.example_inputs)

    def prune_to_budget(self, flops: Optional[float] = None, params: Optional[float] = None,
                        global_ranking: bool = False, max_ratio: float = 0.9, how: str = "hard",
                        tolerance: float = BUDGET_TOLERANCE, max_steps: int = 20) -> Dict[str, float]:
        """Prune until MACs (``flops``) or parameters (``params``) are <= that fraction of the original and
        within ``tolerance`` of it. Bisects the uniform (or global) ratio; when channel granularity leaves a gap,
        gives channels back one group at a time while the target still holds. ``how``: hard | soft | none.
        Returns the ratio found, the fraction reached and the target."""
        key, target = _budget_target(flops, params, how)
        base = params_and_macs(self.model, self.example_inputs)[key]
        cache: Dict[tuple, float] = {}

        def reached(counts: Mapping[str, int]) -> float:
            k = tuple(sorted(counts.items()))
            if k not in cache:
                cache[k] = self.measure_selection(self.select_counts(counts))[key] / base
            return cache[k]

        def plan(r: float) -> Dict[str, int]:
            return self.counts(r, global_ranking, max_ratio)

        lo, hi = 0.0, max_ratio if global_ranking else 0.99
        if reached(plan(hi)) > target:
            raise UserError(f"prune_to_budget: even ratio {hi} leaves {reached(plan(hi)):.1%} of the {key}; "
                            f"the target {target:.1%} is out of reach")
        bar = tqdm(range(max_steps), desc=f"{key} budget", leave=False)
        for _ in bar:
            if reached(plan(hi)) >= target - tolerance:
                break
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reached(plan(mid)) <= target else (mid, hi)
            bar.set_postfix(ratio=f"{hi:.4f}", reached=f"{reached(plan(hi)):.3f}")
        bar.close()
        counts = self._give_back(plan(hi), plan(lo), reached, target, tolerance)
        result = {"ratio": hi, key: reached(counts), "target": target}
        if result[key] < target - tolerance:
            log.warning("prune_to_budget: channel granularity allows %.1f%% of the %s, not within %.0f%% of %.0f%%",
                        100 * result[key], key, 100 * tolerance, 100 * target)
        selection = self.select_counts(counts)
        if how == "soft":
            self.soft_select(selection)
        elif how == "hard":
            self.hard_select(selection)
        log.info("budget: ratio %.4f -> %s %.3f of the original (target %.3f)", hi, key, result[key], target)
        return result

    @staticmethod
    def _give_back(counts: Dict[str, int], fewer: Mapping[str, int], reached: Callable[[Mapping[str, int]], float],
                   target: float, tolerance: float) -> Dict[str, int]:
        """From the feasible plan ``counts``, step each group towards the infeasible ``fewer`` while the target
        holds, until within tolerance (fills the gap that the bisection's discrete steps leave)."""
        counts = dict(counts)
        for name in counts:
            while reached(counts) < target - tolerance and counts[name] > fewer.get(name, 0):
                trial = {**counts, name: counts[name] - 1}
                if reached(trial) > target:
                    break
                counts = trial
        return counts

    # ------------------------------------------------------------ progressive
    def progressive(self, ratios: Ratios, train_fn: Callable[[nn.Module], None], global_ranking: bool = False,
                    max_ratio: float = 0.9, how: str = "hard") -> List[Dict[str, dict]]:
        """Prune one group at a time (model order), calling ``train_fn(model)`` after each; data criteria are
        re-measured before each step. Returns the keep-arrays of each step (hard) or an empty list (soft)."""
        if how not in ("hard", "soft"):
            raise UserError(f"progressive: how must be hard or soft, got {how!r}")
        plan = {k: n for k, n in self.counts(ratios, global_ranking, max_ratio).items() if n > 0}
        keeps: List[Dict[str, dict]] = []
        for name in tqdm([g.name for g in self.index.groups if g.name in plan], desc="progressive"):
            self._prepared = set()  # statistics of the model as trained so far
            g = self.index.find(name)
            idxs = extend_selection(self.selected.get(name, []), self.order(g), plan[name])
            if how == "hard":
                keeps.append(thin(self.index, {name: idxs}))
                self._reset()
            else:
                self.selected[name] = idxs
                self._mask()
            log.info("progressive: pruned %d of %d channels of %s", len(idxs), g.channels, name)
            train_fn(self.model)
            if how == "soft":
                self.reapply()
        return keeps
