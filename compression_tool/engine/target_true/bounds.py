"""Measurements on a split and their bootstrap bounds: what the target-true search decides with.

A ``Measurement`` holds a metric and its per-sample values (images, or pairs of images with their identities for
faces); ``bootstrap_mean_bound`` bounds its mean (pairs: the images resampled, identities first when given),
``bootstrap_means`` + ``simultaneous_level`` give the level at which many candidates' bounds hold together, and
``samples_to_vouch`` how large a split would resolve a drop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from compression_tool.engine.sensitivity_ci import smallest_n
from compression_tool.io.errors import UserError

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
