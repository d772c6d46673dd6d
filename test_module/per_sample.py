"""Per-sample face metrics for the target-true search (``compression_tool.engine.target_true``): its check bound
bootstraps the samples, so each metric is written as a mean over samples. Pairs carry their image indices (pairs
share images) and, by default, every image's identity: the bound resamples people, then images within them, since
the report split holds other people and a pruned model can fail some people more than others (``unit="image"``:
images only).

- ``lfw_acc``: one outcome per pair (100 = right, 0 = wrong) under the threshold its fold learnt on the other
  folds; the mean is the k-fold accuracy in percent (exactly, when the folds are of equal size). By default the
  bound takes those thresholds as learnt; with ``relearn`` it re-learns them on every draw (``FoldThresholds``).
  Taking them as learnt made a close drop's interval 1.75x too narrow on ORL s31..s40 (pairs resampled,
  benchmarks/threshold_noise.py), but re-learning the best-accuracy threshold on a few hundred pairs of 5-7 people
  is erratic (neighbouring candidates' bounds jumped between 2 and 12 points), so it is opt-in.
- ``tpr@fpr=X``: one outcome per same-identity pair (1 = accepted) at the threshold that admits at most X of the
  different-identity pairs. The measurement carries the scores of both kinds (``Thresholded``), so the bound
  re-sets the threshold on every draw's different pairs: at a low FPR it rests on a few extreme scores, and taking
  it as given made the drop's interval about half as wide as it is (benchmarks/threshold_noise.py).
- ``fidelity``: one cosine per image to the unpruned model's embedding (no identities needed).
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import numpy as np
import torch.nn as nn

from compression_tool.data.pairs import PairSet
from compression_tool.engine.target_true import (
    Evaluator,
    FoldThresholds,
    Measurement,
    Thresholded,
    bootstrap_mean_bound,
    measurement_rows,
)
from compression_tool.io.errors import UserError
from test_module.verification import (
    embed_images,
    fold_indices,
    kfold_verification,
    metric_fpr,
    pair_distances,
    resolvable,
)

PERCENT_METRICS = ("top1", "top5", "lfw_acc")
BOOTSTRAP_UNITS = ("identity", "image")
log = logging.getLogger(__name__)


def image_identities(pairset: PairSet, unit: str = "identity") -> Optional[np.ndarray]:
    """The identity of every image (``unit='identity'``: the bound's two-stage bootstrap, people then images), or
    None (``unit='image'``, or a pair set that names no identities: then with a warning)."""
    if unit not in BOOTSTRAP_UNITS:
        raise UserError(f"--bootstrap_unit: expected one of {', '.join(BOOTSTRAP_UNITS)}, got {unit!r}")
    if unit == "image":
        return None
    ids = pairset.identities()
    if ids is None:
        log.warning("the pairs name no identities (no image folders): bounds and intervals resample images only, "
                    "which understates the spread across unseen people")
    return ids


def adverse_value(metric: str) -> float:
    """The value of one lost sample in the metric's units (the check bound's pseudo-sample)."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def accepted_at_fpr(scores: np.ndarray, issame: np.ndarray, fpr: float) -> np.ndarray:
    """Per same-identity pair: accepted at the lowest threshold whose false-accept rate is <= ``fpr``."""
    neg = np.sort(scores[~issame])[::-1]
    k = int(math.floor(fpr * neg.size + 1e-9))          # false accepts allowed
    pos = scores[issame]
    if k >= neg.size:
        return np.ones(pos.size, dtype=bool)
    return pos > neg[k]


def pair_outcomes(dist: np.ndarray, issame: np.ndarray, metric: str, folds: int = 10) -> np.ndarray:
    """Per-sample values whose mean is ``metric`` (see the module doc)."""
    if metric == "lfw_acc":
        return 100.0 * kfold_verification(dist, issame, folds)["correct"].astype(np.float64)
    fpr = metric_fpr(metric)
    if fpr is None:
        raise UserError(f"--metric {metric}: target-true schedules on face pairs measure lfw_acc, tpr@fpr=X or "
                        "fidelity")
    if not resolvable(metric, int((~issame).sum())):
        raise UserError(f"--metric {metric}: the check pairs hold {int((~issame).sum())} different-identity pairs, "
                        f"too few to resolve it (use a larger split or a larger FPR)")
    return accepted_at_fpr(1.0 - dist / 2.0, issame, fpr).astype(np.float64)


def pair_evaluator(pairset: PairSet, metric: str = "lfw_acc", folds: int = 10, flip: bool = False,
                   reference: Optional[nn.Module] = None, batch_size: int = 64, unit: str = "identity",
                   relearn: bool = False) -> Evaluator:
    """``evaluate(model) -> Measurement`` on a verification pair set; ``fidelity`` needs ``reference``; ``unit``:
    what the check bound resamples (``image_identities``); ``relearn``: lfw_acc's bound re-learns the folds'
    thresholds on every draw (``embedding_measure``)."""
    if len(pairset) == 0:
        raise UserError("target-true: a verification split holds no pairs")
    ref = None
    if metric == "fidelity":
        if reference is None:
            raise UserError("--metric fidelity: needs the unpruned reference model")
        ref = embed_images(reference, pairset.images, batch_size, flip)

    measure = embedding_measure(pairset, metric, folds, unit, relearn)

    def evaluate(model: nn.Module) -> Measurement:
        return measure(embed_images(model, pairset.images, batch_size, flip), ref)
    return evaluate


def embedding_measure(pairset: PairSet, metric: str = "lfw_acc", folds: int = 10, unit: str = "identity",
                      relearn: bool = False):
    """``measure(emb, ref=None) -> Measurement`` from a model's embeddings of ``pairset.images`` (``ref``: the
    reference's, for ``fidelity``): the per-sample values and the units the bound resamples (``unit``). A tpr@fpr
    bound always re-sets its threshold on every draw; lfw_acc's re-learns the folds' thresholds with ``relearn``."""
    issame = pairset.issame.numpy().astype(bool)
    pairs = pairset.pairs.numpy()
    fpr = metric_fpr(metric) if metric not in ("fidelity", "lfw_acc") else None
    if fpr is not None:
        pairs = pairs[issame]                           # tpr@fpr: one sample per same-identity pair
    ids = image_identities(pairset, unit)
    name = "identity" if ids is not None else "image"

    def measure(emb, ref=None) -> Measurement:
        if metric == "fidelity":                        # one sample per image (clustered by identity if known)
            if ref is None:
                raise UserError("--metric fidelity: needs the unpruned reference model")
            return image_measure((emb * ref).sum(1).double().numpy(), ids)
        dist = pair_distances(emb, pairset.pairs)
        s = pair_outcomes(dist, issame, metric, folds)
        relearned = None                                # the bound re-learns these thresholds on every draw
        if fpr is not None:
            scores = 1.0 - dist / 2.0
            relearned = Thresholded(scores[issame], scores[~issame], pairset.pairs.numpy()[~issame], fpr)
        elif relearn:
            relearned = FoldThresholds(dist, issame, [test for _, test in fold_indices(len(dist), folds)])
        return Measurement(float(s.mean()), s, len(s), pairs, name, ids, relearned)
    return measure


def image_measure(values, groups: Optional[np.ndarray] = None) -> Measurement:
    """One value per image (e.g. a cosine fidelity), clustered by ``groups`` (each image's folder) when there are
    two or more groups."""
    v = np.asarray(values, dtype=np.float64)
    if groups is None or len(np.unique(groups)) < 2:
        return Measurement(float(v.mean()), v, len(v))
    own = np.repeat(np.arange(len(v)), 2).reshape(-1, 2)
    return Measurement(float(v.mean()), v, len(v), own, "identity", np.asarray(groups))


def interval(m: Measurement, confidence: float = 0.95, n_boot: int = 1000) -> Tuple[float, float]:
    """Two-sided bootstrap interval of a measurement's mean (the sensitivity CSV's ``<metric>_lo,<metric>_hi``
    on face data): the same resampling as the target-true bound (people, then images)."""
    tail = 0.5 + confidence / 2
    (row,), extra = measurement_rows([m])
    return (bootstrap_mean_bound(row, tail, False, n_boot, pairs=m.pairs, groups=m.groups, extra_pairs=extra),
            bootstrap_mean_bound(row, tail, True, n_boot, pairs=m.pairs, groups=m.groups, extra_pairs=extra))


__all__ = ["adverse_value", "accepted_at_fpr", "pair_outcomes", "pair_evaluator", "embedding_measure", "interval",
           "image_measure",
           "PERCENT_METRICS"]
