"""Target-true schedules: the largest MACs (or params) reduction whose *thinned, composed* model meets the target.

A per-layer rule (``auto_make_yaml.py``: each layer alone stays above the target) does not bound the composed
model, because the layers' losses add up. Here every candidate schedule is applied to a deep copy of the model
(thinned with the criterion, BN statistics re-estimated on calibration batches from the training side — AdaBN)
and measured on a CHECK split that is disjoint from the sensitivity subset; the final schedule is then measured
once on a REPORT split, disjoint from both.

Search (the sensitivity CSV gives the order, ``compression_tool.engine.budget``'s moves):
1. bisection on the prefix of ``ordered_moves`` (least sensitive moves first): the longest prefix that passes;
2. greedy rounds: each layer's next level, least sensitive first, is tried on top of the schedule and kept
   when the composed model still passes; a move that fails is not retried (it was the damaging one).

The check decision accounts for measurement noise. With a ``drop`` (points below the unpruned model), the
per-sample difference unpruned − pruned on the check images is bootstrapped (paired: only the images whose
outcome changes add variance) and its one-sided upper bound at ``confidence`` must be <= ``drop``. With an
absolute ``target`` the one-sided lower bound of the pruned model's check metric must be >= ``target``.
When the unpruned model itself cannot pass (a target finer than the check split can resolve), the result is the
empty schedule and ``resolvable`` is False.

The search keeps one of the many candidates that passed, so its margin is optimistic (the winner's curse). By
default (``multiple_testing='simultaneous'``) the pick is re-decided at the level at which every candidate measured
holds together, backing off along the nested schedules of the search's moves; lighter ones than the search tried
are measured for that (``guard_steps``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.bn_stats import BN_METHODS, BNReestimator
from compression_tool.engine.budget import Move, envelope, ordered_moves, prune_counts, schedule_after
from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.criteria import Criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel
from compression_tool.engine.sensitivity_ci import smallest_n
from compression_tool.engine.thinning import thin
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

RESOURCES = ("macs", "params", "latency")
MULTIPLE_TESTING = ("none", "bonferroni", "posthoc", "simultaneous")


# ---------------------------------------------------------------------------- measurements

PLURAL = {"identity": "identities", "image": "images", "sample": "samples"}


@dataclass
class Measurement:
    """A metric on one split (higher is better, e.g. top-1 in percent), with its per-sample values (their mean is
    ``value``) for the bootstrap."""
    value: float
    per_sample: np.ndarray
    n: int
    pairs: Optional[np.ndarray] = None   # [n, 2] image indices when each sample is a pair of images (faces)
    unit: str = "sample"                 # what the bound resamples first, for messages: image | identity | sample
    groups: Optional[np.ndarray] = None  # the identity of every image index (faces): two-stage bootstrap


Evaluator = Callable[[nn.Module], Measurement]


@torch.no_grad()
def correct_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """100 for every image classified correctly (top-1), 0 otherwise (mean = top-1 in percent)."""
    was = model.training
    model.eval()
    hits = [model(x[i:i + batch_size]).argmax(1).eq(y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    model.train(was)
    return 100.0 * torch.cat(hits).double().numpy()


def classifier_evaluator(x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> Evaluator:
    """Top-1 (percent) on ``(x, y)`` with per-image outcomes."""
    if len(y) == 0:
        raise UserError("target-true: an evaluation split is empty")

    def evaluate(model: nn.Module) -> Measurement:
        s = correct_per_sample(model, x, y, batch_size)
        return Measurement(float(s.mean()), s, len(s))
    return evaluate


def _group_members(groups: np.ndarray) -> List[np.ndarray]:
    """The unit indices of each group of two or more units, groups in ascending order."""
    order = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(np.diff(groups[order])) + 1
    return [cols for cols in np.split(order, cuts) if cols.size > 1]


def _multinomial_within(rng: np.random.Generator, members: Sequence[np.ndarray], units: int,
                        draws: int) -> np.ndarray:
    """[draws, units] multiplicities: each group's units (``_group_members``) resampled within that group."""
    m = np.ones((draws, units))
    for cols in members:
        m[:, cols] = rng.multinomial(cols.size, np.full(cols.size, 1.0 / cols.size), size=draws)
    return m


def _check_samples(n: int, pairs: Optional[np.ndarray], groups: Optional[np.ndarray]) -> None:
    if n == 0:
        raise UserError("bootstrap: no samples")
    if pairs is not None and len(pairs) != n:
        raise UserError(f"bootstrap: {n} samples but {len(pairs)} pairs")
    if groups is not None and pairs is None:
        raise UserError("bootstrap: groups need the samples' image indices (pairs)")


def bootstrap_means(values: np.ndarray, n_boot: int = 2000, seed: int = 0, adverse: Optional[float] = None,
                    pairs: Optional[np.ndarray] = None, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """[C, n_boot] bootstrap means of every row of ``values`` ([C, n], or [n] for one row): the *same* resamples
    for every row (the draws depend on ``seed`` and the sizes only), so rows that are candidates measured on the
    same samples keep their correlation (``simultaneous_level``). ``adverse``, ``pairs`` and ``groups`` as in
    ``bootstrap_mean_bound``."""
    V = np.atleast_2d(np.asarray(values, dtype=np.float64))
    rows, n = V.shape
    _check_samples(n, pairs, groups)
    rng = np.random.default_rng(seed)
    means = np.empty((rows, n_boot))
    if pairs is None:
        if adverse is not None:
            V = np.concatenate([V, np.full((rows, 1), float(adverse))], axis=1)
        chunk = max(1, 2_000_000 // V.shape[1])
        for i in range(0, n_boot, chunk):
            j = min(n_boot, i + chunk)
            pick = rng.integers(0, V.shape[1], size=(j - i, V.shape[1]))
            for r in range(rows):
                means[r, i:j] = V[r][pick].mean(axis=1)
        return means
    used, idx = np.unique(np.asarray(pairs, dtype=np.int64), return_inverse=True)
    idx = idx.reshape(-1, 2)
    single = idx[:, 0] == idx[:, 1]
    if groups is not None:
        gused, gidx = np.unique(np.asarray(groups)[used], return_inverse=True)
        ga, gb = gidx[idx[:, 0]], gidx[idx[:, 1]]
        same_group = ga == gb
        members = _group_members(gidx)
    extra = 0.0 if adverse is None else float(adverse)
    chunk = max(1, 2_000_000 // max(n, used.size))
    for i in range(0, n_boot, chunk):
        j = min(n_boot, i + chunk)
        if groups is None:
            m = rng.multinomial(used.size, np.full(used.size, 1.0 / used.size), size=j - i).astype(np.float64)
        else:
            m = _multinomial_within(rng, members, used.size, j - i)
            mg = rng.multinomial(gused.size, np.full(gused.size, 1.0 / gused.size), size=j - i).astype(float)
        w = m[:, idx[:, 0]] * m[:, idx[:, 1]]
        if single.any():
            w[:, single] = m[:, idx[single, 0]]
        if groups is not None:
            w *= np.where(same_group, mg[:, ga], mg[:, ga] * mg[:, gb])
        # the adverse pseudo-pair is drawn like an independent sample (Poisson(1) copies, as in the plain case)
        wa = rng.poisson(1.0, size=j - i).astype(np.float64) if adverse is not None else np.zeros(j - i)
        total = np.maximum(w.sum(axis=1) + wa, 1e-12)
        for r in range(rows):
            means[r, i:j] = ((w * V[r]).sum(axis=1) + wa * extra) / total
    return means


def bootstrap_mean_bound(values: np.ndarray, confidence: float, upper: bool, n_boot: int = 2000,
                         seed: int = 0, adverse: Optional[float] = None, pairs: Optional[np.ndarray] = None,
                         groups: Optional[np.ndarray] = None) -> float:
    """One-sided percentile-bootstrap bound of the mean of ``values`` (upper or lower) at ``confidence``.

    ``adverse``: one pseudo-sample with this value is added first (e.g. one lost image), so that a split on
    which nothing changed does not claim a zero-width interval (the bootstrap's blind spot with few samples;
    in the spirit of the rule of three).

    ``pairs`` ([n, 2] image indices): the samples are pairs of images that share images (face verification), so
    the *images* are resampled (the pigeonhole bootstrap of dyadic data): a pair's weight is the product of its two
    images' multiplicities. Resampling pairs as if independent would understate the spread. A sample whose two
    indices are the same image (a per-image value) weighs that image's multiplicity.

    ``groups`` (the group of every image index, e.g. its identity): two-stage resampling — the groups first, then
    the images within each group — so the bound carries both the spread between people and the image noise (the
    report split holds other people). A pair's weight is its images' multiplicities times its groups' (one group's
    multiplicity, not its square, when both images are of one person: the same/different balance is kept on
    average)."""
    v = np.asarray(values, dtype=np.float64)
    _check_samples(v.size, pairs, groups)
    probe = v if adverse is None else np.append(v, adverse)
    if np.all(probe == probe[0]):
        return float(probe[0])
    means = bootstrap_means(v, n_boot, seed, adverse, pairs, groups)[0]
    return float(np.quantile(means, confidence if upper else 1.0 - confidence))


def simultaneous_level(means: np.ndarray, confidence: float, upper: bool) -> float:
    """The per-candidate level at which the percentile bounds of *all* rows of ``means`` ([C, B] bootstrap means on
    the same resamples, ``bootstrap_means``) hold together in ``confidence`` of the resamples: max-rank calibration
    (Westfall–Young). A search that keeps the best of C candidates it measured needs its pick's bound at this level,
    not at ``confidence``. Candidates that move together (nested schedules changing the same few predictions) cost
    little: C copies of one candidate give ``confidence`` itself, C independent ones about Šidák's
    ``confidence ** (1 / C)``."""
    m = np.asarray(means, dtype=np.float64) if upper else -np.asarray(means, dtype=np.float64)
    rows, draws = m.shape
    if rows == 0 or draws < 2:
        return confidence
    ordered = np.sort(m, axis=1)
    # the level each draw needs for each row's bound (np.quantile's linear rule) to cover it; then the worst row
    need = np.stack([np.searchsorted(ordered[r], m[r], side="left") for r in range(rows)]).max(axis=0) / (draws - 1)
    k = min(draws - 1, max(0, math.ceil(confidence * draws) - 1))
    return max(confidence, float(np.sort(need)[k]))


def samples_to_vouch(diff: np.ndarray, drop: float, confidence: float,
                     adverse: Optional[float] = None) -> Optional[int]:
    """About how many check samples a one-sided normal bound at ``confidence`` would need for the per-sample drops
    ``diff`` (unpruned − pruned) to stay within ``drop``: the smallest n with mean + z·sd/√n ≤ ``drop``, where
    mean and sd are those of n samples distributed like ``diff`` plus the one ``adverse`` pseudo-sample the check
    bound adds (without it, a cut that changed almost nothing would seem to need fewer samples than the bound
    does). None when the measured mean drop itself exceeds ``drop`` (no split size vouches for it). Pairs that
    share images make the real need larger."""
    d = np.asarray(diff, dtype=np.float64)
    m, var = float(d.mean()), float(d.var())
    if m >= drop:
        return None
    z = NormalDist().inv_cdf(confidence)
    if adverse is None:
        return int(math.ceil((z * float(d.std(ddof=1) if d.size > 1 else 0.0) / (drop - m)) ** 2))

    def bound(n: int) -> float:
        mean = (n * m + adverse) / (n + 1)
        spread = (n * (var + (m - mean) ** 2) + (adverse - mean) ** 2) / n      # ddof = 1 over the n + 1
        return mean + z * math.sqrt(spread / (n + 1))

    return smallest_n(lambda n: bound(n) <= drop)


# ---------------------------------------------------------------------------- config and result

@dataclass
class TargetTrueConfig:
    target: Optional[float] = None       # absolute metric the pruned model must keep (e.g. top-1 96.0)
    drop: Optional[float] = None         # or: at most this many points below the unpruned model
    metric: str = "top1"                 # CSV column that orders the moves
    resource: str = "macs"               # what the reduction is measured in: macs | params | latency (predicted)
    bn_recalib_batches: int = 8          # AdaBN batches per candidate (0 = keep the running statistics)
    bn_mode: str = "auto"                # auto: per candidate the better of as-is / AdaBN on check; always; never
    bn_method: str = "adabn"             # how BN statistics are re-estimated: adabn | paired (engine.bn_stats)
    confidence: float = 0.95             # one-sided level of the check bound
    n_boot: int = 2000
    seed: int = 0
    max_evals: int = 60                  # composed-model evaluations on the check split (bisection + greedy)
    pseudo_sample: bool = True           # add one adverse pseudo-sample to the check bound (small-split guard)
    adverse: float = 100.0               # its value in the drop mode: one lost image (metric in percent)
    greedy: bool = True
    layer_report: bool = True            # also measure the composed model layer by layer (check and report)
    multiple_testing: str = "simultaneous"   # none | bonferroni | posthoc | simultaneous (decision_confidence,
                                             # adjusted_level, ComposedChecker.family_level)
    confirm_tries: int = 16              # with a confirm split: points of the search's chain tested there (at most)
    guard_steps: int = 16                # back-off guards: lighter nested schedules measured on check (at most)
    search_confidence: Optional[float] = None   # with a confirm split: the search's level (None: decision_confidence)
    reanalyse: bool = False              # greedy rounds re-measure every layer's next level on the composed model
                                         # (on the SA split, NNI-style) to order the moves; needs sa_eval

    def decision_confidence(self) -> float:
        """The per-candidate level: ``confidence``, or Bonferroni over the ``max_evals`` candidates the search may
        test (``multiple_testing='bonferroni'``: guards the winner's curse of picking a lucky pass, at a cost)."""
        if self.multiple_testing == "bonferroni":
            return 1.0 - (1.0 - self.confidence) / self.max_evals
        return self.confidence

    def adjusted_level(self, tested: int) -> float:
        """``multiple_testing='posthoc'``: the level at which the search's pick is re-decided once it is over —
        Bonferroni over the ``tested`` composed models it actually measured (the search itself ran at
        ``confidence`` and could explore; the pick then backs off along its chain until it passes this)."""
        return 1.0 - (1.0 - self.confidence) / max(1, tested)

    def search_level(self, confirming: bool) -> float:
        """The level of the search's check decisions. With a confirm split the search only proposes a chain that
        the confirm split then tests at ``confidence``, so it may propose further (``search_confidence``)."""
        if confirming and self.search_confidence is not None:
            return self.search_confidence
        return self.decision_confidence()

    def pseudo_value(self) -> Optional[float]:
        """The adverse pseudo-sample every check bound adds (``pseudo_sample``): one lost image in the drop mode
        (``adverse``), one failure (0) in the target mode; None when off."""
        if not self.pseudo_sample:
            return None
        return self.adverse if self.drop is not None else 0.0

    def validate(self) -> None:
        if (self.target is None) == (self.drop is None):
            raise UserError("target-true: give exactly one of a target metric or a drop budget")
        val = self.target if self.target is not None else self.drop
        if val is None or not math.isfinite(float(val)):
            raise UserError(f"target-true: the {'target' if self.target is not None else 'drop'} must be a finite "
                            f"number, got {val}")
        if self.drop is not None and self.drop < 0:
            raise UserError(f"target-true: the drop budget must be >= 0 points, got {self.drop}")
        if self.resource not in RESOURCES:
            raise UserError(f"target-true: unknown resource {self.resource!r}; expected one of {RESOURCES}")
        if not 0.5 <= self.confidence < 1.0:
            raise UserError(f"target-true: confidence must be in [0.5, 1), got {self.confidence}")
        if self.search_confidence is not None and not 0.5 <= self.search_confidence < 1.0:
            raise UserError(f"target-true: the search confidence must be in [0.5, 1), got {self.search_confidence}")
        if self.guard_steps < 0:
            raise UserError(f"target-true: guard_steps must be >= 0, got {self.guard_steps}")
        if self.confirm_tries < 1:
            raise UserError(f"target-true: confirm_tries must be >= 1, got {self.confirm_tries}")
        if self.multiple_testing not in MULTIPLE_TESTING:
            raise UserError(f"target-true: multiple_testing must be one of {MULTIPLE_TESTING}, got "
                            f"{self.multiple_testing!r}")
        if self.bn_mode not in ("auto", "always", "never"):
            raise UserError(f"target-true: bn_mode must be auto, always or never, got {self.bn_mode!r}")
        if self.bn_method not in BN_METHODS:
            raise UserError(f"target-true: bn_method must be one of {', '.join(BN_METHODS)}, got {self.bn_method!r}")
        if self.bn_recalib_batches < 0 or self.max_evals < 1:
            raise UserError("target-true: bn_recalib_batches must be >= 0 and max_evals >= 1")


@dataclass
class Trial:
    """One composed candidate measured on the check split."""
    step: str                            # "baseline" | "bisect" | "greedy" | "guard" | "confirm"
    sparsities: Dict[str, float]
    check: float
    bound: float                         # the check bound the decision used (lower metric / upper drop)
    passed: bool
    macs: float
    params: float
    latency: Optional[float] = None      # predicted ms (engine.latency), when a latency model is given


@dataclass
class TargetTrueResult:
    sparsities: Dict[str, float]         # per-layer level (CSV weight names; 0 = not pruned)
    metric: str
    mode: str                            # "drop" | "target"
    threshold: float                     # the drop or target value
    resolvable: bool                     # False: the unpruned model cannot pass on the check split
    check_baseline: float
    check: float
    check_bound: float
    report_baseline: Optional[float]
    report: Optional[float]
    report_bound: Optional[float]        # lower bound of the report metric / upper bound of the report drop
    macs: float
    params: float
    base_macs: float
    base_params: float
    resource: str
    adabn: bool                          # whether the final schedule's numbers include BN re-estimation
    check_n: int
    report_n: Optional[int]
    evals: int
    seconds: float
    per_layer: List[Dict[str, object]] = field(default_factory=list)
    trace: List[Trial] = field(default_factory=list)
    latency: Optional[float] = None      # predicted ms of the schedule / the unpruned model (latency model given)
    base_latency: Optional[float] = None
    model: Optional[nn.Module] = field(default=None, repr=False)   # the thinned (AdaBN'd) model; not serialised
    confirm: Optional[Dict[str, object]] = None   # confirm split: {n, unpruned, chain, tries, tested, passed,
                                                  # value, bound} (the last two: the link kept)
    level: float = 0.95                  # the one-sided level of check_bound (after any multiplicity adjustment)
    sa_evals: int = 0                    # composed models measured on the SA split (reanalyse)
    search_pick: Optional[Dict[str, object]] = None   # the search's own pick before a guard / confirm changed it
    adjusted: Optional[Dict[str, object]] = None      # unguarded searches: the pick's check bound at the
                                                      # simultaneous level over the candidates {level, bound, passed}
    bn_method: str = "adabn"             # how BN statistics were re-estimated when ``adabn`` (engine.bn_stats)
    guards: Optional[Dict[str, Dict[str, object]]] = None   # the pick each back-off guard gives on this search
                                                            # {posthoc|simultaneous: {level, sparsities, adabn,
                                                            # reduction}}

    @property
    def reduction(self) -> float:
        return 1.0 - getattr(self, self.resource) / getattr(self, f"base_{self.resource}")

    def promised(self) -> bool:
        """Whether the report split holds the promise within 0.5 point."""
        if self.report is None or self.report_baseline is None:
            return False
        if self.mode == "drop":
            return self.report_baseline - self.report <= self.threshold + 0.5
        return self.report >= self.threshold - 0.5

    def to_dict(self) -> Dict[str, object]:
        d = asdict(replace(self, model=None))       # asdict would deep-copy the model
        d.pop("model")
        d["reduction"] = self.reduction
        d["promised_within_0.5"] = self.promised()
        return d


# ---------------------------------------------------------------------------- the engine

class ComposedChecker:
    """Builds and measures composed candidates (deep copy -> thin -> AdaBN -> check split), cached."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, criterion: Criterion,
                 check_eval: Evaluator, calib_batches: Sequence, cfg: TargetTrueConfig,
                 ignore: Sequence[str] = (), latency: Optional[LatencyModel] = None):
        self.model, self.x, self.cfg, self.ignore = model.eval(), example_inputs, cfg, list(ignore)
        self.latency = latency
        self.index = GroupIndex(model, example_inputs, ignore=ignore)
        self.orders = {g.name: criterion.order(self.index, g) for g in self.index.groups}
        self.check_eval = check_eval
        self.calib = list(calib_batches)[:cfg.bn_recalib_batches] if cfg.bn_recalib_batches else []
        if cfg.bn_recalib_batches and not self.calib:
            raise UserError("target-true: BN re-estimation asked for, but no calibration batches were given")
        self.base = check_eval(model)
        self.bn = BNReestimator(cfg.bn_method, model, self.calib)    # the reference's BN inputs measured once
        self.cache: Dict[Tuple[Tuple[str, int], ...], Tuple[Measurement, Dict[str, float]]] = {}
        self.adabn: Dict[Tuple[Tuple[str, int], ...], bool] = {}
        self.variants: Dict[Tuple[Tuple[str, int], ...], List[Measurement]] = {}   # every BN variant measured
        self.evals = 0

    def on(self, evaluate: Evaluator) -> "ComposedChecker":
        """The same candidates (model, group index, channel orders, calibration) measured by ``evaluate`` instead,
        with a cache of their own: e.g. on the SA split for re-analysis. The index and the criterion's orders are
        shared, not recomputed, so both checkers thin exactly the same channels."""
        other = copy.copy(self)
        other.check_eval, other.base = evaluate, evaluate(self.model)
        other.cache, other.adabn, other.variants, other.evals = {}, {}, {}, 0
        return other

    def counts(self, sparsities: Mapping[str, float]) -> Dict[str, int]:
        return prune_counts(self.index, sparsities)

    def build(self, sparsities: Mapping[str, float], adabn: Optional[bool] = None) -> nn.Module:
        """The thinned copy for per-weight levels ``sparsities``; BN re-estimated when ``adabn`` (default: the
        choice ``measure`` made for this schedule, else whenever calibration batches are configured)."""
        counts = self.counts(sparsities)
        if adabn is None:
            adabn = self.adabn.get(self._key(counts), bool(self.calib))
        clone = copy.deepcopy(self.model).eval()
        keep = thin(GroupIndex(clone, self.x, ignore=self.ignore),
                    {name: sorted(self.orders[name][:n]) for name, n in counts.items() if n > 0})
        if adabn and self.calib and counts:
            self.bn.apply(clone, keep)
        return clone

    @staticmethod
    def _key(counts: Mapping[str, int]) -> Tuple[Tuple[str, int], ...]:
        return tuple(sorted((k, v) for k, v in counts.items() if v > 0))

    def measure(self, sparsities: Mapping[str, float]) -> Tuple[Measurement, Dict[str, float]]:
        """Check-split measurement and cost of the composed schedule (cached). With ``bn_mode='auto'`` both the
        thinned model as is and its AdaBN version are measured and the better one on the check split is kept
        (AdaBN from a few hundred images can cost a model more than light pruning does)."""
        counts = self.counts(sparsities)
        key = self._key(counts)
        if key not in self.cache:
            if not key:
                self.cache[key] = (self.base, self.cost(self.model))
                self.adabn[key] = False
            else:
                variants = {"never": [False], "always": [True], "auto": [False, True]}[self.cfg.bn_mode]
                if not self.calib:
                    variants = [False]
                best = None
                self.variants[key] = []
                for v in variants:
                    m = self.build(sparsities, adabn=v)
                    got = self.check_eval(m)
                    self.variants[key].append(got)
                    if best is None or got.value > best[0].value:
                        best = (got, self.cost(m), v)
                self.cache[key] = best[:2]
                self.adabn[key] = best[2]
                self.evals += 1
        return self.cache[key]

    def cost(self, model: nn.Module) -> Dict[str, float]:
        """MACs and params (and the predicted latency in ms, with a latency model) of ``model``."""
        c = params_and_macs(model, self.x)
        if self.latency is not None:
            c["latency"] = self.latency.base if model is self.model else self.latency.predict(model)
        return c

    def key(self, sparsities: Mapping[str, float]) -> Tuple[Tuple[str, int], ...]:
        """What identifies a schedule: the channels each group loses (levels that thin the same are one schedule)."""
        return self._key(self.counts(sparsities))

    def adabn_for(self, sparsities: Mapping[str, float]) -> bool:
        return self.adabn.get(self.key(sparsities), False)

    def bound(self, m: Measurement, base: Measurement, level: Optional[float] = None) -> Tuple[float, bool]:
        """(the bound the decision uses, passed?) at ``level`` (default: ``cfg.decision_confidence()``)"""
        cfg = self.cfg
        level = cfg.decision_confidence() if level is None else level
        if cfg.drop is not None and m is base:
            return 0.0, True                 # the unpruned model itself: no drop by definition
        if cfg.drop is not None:
            if len(base.per_sample) != len(m.per_sample):
                raise UserError("target-true: the check evaluation returned a different number of samples")
            hi = bootstrap_mean_bound(base.per_sample - m.per_sample, level, True, cfg.n_boot,
                                      cfg.seed, adverse=cfg.pseudo_value(), pairs=m.pairs, groups=m.groups)
            return hi, hi <= cfg.drop + 1e-9
        lo = bootstrap_mean_bound(m.per_sample, level, False, cfg.n_boot, cfg.seed,
                                  adverse=cfg.pseudo_value(), pairs=m.pairs, groups=m.groups)
        return lo, lo >= float(cfg.target) - 1e-9

    def family(self) -> List[Measurement]:
        """Every check measurement of a thinned candidate so far: under ``bn_mode='auto'`` both BN variants of each,
        since keeping the better of two on check is a choice among them too."""
        return [m for key in self.cache if key for m in self.variants.get(key, [self.cache[key][0]])]

    def family_level(self, base: Measurement) -> float:
        """``multiple_testing='simultaneous'``: the level at which the check bounds of every composed candidate
        measured so far hold together at ``cfg.confidence`` (``simultaneous_level`` on the same resamples), never
        above Bonferroni's. It counts how far the candidates' outcomes move together: a light cut of one layer
        changes other predictions than one of the next. Under ``bn_mode='auto'`` each candidate is the better of two
        BN variants on check, so both variants are in the family (``family``); with them and the guard's steps it
        came out at 98.9–99.5 % on digits and 99.75–99.85 % on the ResNets (docs/target_true.md)."""
        cfg = self.cfg
        measured = self.family()
        if not measured:
            return cfg.confidence
        values = np.stack([base.per_sample - m.per_sample if cfg.drop is not None else m.per_sample
                           for m in measured])
        means = bootstrap_means(values, cfg.n_boot, cfg.seed, cfg.pseudo_value(), measured[0].pairs,
                                measured[0].groups)
        return min(simultaneous_level(means, cfg.confidence, upper=cfg.drop is not None),
                   cfg.adjusted_level(len(measured)))


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
    """Search the schedule (see the module doc). ``table`` is the sensitivity CSV as
    ``compression_tool.engine.sensitivity.load_csv``
    returns it (measured on the SA split); ``check_eval`` / ``report_eval`` measure on the disjoint splits;
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
        # the smallest bound any schedule that changes no check outcome can get
        floor = bootstrap_mean_bound(np.zeros(base.n), level, True, cfg.n_boot, cfg.seed,
                                     adverse=cfg.pseudo_value(), pairs=base.pairs,
                                     groups=base.groups)
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
        levels = _levels(table)
        env = {layer: dict(envelope(curve, cfg.metric)) for layer, curve in table.items()}
        sign = sign_of(cfg.metric)
        failed: set = set()
        improved = cfg.greedy
        sa_chk = chk.on(sa_eval) if cfg.reanalyse else None
        while improved and chk.evals < cfg.max_evals:
            improved = False
            options = []
            for layer in layers:
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
    bar.close()
    search_evals = chk.evals
    if len(chain) > 1:
        chain[-1] = best                  # (a greedy step that changed no count renamed the last link)
    search_pick = {"sparsities": dict(best.sparsities), "adabn": chk.adabn_for(best.sparsities),
                   "check": best.check, "bound": best.bound}
    guards: Optional[Dict[str, Dict[str, object]]] = None
    if resolvable and confirm_eval is None and search_evals > 0 and cfg.multiple_testing != "bonferroni":
        # the pick re-decided once the search's candidates are accounted for, both ways (cached measurements)
        steps = _guard_steps(chk, base, _sequence(chk, moves, layers, prefix, chain), chain, cfg, level,
                             trace)
        search_evals = chk.evals         # the lighter steps measured for the back-off belong to the family too
        tests = len(chk.family())        # check measurements: candidates, each BN variant, the guard's steps
        levels = {"posthoc": cfg.adjusted_level(tests), "simultaneous": chk.family_level(base)}
        guards = {}
        for guard, lv in levels.items():
            t = _back_off(chk, base, steps, lv, quiet=guard != cfg.multiple_testing)
            guards[guard] = {"level": lv, "tests": tests, "sparsities": dict(t.sparsities),
                             "adabn": chk.adabn_for(t.sparsities),
                             "reduction": 1.0 - getattr(t, cfg.resource) / getattr(chain[0], cfg.resource)}
            if guard == cfg.multiple_testing:
                level, best = lv, t
    confirmed = None
    if confirm_eval is not None and resolvable:
        best, confirmed = _confirm(chk, model, _sequence(chk, moves, layers, prefix, chain), confirm_eval, cfg)
    m_check, cost = chk.measure(best.sparsities)
    b_check, _ = chk.bound(m_check, base, level)
    pruned = any(n > 0 for n in chk.counts(best.sparsities).values())
    if cfg.drop is not None and resolvable and confirm_eval is None and not pruned:
        _resolution_hint(chk, base, trace, cfg, level)
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
    rep_base = rep = rep_bound = None
    rep_n = None
    final = chk.build(best.sparsities)
    if report_eval is not None:
        rb, rm = report_eval(model), report_eval(final)
        rep_base, rep, rep_n = rb.value, rm.value, rm.n
        if cfg.drop is not None:
            rep_bound = bootstrap_mean_bound(rb.per_sample - rm.per_sample, cfg.confidence, True, cfg.n_boot,
                                             cfg.seed, pairs=rm.pairs, groups=rm.groups)
        else:
            rep_bound = bootstrap_mean_bound(rm.per_sample, cfg.confidence, False, cfg.n_boot, cfg.seed,
                                             pairs=rm.pairs, groups=rm.groups)
    full = chk.cost(model)
    per_layer = [{"layer": layer, "sparsity": best.sparsities[layer],
                  "predicted_alone": dict(envelope(table[layer], cfg.metric)).get(best.sparsities[layer],
                                                                                  base.value)}
                 for layer in layers if best.sparsities[layer] > 0]
    if cfg.layer_report:
        # composed metric as the layers are added (least sensitive first): predicted alone vs achieved composed
        per_layer.sort(key=lambda row: -sign_of(cfg.metric) * float(row["predicted_alone"]))
        cum = {layer: 0.0 for layer in layers}
        for row in per_layer:
            cum[str(row["layer"])] = float(row["sparsity"])
            m_c, _ = chk.measure(cum)
            row["composed_check"] = m_c.value
            if report_eval is not None:
                row["composed_report"] = report_eval(chk.build(cum)).value
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


def _resolution_hint(chk: ComposedChecker, base: Measurement, trace: Sequence[Trial], cfg: TargetTrueConfig,
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


def _guard_steps(chk: ComposedChecker, base: Measurement, sequence: Sequence[Dict[str, float]],
                 chain: Sequence[Trial], cfg: TargetTrueConfig, level: float, trace: List[Trial]) -> List[Trial]:
    """The nested schedules a back-off guard walks: the search's chain plus up to ``cfg.guard_steps`` evenly spaced
    schedules of ``sequence`` (``_sequence``), measured on check and added to ``trace``. The bisection lands on few,
    coarse links; without lighter ones a guard that rejects them keeps nothing, where a light cut that changes
    almost no prediction would pass. Nested light cuts change much the same predictions, so the simultaneous level
    barely rises for them."""
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


def _back_off(chk: ComposedChecker, base: Measurement, chain: Sequence[Trial], level: float,
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


def _sequence(chk: ComposedChecker, moves: Sequence[Move], layers: Sequence[str], prefix: int,
              chain: Sequence[Trial]) -> List[Dict[str, float]]:
    """The nested schedules along the search's moves, unpruned first: every prefix of the move order up to the
    bisection's (not only the few links the bisection happened to land on), then the greedy's links. Schedules that
    thin the same channels appear once. A back-off guard (``_guard_steps``) and a confirm test (``_confirm``) walk
    them; for the confirm test they are fixed by the search alone, as a fixed-sequence test needs."""
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


def _confirm(chk: ComposedChecker, model: nn.Module, sequence: Sequence[Dict[str, float]], confirm_eval: Evaluator,
             cfg: TargetTrueConfig) -> Tuple[Trial, Dict[str, object]]:
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


def composed_metric(model: nn.Module, example_inputs: torch.Tensor, criterion: Criterion,
                    sparsities: Mapping[str, float], evaluate: Evaluator, calib_batches: Sequence = (),
                    ignore: Sequence[str] = (), bn_method: str = "adabn") -> Tuple[Measurement, Dict[str, float]]:
    """Measure any schedule (e.g. the per-layer rule's) composed: thin a copy, re-estimate BN (``bn_method``) when
    batches are given (always: no choice is made on the data measured here)."""
    calib_batches = list(calib_batches)
    cfg = TargetTrueConfig(drop=0.0, bn_recalib_batches=len(calib_batches), bn_mode="always", bn_method=bn_method)
    chk = ComposedChecker(model, example_inputs, criterion, evaluate, calib_batches, cfg, ignore)
    return chk.measure(sparsities)


def format_result(r: TargetTrueResult) -> str:
    """The schedule report printed by the CLI (and stored as JSON next to the YAML)."""
    goal = f"at most {r.threshold:g} points below the unpruned model" if r.mode == "drop" else f">= {r.threshold:g}"
    lines = [f"target-true schedule: {r.metric} {goal}; decided on the check split ({r.check_n} samples), "
             f"judged on the report split ({r.report_n} samples)"]
    if not r.resolvable:
        lines.append("  the target is finer than the check split can resolve: nothing pruned")
    lines.append(f"  {'layer (added in this order)':<32} {'level':>6} {'alone (SA)':>11} {'composed: check':>16} "
                 f"{'report':>7}")
    for row in r.per_layer:
        c, rep = row.get("composed_check"), row.get("composed_report")
        lines.append(f"  {row['layer']:<32} {row['sparsity']:>6g} {row['predicted_alone']:>11.2f} "
                     f"{'' if c is None else f'{c:.2f}':>16} {'' if rep is None else f'{rep:.2f}':>7}")
    if r.per_layer:
        way = "AdaBN" if r.bn_method == "adabn" else "paired correction"
        adabn = f"re-estimated ({way})" if r.adabn else f"kept (re-estimating them, {way}, was not better on check)"
        lines.append(f"  BN statistics: {adabn}")
    bound = "upper bound of the drop" if r.mode == "drop" else "lower bound"
    lines.append(f"  composed on check : {r.check:.2f} (unpruned {r.check_baseline:.2f}; {bound} {r.check_bound:.2f} "
                 f"at {100 * r.level:.4g} %)")
    if r.search_pick is not None and r.guards and r.confirm is None:
        lines.append(f"  the search's own pick ({bound} {r.search_pick['bound']:.2f} at its per-candidate level) does "
                     f"not hold at {100 * r.level:.4g} %, the level that accounts for its {r.evals} candidates; "
                     + ("kept the most pruned of the nested schedules along its moves that does" if r.per_layer
                        else "none of the nested schedules along its moves does: nothing pruned"))
    if r.adjusted is not None:
        a = r.adjusted
        lines.append(f"  selection-adjusted: {bound} {a['bound']:.2f} at {100 * a['level']:.4g} % (simultaneous over "
                     f"the {r.evals} candidates measured): " + ("holds" if a["passed"] else
                                                               "does NOT hold: it may miss on new data (winner's "
                                                               "curse; --multiple_testing simultaneous / --confirm "
                                                               "guard it)"))
    if r.confirm is not None:
        c = r.confirm
        lines.append(f"  confirm split ({c['n']} samples, unpruned {c['unpruned']:.2f}): {c['tries']} of the search's "
                     f"{c['chain']} accepted schedules tested, least pruned first")
        for row in c["tested"]:
            lines.append(f"    {100 * row['reduction']:5.1f}% {r.resource} removed: {row['value']:.2f} ({bound} "
                         f"{row['bound']:.2f}) {'holds' if row['passed'] else 'fails: stop'}")
        if not c["passed"]:
            lines.append("    nothing held: nothing pruned" if c["tries"] else "    nothing to confirm")
    if r.report is not None:
        lines.append(f"  composed on report: {r.report:.2f} (unpruned {r.report_baseline:.2f}; {bound} "
                     f"{r.report_bound:.2f}) -> promise kept within 0.5 pt: {'yes' if r.promised() else 'NO'}")
    lines.append(f"  MACs {r.base_macs / 1e6:.3f}M -> {r.macs / 1e6:.3f}M ({100 * (1 - r.macs / r.base_macs):.1f}% "
                 f"removed), params {r.base_params / 1e3:.1f}k -> {r.params / 1e3:.1f}k "
                 f"({100 * (1 - r.params / r.base_params):.1f}% removed); {r.evals} composed models in "
                 f"{r.seconds:.1f} s")
    if r.latency is not None and r.base_latency:
        lines.append(f"  latency (predicted from the per-layer tables) {r.base_latency:.3f} ms -> {r.latency:.3f} ms "
                     f"({100 * (1 - r.latency / r.base_latency):.1f}% removed)")
    return "\n".join(lines)


__all__ = ["Measurement", "Evaluator", "TargetTrueConfig", "TargetTrueResult", "Trial", "classifier_evaluator",
           "bootstrap_mean_bound", "bootstrap_means", "simultaneous_level",
           "target_true_schedule", "composed_metric", "format_result",
           "correct_per_sample", "ComposedChecker"]
