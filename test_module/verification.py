"""Face-verification metrics: LFW-style k-fold accuracy, ROC / AUC / EER / TAR@FAR, and pair evaluation.

Conventions
-----------
* Embeddings are L2-normalised; a pair's *distance* is the squared L2 distance of the two unit vectors
  (0..4, smaller = same person) and its *score* is their cosine similarity (higher = same person);
  ``score = 1 - distance / 2``, so both give the same ROC.
* k-fold accuracy (LFW protocol): the pairs are split in order into ``folds`` contiguous folds (sklearn
  ``KFold`` without shuffling, so LFW's ``pairs.txt`` folds are kept). For each fold the threshold that
  maximises accuracy on the other folds is chosen (a pair is predicted "same" when ``distance < threshold``;
  ties go to the smallest such threshold) and the accuracy is measured on the held-out fold. With
  ``thresholds=None`` every midpoint between consecutive training distances (plus one below and one above
  them all) is a candidate, so the chosen threshold is the exact optimum on the training folds; pass a grid
  (e.g. ``np.arange(0, 4, 0.01)``, insightface's) to reproduce a grid search. ``acc_std`` is the population
  standard deviation over the folds (``np.std``), as in the insightface/LFW scripts.
* ``tpr@fpr=X`` (the same number as TAR@FAR=X): the TPR of the ROC point with the largest TPR among the
  points whose FPR is <= X, i.e. the best true-accept rate without exceeding the false-accept budget. The
  ROC always contains (0, 0), so a target below ``1 / #different-pairs`` is resolved at FPR = 0 (the TPR
  with no false accept at all; 0.0 when even that accepts nothing). The value is never NaN, but it only
  measures the TPR at FPR=X when there are at least ``1/X`` different-identity pairs
  (:func:`resolvable`); otherwise a warning says so once per metric, and the sensitivity analysis refuses it
  as its target (``test_module.setup``).
* Pair labels (``issame``) are bools or the numbers 0/1; anything else (2, -1, 'no') is a UserError.
* EER: the point on the piecewise-linear ROC where FPR = FNR (= 1 - TPR).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from compression_tool.data.pairs import PairSet, check_issame
from compression_tool.engine.device import model_device
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_save_with

log = logging.getLogger(__name__)

DEFAULT_FPRS: Tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
ACCURACY_KEYS = ("lfw_acc", "lfw_std", "threshold", "auc", "eer")
ACCURACY_ALIASES = {"accuracy": "lfw_acc", "acc": "lfw_acc", "lfw": "lfw_acc"}
RATE_PREFIXES = ("tpr@fpr=", "tar@far=")
FUSIONS = ("sum", "concat")


# --------------------------------------------------------------------------- k-fold accuracy

def _check_pairs_arrays(values: np.ndarray, issame: np.ndarray, what: str) -> Tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    issame = check_issame(issame, "issame")
    if values.shape != issame.shape:
        raise ValueError(f"{what} has {values.size} entries but issame has {issame.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN/inf (did the model produce non-finite embeddings?)")
    return values, issame


def candidate_thresholds(dist: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct distances, plus one below and one above all of them."""
    u = np.unique(np.asarray(dist, dtype=np.float64))
    if u.size == 0:
        return np.zeros(1)
    mids = (u[:-1] + u[1:]) / 2
    return np.concatenate([[u[0] - 1.0], mids, [u[-1] + 1.0]])


def accuracies_at(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff dist < t" for every t in ``thresholds`` (O((n + T) log n))."""
    dist_same = np.sort(dist[issame])
    dist_diff = np.sort(dist[~issame])
    same_below = np.searchsorted(dist_same, thresholds, side="left")        # true accepts
    diff_below = np.searchsorted(dist_diff, thresholds, side="left")        # false accepts
    correct = same_below + (dist_diff.size - diff_below)
    return correct / max(dist.size, 1)


def best_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: Optional[np.ndarray] = None
                   ) -> Tuple[float, float]:
    """(threshold, accuracy) maximising accuracy on these pairs; ties -> the smallest threshold."""
    thr = candidate_thresholds(dist) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    acc = accuracies_at(dist, issame, thr)
    i = int(np.argmax(acc))
    return float(thr[i]), float(acc[i])


def fold_indices(n: int, folds: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of ``KFold(folds, shuffle=False)``: contiguous folds in pair order."""
    from sklearn.model_selection import KFold

    if folds < 2 or folds > n:
        raise UserError(f"--folds {folds}: expected 2..{n} (the number of pairs)")
    return list(KFold(n_splits=folds, shuffle=False).split(np.arange(n)))


def kfold_verification(dist: np.ndarray, issame: np.ndarray, folds: int = 10,
                       thresholds: Optional[np.ndarray] = None) -> Dict[str, object]:
    """LFW-protocol k-fold accuracy (fractions in 0..1) of distance-thresholded pairs.

    Returns ``acc_mean``, ``acc_std``, ``threshold_mean``, ``fold_accs`` and ``fold_thresholds``.
    """
    dist, issame = _check_pairs_arrays(dist, issame, "distances")
    accs, thrs = [], []
    correct = np.zeros(dist.size, dtype=bool)
    for train, test in fold_indices(dist.size, folds):
        thr, _ = best_threshold(dist[train], issame[train], thresholds)
        correct[test] = (dist[test] < thr) == issame[test]
        accs.append(float(correct[test].mean()))
        thrs.append(thr)
    return {"acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)),
            "threshold_mean": float(np.mean(thrs)), "fold_accs": accs, "fold_thresholds": thrs,
            "correct": correct}


# --------------------------------------------------------------------------- ROC

def rate_key(fpr: float, prefix: str = "tpr@fpr=") -> str:
    """``1e-3`` -> ``"tpr@fpr=1e-3"`` (mantissa without trailing zeros, exponent without padding)."""
    mant, exp = f"{fpr:e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{prefix}{mant}e{int(exp)}"


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= ``target``; 0.0 when there is none."""
    ok = np.asarray(fpr) <= target
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def min_different_pairs(fpr: float) -> int:
    """Different-identity pairs needed for one false accept to be a false-accept rate <= ``fpr``."""
    return max(1, math.ceil((1.0 / fpr) * (1.0 - 1e-12)))


def metric_fpr(metric: str) -> Optional[float]:
    """X of a ``tpr@fpr=X`` / ``tar@far=X`` metric name; None for other metrics."""
    return _parse_rate(metric.strip().lower())


def resolvable(metric: str, n_different: int) -> bool:
    """Whether ``metric`` measures what its name says on ``n_different`` different-identity pairs: a
    ``tpr@fpr=X`` below 1/n_different is the TPR at zero false accepts whatever X is. Other metrics: True."""
    fpr = metric_fpr(metric)
    return fpr is None or n_different >= min_different_pairs(fpr)


_warned: Set[str] = set()


def _warn_unresolvable(key: str, n_different: int) -> None:
    """Once per metric per process (a sensitivity sweep evaluates hundreds of times)."""
    if key in _warned or resolvable(key, n_different):
        return
    _warned.add(key)
    log.warning("%s is not resolvable on %d different-identity pairs (it needs at least %d): the value is the "
                "TPR at zero false accepts", key, n_different, min_different_pairs(metric_fpr(key)))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """FPR (= FNR) where the piecewise-linear ROC crosses FPR = 1 - TPR."""
    gap = (1.0 - np.asarray(tpr)) - np.asarray(fpr)          # FNR - FPR, non-increasing along the ROC
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def roc_points(scores: np.ndarray, issame: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn ``roc_curve`` (every point kept): (fpr, tpr, thresholds); scores higher = same."""
    from sklearn.metrics import roc_curve

    scores, issame = _check_pairs_arrays(scores, issame, "scores")
    if issame.all() or not issame.any():
        raise UserError("the pair list needs both same-identity and different-identity pairs for a ROC")
    return roc_curve(issame, scores, drop_intermediate=False)


def roc_metrics(scores: np.ndarray, issame: np.ndarray, fprs: Sequence[float] = DEFAULT_FPRS
                ) -> "OrderedDict[str, float]":
    """``auc``, ``eer`` and ``tpr@fpr=X`` for each X in ``fprs`` (fractions), in that order."""
    from sklearn.metrics import auc

    fpr, tpr, _ = roc_points(scores, issame)
    n_different = int(np.count_nonzero(~check_issame(issame, "issame")))
    out: "OrderedDict[str, float]" = OrderedDict(auc=float(auc(fpr, tpr)), eer=equal_error_rate(fpr, tpr))
    for x in fprs:
        out[rate_key(x)] = tpr_at_fpr(fpr, tpr, x)
        _warn_unresolvable(rate_key(x), n_different)
    return out


def plot_roc(path: Union[str, Path], fpr: np.ndarray, tpr: np.ndarray, auc: float,
             marks: Union[Sequence[float], Mapping[float, float]] = DEFAULT_FPRS, force: bool = True) -> Path:
    """ROC on a log-FPR axis as a PNG (atomic write); AUC in the legend, each target FPR marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = dict(marks) if isinstance(marks, Mapping) else {x: tpr_at_fpr(fpr, tpr, x) for x in marks}
    floor = min([1e-7] + [x / 10 for x in marks])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot(np.maximum(fpr, floor), tpr, lw=1.5, label=f"ROC (AUC = {auc:.4f})")
    for x, y in marks.items():
        ax.plot([x], [y], "o", ms=5)
        ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xscale="log", xlim=(floor, 1.0), ylim=(0.0, 1.01), xlabel="false positive rate (FAR)",
           ylabel="true positive rate (TAR)", title="verification ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        return atomic_save_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), force=force)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- pairs of images

def _forward_embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1).float()


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 64, flip: bool = False,
                 fusion: str = "sum") -> torch.Tensor:
    """L2-normalised embeddings [N, D] in eval mode, batched. ``flip`` fuses in the horizontal flip's embedding:
    ``fusion="sum"`` adds it (D dims), ``"concat"`` appends it (2D dims, as MobileFaceNet's own LFW test does).

    The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: expected a positive integer")
    if fusion not in FUSIONS:
        raise UserError(f"flip fusion {fusion!r}: expected one of {', '.join(FUSIONS)}")
    was_training = model.training
    model.eval()
    try:
        chunks = []
        starts = range(0, images.shape[0], batch_size)
        device = model_device(model)
        for s in tqdm(starts, desc="embed", unit="batch", leave=False, disable=len(starts) < 20):
            x = images[s:s + batch_size].to(device)
            if flip:
                e = _forward_embeddings(model, torch.cat([x, torch.flip(x, dims=[3])]))
                a, b = e[: x.shape[0]], e[x.shape[0]:]
                e = torch.cat([a, b], 1) if fusion == "concat" else a + b
            else:
                e = _forward_embeddings(model, x)
            chunks.append(e.cpu())
        return F.normalize(torch.cat(chunks), dim=1)
    finally:
        model.train(was_training)


def pair_distances(emb: torch.Tensor, pairs: torch.Tensor) -> np.ndarray:
    """Squared L2 distance of each pair of (already normalised) embeddings."""
    d = emb[pairs[:, 0]] - emb[pairs[:, 1]]
    return (d * d).sum(dim=1).double().numpy()


def verification_metrics(dist: np.ndarray, issame: np.ndarray, folds: int = 10,
                         fprs: Sequence[float] = DEFAULT_FPRS, roc_path: Optional[Union[str, Path]] = None,
                         thresholds: Optional[np.ndarray] = None) -> "OrderedDict[str, float]":
    """All verification metrics from pair distances of unit embeddings (score = 1 - dist / 2).

    Order: lfw_acc (percent), lfw_std (percent), threshold, auc, eer, tpr@fpr=… (fractions).
    """
    kf = kfold_verification(dist, issame, folds, thresholds)
    out: "OrderedDict[str, float]" = OrderedDict(
        lfw_acc=100.0 * kf["acc_mean"], lfw_std=100.0 * kf["acc_std"], threshold=kf["threshold_mean"])
    scores = 1.0 - np.asarray(dist, dtype=np.float64) / 2.0
    out.update(roc_metrics(scores, issame, fprs))
    if roc_path is not None:
        fpr, tpr, _ = roc_points(scores, issame)
        plot_roc(roc_path, fpr, tpr, out["auc"], fprs)
        log.info("ROC written to %s", roc_path)
    return out


def evaluate_pairs(model: nn.Module, pairset: PairSet, folds: int = 10, flip: bool = False,
                   batch_size: int = 64, roc_path: Optional[Union[str, Path]] = None,
                   fprs: Sequence[float] = DEFAULT_FPRS) -> "OrderedDict[str, float]":
    """Embed every image once, then :func:`verification_metrics` on the pairs."""
    emb = embed_images(model, pairset.images, batch_size, flip)
    return verification_metrics(pair_distances(emb, pairset.pairs), pairset.issame.numpy(), folds, fprs,
                                roc_path)


# --------------------------------------------------------------------------- metric selection

def metric_names(fprs: Sequence[float] = DEFAULT_FPRS) -> List[str]:
    """The names :func:`evaluate_pairs` returns, in order."""
    return list(ACCURACY_KEYS) + [rate_key(x) for x in fprs]


def _parse_rate(name: str) -> Optional[float]:
    for prefix in RATE_PREFIXES:
        if name.startswith(prefix):
            try:
                return float(name[len(prefix):])
            except ValueError:
                return None
    return None


def resolve_metric(name: str, available: Iterable[str]) -> str:
    """The key in ``available`` the user means by ``name`` (``tar@far=1e-3`` == ``tpr@fpr=0.001``)."""
    keys = list(available)
    wanted = name.strip().lower()
    wanted = ACCURACY_ALIASES.get(wanted, wanted)
    if wanted in keys:
        return wanted
    target = _parse_rate(wanted)
    if target is not None:
        for k in keys:
            value = _parse_rate(k)
            if value is not None and math.isclose(value, target, rel_tol=1e-9):
                return k
    raise UserError(f"unknown metric {name!r}; valid: {', '.join(keys)} "
                    f"(tar@far=X is accepted for tpr@fpr=X)")


def ordered_metrics(result: Mapping[str, float], first: str) -> "OrderedDict[str, float]":
    """``result`` with the user-chosen metric moved to the front (the sensitivity analysis targets it)."""
    key = resolve_metric(first, result.keys())
    out: "OrderedDict[str, float]" = OrderedDict([(key, result[key])])
    out.update((k, v) for k, v in result.items() if k != key)
    return out


def make_pair_evaluator(pairset: PairSet, metric: str = "lfw_acc", folds: int = 10, flip: bool = False,
                        batch_size: int = 64, fprs: Sequence[float] = DEFAULT_FPRS
                        ) -> Callable[[nn.Module], "OrderedDict[str, float]"]:
    """``evaluate(model) -> OrderedDict`` with ``metric`` first; the metric name is checked now."""
    resolve_metric(metric, metric_names(fprs))
    fold_indices(len(pairset), folds)

    def evaluate(model: nn.Module) -> "OrderedDict[str, float]":
        return ordered_metrics(evaluate_pairs(model, pairset, folds, flip, batch_size, fprs=fprs), metric)

    return evaluate
