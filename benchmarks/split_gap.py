#!/usr/bin/env python
"""Was a miss the schedule or the split? One schedule of a ``benchmarks/target_true.py`` results file, measured on
the check and the report part of its split, on both together, and on random re-splits of those images into parts of
the same sizes: how often a re-split shows a check-minus-report gap in the drop as large as the observed one.
Classifier rows only (faces are split by identity, which this re-split does not model).

    python benchmarks/split_gap.py RESULTS.json --row 0
"""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

import numpy as np
import torch
from target_true import MODELS

from compression_tool.apps.target_true import calibration_batches, split_data
from compression_tool.data.splits import parse_split
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.target_true import ComposedChecker, TargetTrueConfig, classifier_evaluator
from compression_tool.io.errors import UserError, cli_main


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results JSON of benchmarks/target_true.py")
    p.add_argument("--row", type=int, default=0, help="which row (0-based)")
    p.add_argument("--draws", type=int, default=4000, help="random re-splits")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = json.load(open(args.results, encoding="utf-8"))
    if not 0 <= args.row < len(rows):
        raise UserError(f"--row: {args.results} has rows 0..{len(rows) - 1}")
    r = rows[args.row]
    spec = MODELS[r["model"]]
    if spec.get("metric"):
        raise UserError(f"{r['model']}: face rows are split by identity; this re-split is for classifiers")
    model, meta = load_model(str(spec["ckpt"]), r["model"], bool(spec["dp"]), spec.get("input_size"))
    x = example_input(meta["input_size"])
    size = meta["input_size"]
    parts = split_data(str(spec["data"]), size, parse_split(str(r["split"]), r["seed"]))
    calib = calibration_batches(str(spec["data"]), size, parts["sa"][0], 8, 64)
    (chk_x, chk_y), (rep_x, rep_y) = parts["check"], parts["report"]
    both = classifier_evaluator(torch.cat([chk_x, rep_x]), torch.cat([chk_y, rep_y]))
    cfg = TargetTrueConfig(drop=float(r["drop_asked"]), bn_recalib_batches=len(calib) if r["adabn"] else 0,
                           bn_mode="always" if r["adabn"] else "never", bn_method=r.get("bn_method", "adabn"))
    chk = ComposedChecker(model, x, make_criterion("l1"), both, calib, cfg)
    m, _ = chk.measure({g.name: float(r["sparsities"].get(g.name, 0.0)) for g in chk.index.groups})
    d = chk.base.per_sample - m.per_sample
    nc = len(chk_y)
    gap = d[:nc].mean() - d[nc:].mean()
    rng = np.random.RandomState(0)
    sims = np.array([(lambda q: d[q[:nc]].mean() - d[q[nc:]].mean())(rng.permutation(len(d)))
                     for _ in range(args.draws)])
    print(f"{r['model']} seed {r['seed']} {r['method']}: drop on check {d[:nc].mean():.2f}, on report "
          f"{d[nc:].mean():.2f}, on both ({len(d)} images) {d.mean():.2f}; outcomes changed "
          f"{100 * np.mean(d != 0):.1f} %")
    print(f"check-minus-report gap {gap:.2f}; over {args.draws} random re-splits: sd {sims.std():.2f}, "
          f"{100 * np.mean(np.abs(sims) >= abs(gap)):.2f} % at least as large")


if __name__ == "__main__":
    main()
