"""Per-sample face metrics for the target-true search (``compression_tool.engine.target_true``): its check bound
bootstraps the samples, so each metric is written as a mean over samples. Each sample carries the units the bound
resamples (``pair_units``): by default the *identities* of its images, since the report split holds other people
and a pruned model can fail some people more than others; ``unit="image"`` resamples images (pairs share them).

- ``lfw_acc``: one outcome per pair (100 = right, 0 = wrong) under the threshold its fold learnt on the other
  folds; the mean is the k-fold accuracy in percent (exactly, when the folds are of equal size).
- ``tpr@fpr=X``: one outcome per same-identity pair (1 = accepted) at the threshold that admits at most X of the
  different-identity pairs; the threshold itself is taken as given (its own noise is not bootstrapped).
- ``fidelity``: one cosine per image to the unpruned model's embedding (no identities needed).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch.nn as nn

from compression_tool.data.pairs import PairSet
from compression_tool.engine.target_true import Evaluator, Measurement
from compression_tool.io.errors import UserError
from test_module.verification import embed_images, kfold_verification, metric_fpr, pair_distances, resolvable

PERCENT_METRICS = ("top1", "top5", "lfw_acc")
BOOTSTRAP_UNITS = ("identity", "image")
log = logging.getLogger(__name__)


def pair_units(pairset: PairSet, unit: str = "identity") -> np.ndarray:
    """[P, 2] the resampling units of each pair's two images: their identities (``unit='identity'``; falls back to
    images, with a warning, when the pair set names no identities) or the images themselves."""
    if unit not in BOOTSTRAP_UNITS:
        raise UserError(f"--bootstrap_unit: expected one of {', '.join(BOOTSTRAP_UNITS)}, got {unit!r}")
    pairs = pairset.pairs.numpy()
    ids = pairset.identities() if unit == "identity" else None
    if unit == "identity" and ids is None:
        log.warning("the check pairs name no identities (no image folders): the bound resamples images, which "
                    "understates the spread across unseen people")
    return pairs if ids is None else ids[pairs]


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
                   reference: Optional[nn.Module] = None, batch_size: int = 64, unit: str = "identity") -> Evaluator:
    """``evaluate(model) -> Measurement`` on a verification pair set; ``fidelity`` needs ``reference``; ``unit``:
    what the check bound resamples (``pair_units``)."""
    if len(pairset) == 0:
        raise UserError("target-true: a verification split holds no pairs")
    issame = pairset.issame.numpy()
    ref = None
    if metric == "fidelity":
        if reference is None:
            raise UserError("--metric fidelity: needs the unpruned reference model")
        ref = embed_images(reference, pairset.images, batch_size, flip)

    units = pair_units(pairset, unit)
    if metric != "fidelity" and metric != "lfw_acc":
        units = units[issame]                           # tpr@fpr: one sample per same-identity pair
    ids = pairset.identities() if unit == "identity" else None
    image_units = None if ids is None else np.stack([ids, ids], 1)   # fidelity: each image its identity's
    name = "identity" if ids is not None else "image"

    def evaluate(model: nn.Module) -> Measurement:
        emb = embed_images(model, pairset.images, batch_size, flip)
        if ref is not None:                             # one sample per image (clustered by identity if known)
            s = (emb * ref).sum(1).double().numpy()
            return Measurement(float(s.mean()), s, len(s), image_units, name)
        s = pair_outcomes(pair_distances(emb, pairset.pairs), issame, metric, folds)
        return Measurement(float(s.mean()), s, len(s), units, name)
    return evaluate


__all__ = ["adverse_value", "accepted_at_fpr", "pair_outcomes", "pair_evaluator", "PERCENT_METRICS"]
