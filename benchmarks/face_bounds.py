#!/usr/bin/env python
"""One face schedule under each check bound: the images-only bound and the two-stage bound over identities
(people, then their images), on the check and the report identities, with the drop per identity.

    python benchmarks/face_bounds.py SCHEDULE.report.json --checkpoint CKPT --input_size 56,48 \
        --split s21..s26/s27..s33/s34..s40 [--bn_method adabn]

SCHEDULE.report.json: the report ``auto_make_yaml.py --mode target_true`` wrote next to its YAML (its sparsities).
"""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

import numpy as np
import torch
from target_true import SHARED  # benchmarks/ is on sys.path when run as a script

from compression_tool.apps.target_true import calibration_batches, face_parts
from compression_tool.data.spec import parse_input_size
from compression_tool.data.splits import parse_split
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.target_true import ComposedChecker, TargetTrueConfig, bootstrap_mean_bound
from compression_tool.io.errors import cli_main
from test_module.per_sample import image_identities, pair_evaluator


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="SCHEDULE.report.json of auto_make_yaml.py --mode target_true")
    p.add_argument("--checkpoint", required=True, help="the unpruned embedder the schedule was made for")
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--input_size", default="56,48", help="H,W or C,H,W")
    p.add_argument("--data", default=f"orl:{SHARED / 'orl_faces'}", help="identity-folder face data")
    p.add_argument("--split", default="s21..s26/s27..s33/s34..s40", help="sa/check/report identities")
    p.add_argument("--bn_method", choices=("adabn", "paired"), default="adabn")
    p.add_argument("--drop", type=float, default=1.0, help="the budget the bounds are read against")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sparsities = json.load(open(args.report, encoding="utf-8"))["sparsities"]
    model, meta = load_model(args.checkpoint, args.model, input_size=parse_input_size(args.input_size))
    size = meta["input_size"]
    parts = face_parts(args.data, size, parse_split(args.split))
    calib = calibration_batches(args.data, size, parts["sa"].images, 8, 64)
    for part in ("check", "report"):
        ps = parts[part]
        cfg = TargetTrueConfig(drop=args.drop, bn_recalib_batches=8, bn_mode="always", bn_method=args.bn_method)
        chk = ComposedChecker(model, example_input(size), make_criterion("l1"), pair_evaluator(ps, "lfw_acc"),
                              calib, cfg)
        m, _ = chk.measure({g.name: float(sparsities.get(g.name, 0.0)) for g in chk.index.groups})
        d = chk.base.per_sample - m.per_sample
        people = image_identities(ps)
        pairs = ps.pairs.numpy()
        image = bootstrap_mean_bound(d, 0.95, True, pairs=pairs, adverse=100.0)
        two_stage = bootstrap_mean_bound(d, 0.95, True, pairs=pairs, groups=people, adverse=100.0)
        per = [round(float(d[(people[pairs] == k).any(1)].mean()), 2) for k in np.unique(people)]
        print(f"{part}: unpruned {chk.base.value:.2f}, pruned {m.value:.2f}, drop {d.mean():.2f}; 95 % upper bound "
              f"of the drop: images {image:.2f}, people then images {two_stage:.2f}; drop per identity (pairs "
              f"touching it) {per}")


if __name__ == "__main__":
    main()
