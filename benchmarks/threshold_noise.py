#!/usr/bin/env python
"""How much a verification bound leaves out when it takes the thresholds learnt on the split as given.

Until session 10 the target-true check bound resampled the pairs at the thresholds the whole split had taught:
for ``tpr@fpr=X`` the one its different-identity pairs set (at FPR 1e-2 on 450 different pairs, the 5th highest
impostor score), for ``lfw_acc`` each fold's accuracy-maximising threshold learnt on the other folds. The bound now
re-sets a TPR's threshold on every draw (``engine.target_true.Thresholded``), and lfw_acc's with
``auto_make_yaml.py --relearn_thresholds`` (``FoldThresholds``; opt-in, docs/target_true.md says why). This
script puts the two bootstraps side by side on real embeddings, resampling pairs as independent in both so that only
the thresholds differ:

- ``fixed``: the pairs resampled at the split's thresholds (the bound before);
- ``recomputed``: the thresholds re-learnt on every draw's weighted pairs (the bound now, which also resamples
  people and images).

for the unpruned model, a pruned one and their paired difference (the ``--drop`` bound's quantity), 10-fold
accuracy and TPR at each ``--fpr``.

    python benchmarks/threshold_noise.py --pruned WORK/route_adabn.pth [--subjects s31..s40]

Pruned: any thinned checkpoint of the same embedder (e.g. ``route_adabn.pth`` that
``benchmarks/mobilefacenet_fidelity.py`` writes: the -50 % MACs model after AdaBN; or a distilled one, close to
the unpruned model).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import numpy as np
import torch
from target_true import SHARED  # benchmarks/ is on sys.path when run as a script

from compression_tool.data.readers import load_pairset
from compression_tool.engine.checkpoint import load_model
from compression_tool.engine.target_true import FoldThresholds, Thresholded
from compression_tool.io.errors import cli_main
from test_module.per_sample import accepted_at_fpr
from test_module.verification import embed_images, fold_indices, kfold_verification, pair_distances

MFN = SHARED / "mobilefacenet_casia" / "068.ckpt"


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per draw: the mean of ``values`` ([n] or [B, n]) under the draw's pair weights [B, n]."""
    return (weights * values).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)


def tpr_draws(scores: np.ndarray, issame: np.ndarray, fpr: float, weights: np.ndarray, recompute: bool) -> np.ndarray:
    """TPR@``fpr`` on each draw: at the split's threshold (fixed), or at the one the engine re-sets on the draw's
    different pairs (``Thresholded``, as the check bound does)."""
    no_images = np.zeros((int((~issame).sum()), 2), dtype=int)          # pairs are resampled here, not images
    t = Thresholded(scores[issame], scores[~issame], no_images, fpr)
    accepted = t.accepted(weights[:, ~issame]) if recompute else t.accepted()
    return weighted_mean(accepted, weights[:, issame])


def kfold_accuracy_draws(dist: np.ndarray, issame: np.ndarray, weights: np.ndarray, recompute: bool,
                         folds: int = 10) -> np.ndarray:
    """10-fold accuracy (lfw_acc, in points) on each draw: at the thresholds each fold learnt on the whole split
    (fixed), or re-learnt on the draw's weighted other folds (``FoldThresholds``, as ``--relearn_thresholds``)."""
    ft = FoldThresholds(dist, issame, [test for _, test in fold_indices(len(dist), folds)])
    return weighted_mean(ft.correct(weights) if recompute else ft.correct(), weights)


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(MFN), help="the unpruned embedder (default: the real MobileFaceNet)")
    p.add_argument("--model", default="mobilefacenet", help="its model_define name")
    p.add_argument("--pruned", required=True, help="a thinned checkpoint of it")
    p.add_argument("--orl", default=str(SHARED / "orl_faces"), help="ORL identity folders")
    p.add_argument("--subjects", default="s31..s40", help="identities whose pairs are measured")
    p.add_argument("--fpr", default="1e-2,1e-1", help="false-accept rates, comma-separated")
    p.add_argument("--n_boot", type=int, default=2000, help="bootstrap draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base, meta = load_model(args.checkpoint, args.model, input_size=(3, 112, 96))
    pruned, _ = load_model(args.pruned)
    ps = load_pairset(f"orl:{args.orl}", meta["input_size"], subjects=args.subjects)
    issame = ps.issame.numpy().astype(bool)
    scores = {name: 1.0 - pair_distances(embed_images(m, ps.images), ps.pairs) / 2.0
              for name, m in (("unpruned", base), ("pruned", pruned))}
    draws = np.random.default_rng(args.seed).integers(0, len(issame), size=(args.n_boot, len(issame)))
    weights = np.stack([np.bincount(pick, minlength=len(issame)) for pick in draws]).astype(np.float64)
    print(f"ORL {args.subjects}: {int(issame.sum())} same / {int((~issame).sum())} different pairs, "
          f"{args.n_boot} draws (pairs resampled as independent)")
    print("| FPR (or 10-fold) | quantity | point | fixed threshold: 95 % interval (width) "
          "| recomputed: 95 % interval (width) | width ratio |")
    print("|---|---|---|---|---|---|")
    dist = {name: 2.0 * (1.0 - s) for name, s in scores.items()}
    acc = {(name, rec): kfold_accuracy_draws(d, issame, weights, bool(rec)) for name, d in dist.items()
           for rec in (0, 1)}
    point = {name: float(kfold_verification(d, issame)["correct"].mean() * 100) for name, d in dist.items()}
    rows = [("unpruned lfw_acc", point["unpruned"], acc["unpruned", 0], acc["unpruned", 1]),
            ("pruned lfw_acc", point["pruned"], acc["pruned", 0], acc["pruned", 1]),
            ("lfw_acc drop", point["unpruned"] - point["pruned"], acc["unpruned", 0] - acc["pruned", 0],
             acc["unpruned", 1] - acc["pruned", 1])]
    print_rows("10-fold", rows)
    for fpr in (float(v) for v in args.fpr.split(",")):
        t = {(name, rec): tpr_draws(s, issame, fpr, weights, rec) for name, s in scores.items() for rec in (0, 1)}
        point = {name: float(accepted_at_fpr(s, issame, fpr).mean()) for name, s in scores.items()}
        rows = [("unpruned TPR", point["unpruned"], t["unpruned", 0], t["unpruned", 1]),
                ("pruned TPR", point["pruned"], t["pruned", 0], t["pruned", 1]),
                ("drop (unpruned - pruned)", point["unpruned"] - point["pruned"],
                 t["unpruned", 0] - t["pruned", 0], t["unpruned", 1] - t["pruned", 1])]
        print_rows(f"{fpr:g}", rows)


def print_rows(what: str, rows) -> None:
    """Markdown rows: the point value and both 95 % intervals (with their widths and ratio)."""
    for label, value, fixed, rec in rows:
        lo_f, hi_f = np.quantile(fixed, [0.025, 0.975])
        lo_r, hi_r = np.quantile(rec, [0.025, 0.975])
        print(f"| {what} | {label} | {value:.3f} | {lo_f:.3f}..{hi_f:.3f} ({hi_f - lo_f:.3f}) | "
              f"{lo_r:.3f}..{hi_r:.3f} ({hi_r - lo_r:.3f}) | {(hi_r - lo_r) / max(hi_f - lo_f, 1e-12):.2f} |")


if __name__ == "__main__":
    main()
