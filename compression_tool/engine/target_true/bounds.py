"""Measurements on a split and their bootstrap bounds: what the target-true search decides with.

A ``Measurement`` holds a metric and its per-sample values (images, or pairs of images with their identities for
faces); ``bootstrap_mean_bound`` bounds its mean (pairs: the images resampled, identities first when given),
``bootstrap_means`` + ``simultaneous_level`` give the level at which many candidates' bounds hold together, and
``samples_to_vouch`` how large a split would resolve a drop. Metrics whose thresholds are learnt on the split itself
(TPR at a false-accept rate: ``Thresholded``; k-fold accuracy: ``FoldThresholds``) re-learn them on every draw, so
the bound carries the thresholds' noise too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.sensitivity_ci import smallest_n
from compression_tool.io.errors import UserError

PLURAL = {"identity": "identities", "image": "images", "sample": "samples"}


@dataclass
class Thresholded:
    """TPR at a false-accept rate, as the bootstrap needs it: the samples are the same-identity pairs (``pos``:
    their similarity scores), accepted above the threshold that admits at most ``fpr`` of the different-identity
    pairs (``neg``, image indices ``neg_pairs``). The threshold is an estimate from a few extreme ``neg`` scores, so
    every bootstrap draw re-sets it on that draw's (re-weighted) different pairs."""
    pos: np.ndarray
    neg: np.ndarray
    neg_pairs: np.ndarray
    fpr: float

    @property
    def extra_pairs(self) -> np.ndarray:
        return self.neg_pairs

    def values(self, weights: np.ndarray, extra_weights: np.ndarray) -> np.ndarray:
        return self.accepted(extra_weights)

    def accepted(self, neg_weights: Optional[np.ndarray] = None) -> np.ndarray:
        """1.0 / 0.0 per same pair: [n] at the split's own threshold (no weights), or [B, n] at each draw's
        threshold for ``neg_weights`` [B, len(neg)] (the different pairs' bootstrap weights)."""
        w = np.ones((1, self.neg.size)) if neg_weights is None else np.asarray(neg_weights, dtype=np.float64)
        if w.shape[1] != self.neg.size:
            raise UserError(f"bootstrap: a TPR@FPR row needs the weights of its {self.neg.size} different-identity "
                            f"pairs (measurement_rows' extra pairs), got {w.shape[1]}")
        thr = np.full(len(w), -np.inf)                  # no different pair weighs anything: nothing to reject
        if self.neg.size:
            order = np.argsort(-self.neg, kind="stable")
            cum = np.cumsum(w[:, order], axis=1)
            # the highest scores may be accepted while their weight stays within fpr of the total (floor(fpr * m)
            # false accepts with unit weights, as accepted_at_fpr); the threshold is the first pair beyond that
            over = cum > self.fpr * cum[:, -1:] + 1e-9
            hit = over.any(axis=1)
            thr[hit] = self.neg[order][over.argmax(axis=1)[hit]]
        out = (self.pos[None, :] > thr[:, None]).astype(np.float64)
        return out[0] if neg_weights is None else out


class FoldThresholds:
    """k-fold verification accuracy (lfw_acc) as the bootstrap needs it: each pair is judged "same iff its distance
    < t" at the threshold t its fold learnt on the other folds (the accuracy-maximising midpoint between distinct
    distances, the smallest on ties, as ``test_module.verification.best_threshold``). Every draw re-learns the
    thresholds on its own weights of the other folds' pairs: a threshold learnt on a few hundred pairs moves, and
    two close models move differently."""

    extra_pairs = None

    def __init__(self, dist: np.ndarray, issame: np.ndarray, folds: Sequence[np.ndarray], scale: float = 100.0):
        self.dist = np.asarray(dist, dtype=np.float64)
        self.issame = np.asarray(issame, dtype=bool)
        self.scale = float(scale)
        self.folds = []                  # per fold: test pairs, train order and sign, distinct-distance starts, cuts
        everything = np.arange(self.dist.size)
        for test in folds:
            train = np.setdiff1d(everything, test)
            if not train.size:
                raise UserError("k-fold accuracy: a fold has no other pairs to learn its threshold on")
            order = train[np.argsort(self.dist[train], kind="stable")]
            d = self.dist[order]
            starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            u = d[starts]
            cuts = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
            sign = np.where(self.issame[order], 1.0, -1.0)
            self.folds.append((np.asarray(test), order, sign, starts, cuts))

    def values(self, weights: np.ndarray, extra_weights: np.ndarray) -> np.ndarray:
        return self.correct(weights)

    def correct(self, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """``scale`` (right) / 0 per pair: [n] at the split's own fold thresholds (no weights), or [B, n] at the
        thresholds each draw's pair weights ``weights`` [B, n] teach."""
        w = np.ones((1, self.dist.size)) if weights is None else np.asarray(weights, dtype=np.float64)
        out = np.empty((len(w), self.dist.size))
        for test, order, sign, starts, cuts in self.folds:
            # calling the closest j distinct distances "same" gains a same pair's weight and loses a different
            # pair's: the accuracy is a constant plus this running sum, maximised at its first maximum
            gain = np.cumsum(np.add.reduceat(w[:, order] * sign, starts, axis=1), axis=1)
            t = cuts[np.argmax(np.concatenate([np.zeros((len(w), 1)), gain], axis=1), axis=1)]
            out[:, test] = (self.dist[test][None, :] < t[:, None]) == self.issame[test][None, :]
        out *= self.scale
        return out[0] if weights is None else out


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
    # per_sample rests on thresholds learnt on the split itself (Thresholded: TPR@FPR; FoldThresholds: lfw_acc):
    # every bootstrap draw re-learns them, so the bound carries their noise
    relearned: Optional[Union[Thresholded, FoldThresholds]] = None


# A bootstrap row: fixed per-sample values [n], or the values on each draw [B, n] from the draw's weights of the
# samples [B, n] and of the extra pairs [B, m] (a TPR's different-identity pairs), when thresholds move with them.
Row = Union[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]


def measurement_rows(measured: Sequence[Measurement], base: Optional[Measurement] = None
                     ) -> tuple[List[Row], Optional[np.ndarray]]:
    """Bootstrap rows of ``measured`` (their drops from ``base`` when given, paired on the same draws) and the extra
    pairs the draws must weigh (a TPR's different-identity pairs), for ``bootstrap_means``."""
    refs = [m for m in [*measured, base] if m is not None]
    relearned = [m.relearned is not None for m in refs]
    if not any(relearned):
        return [m.per_sample if base is None else base.per_sample - m.per_sample for m in measured], None
    if not all(relearned):
        raise UserError("bootstrap: a measurement with learnt thresholds can only be compared with another of the "
                        "same pairs")
    if base is None:
        return [m.relearned.values for m in measured], measured[0].relearned.extra_pairs

    last: dict = {}

    def base_values(w: np.ndarray, wx: np.ndarray) -> np.ndarray:
        if last.get("w") is not w:           # the rows of one draw chunk share its weights: the base once a chunk
            last["w"], last["v"] = w, base.relearned.values(w, wx)
        return last["v"]

    def drop(m: Measurement) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda w, wx: base_values(w, wx) - m.relearned.values(w, wx)
    return [drop(m) for m in measured], base.relearned.extra_pairs


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


def bootstrap_means(values: Union[np.ndarray, Sequence[Row]], n_boot: int = 2000, seed: int = 0,
                    adverse: Optional[float] = None, pairs: Optional[np.ndarray] = None,
                    groups: Optional[np.ndarray] = None, extra_pairs: Optional[np.ndarray] = None) -> np.ndarray:
    """[C, n_boot] bootstrap means of every row of ``values`` ([C, n], or [n] for one row): the *same* resamples
    for every row (the draws depend on ``seed`` and the sizes only), so rows that are candidates measured on the
    same samples keep their correlation (``simultaneous_level``). ``adverse``, ``pairs`` and ``groups`` as in
    ``bootstrap_mean_bound``.

    A row may be a function of each draw's weights (``measurement_rows``): of the samples' [B, n] and of
    ``extra_pairs``' [B, m] ([m, 2] image indices, with ``pairs``: pairs resampled with the samples, sharing their
    images and people, but not samples themselves) to the draw's per-sample values [B, n], e.g. the outcomes at
    thresholds the draw re-learns."""
    if extra_pairs is not None or (not isinstance(values, np.ndarray) and any(callable(r) for r in values)):
        if pairs is None:
            raise UserError("bootstrap: rows that re-learn thresholds on each draw need the samples' pairs")
        return _pair_means(list(values), n_boot, np.random.default_rng(seed), adverse, np.asarray(pairs),
                           groups, None if extra_pairs is None else np.asarray(extra_pairs))
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
    return _pair_means(list(V), n_boot, rng, adverse, np.asarray(pairs), groups, None)


def _pair_means(rows: List[Row], n_boot: int, rng: np.random.Generator, adverse: Optional[float],
                pairs: np.ndarray, groups: Optional[np.ndarray], extra_pairs: Optional[np.ndarray]) -> np.ndarray:
    """``bootstrap_means`` over pairs of images (the pigeonhole bootstrap, identities first with ``groups``); the
    samples are ``pairs``, weighed with ``extra_pairs`` (not samples) on the same draws."""
    n = len(pairs)
    _check_samples(n, pairs, groups)
    for r in rows:
        if not callable(r) and np.shape(r) != (n,):
            raise UserError(f"bootstrap: {n} samples but a row of {np.shape(r)} values")
    everything = pairs if extra_pairs is None else np.concatenate([pairs, extra_pairs])
    means = np.empty((len(rows), n_boot))
    used, idx = np.unique(np.asarray(everything, dtype=np.int64), return_inverse=True)
    idx = idx.reshape(-1, 2)
    single = idx[:, 0] == idx[:, 1]
    if groups is not None:
        gused, gidx = np.unique(np.asarray(groups)[used], return_inverse=True)
        ga, gb = gidx[idx[:, 0]], gidx[idx[:, 1]]
        same_group = ga == gb
        members = _group_members(gidx)
    extra = 0.0 if adverse is None else float(adverse)
    chunk = max(1, 2_000_000 // max(len(idx), used.size))
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
        w, w_extra = w[:, :n], w[:, n:]
        total = np.maximum(w.sum(axis=1) + wa, 1e-12)
        for r, row in enumerate(rows):
            values = row(w, w_extra) if callable(row) else row
            means[r, i:j] = ((w * values).sum(axis=1) + wa * extra) / total
    return means


def bootstrap_mean_bound(values: Row, confidence: float, upper: bool, n_boot: int = 2000,
                         seed: int = 0, adverse: Optional[float] = None, pairs: Optional[np.ndarray] = None,
                         groups: Optional[np.ndarray] = None, extra_pairs: Optional[np.ndarray] = None) -> float:
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
    average).

    ``values`` may be a row of ``measurement_rows`` with its ``extra_pairs``: a TPR@FPR re-sets its threshold on
    every draw."""
    if callable(values):
        means = bootstrap_means([values], n_boot, seed, adverse, pairs, groups, extra_pairs)[0]
        return float(np.quantile(means, confidence if upper else 1.0 - confidence))
    v = np.asarray(values, dtype=np.float64)
    _check_samples(v.size, pairs, groups)
    probe = v if adverse is None else np.append(v, adverse)
    if np.all(probe == probe[0]):
        return float(probe[0])
    means = bootstrap_means(v, n_boot, seed, adverse, pairs, groups, extra_pairs)[0]
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
