#!/usr/bin/env python
"""Sensitivity CSV + target metric -> a Distiller-style pruning schedule (YAML).

Seed-tool rule (default, ``--rule closest``): per layer, find the level whose metric is closest to the target,
then take the highest sparsity whose metric is at least as good as that one. ``--rule strict`` never goes below
the target: the highest sparsity whose metric is >= target.
Usage: auto_make_yaml.py CSV TARGET_ACC MODEL INPUT_SIZE  (or the same as --csv/--target/--model/--input_size)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, cli_main  # noqa: E402
from core.schedule import build_schedule, write_schedule  # noqa: E402
from core.sensitivity import load_csv  # noqa: E402

LOWER_IS_BETTER = {"loss", "eer", "threshold", "lfw_std"}

Curve = List[Tuple[float, Dict[str, float]]]


def pick_level(curve: Curve, metric: str, target: float, rule: str = "closest") -> float:
    """The sparsity chosen for one layer (see module doc). ``curve`` is sorted by sparsity."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    vals = [(s, sign * m[metric]) for s, m in curve]
    t = sign * target
    if rule == "strict":
        ok = [s for s, v in vals if v >= t]
        return max(ok) if ok else 0.0
    # on a tie, the level on the safe side of the target wins
    closest = min(vals, key=lambda sv: (abs(sv[1] - t), sv[1] < t))[1]
    return max(s for s, v in vals if v >= closest)


def choose_sparsities(data: Dict[str, Curve], metric: str, target: float, rule: str) -> Dict[str, float]:
    return {layer: pick_level(curve, metric, target, rule) for layer, curve in data.items()}


def baseline(data: Dict[str, Curve], metric: str) -> float:
    zeros = [m[metric] for curve in data.values() for s, m in curve if s == 0.0]
    if not zeros:
        raise UserError("the CSV has no sparsity-0 rows, so the baseline metric is unknown")
    return max(zeros) if metric not in LOWER_IS_BETTER else min(zeros)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pos", nargs="*", help="CSV TARGET_ACC MODEL INPUT_SIZE (the seed tool's positional form)")
    p.add_argument("--csv", help="sensitivity CSV written by pruning.py --mode sa")
    p.add_argument("--target", type=float, help="target metric value per layer (e.g. top-1 accuracy 95.0)")
    p.add_argument("--model", help="architecture name recorded in the schedule (arch)")
    p.add_argument("--input_size", help="model input recorded in the schedule, e.g. 112,96 or 1,16,16")
    p.add_argument("--metric", default=None, help="CSV column to target (default: the first metric column)")
    p.add_argument("--rule", choices=("closest", "strict"), default="closest",
                   help="closest: the seed tool's rule; strict: never below the target")
    p.add_argument("--method", default="l1", help="criterion written as the pruner class (l1, l2, fpgm, hrank, …)")
    p.add_argument("--dataset", default="digits", help="dataset name recorded in the schedule")
    p.add_argument("--output", default=None, help="schedule path (default yaml_file/<model>_<target>.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing schedule")
    args = p.parse_args(argv)
    names = ["csv", "target", "model", "input_size"]
    if len(args.pos) > len(names):
        raise UserError(f"expected at most 4 positional arguments (CSV TARGET_ACC MODEL INPUT_SIZE), got {len(args.pos)}")
    for name, val in zip(names, args.pos):
        if getattr(args, name) is None:
            setattr(args, name, val)
    missing = [n for n in names if getattr(args, n) is None]
    if missing:
        raise UserError(f"missing {', '.join('--' + m for m in missing)} (or give CSV TARGET_ACC MODEL INPUT_SIZE)")
    try:
        args.target = float(args.target)
    except ValueError:
        raise UserError(f"TARGET_ACC: expected a number, got {args.target!r}") from None
    return args


@cli_main
def main(argv=None) -> Path:
    args = parse_args(argv)
    from core.workflow import parse_input_size

    input_size = parse_input_size(args.input_size)
    metrics, data = load_csv(args.csv)
    metric = args.metric or metrics[0]
    if metric not in metrics:
        raise UserError(f"--metric {metric!r} is not a column of {args.csv} (columns: {', '.join(metrics)})")
    base = baseline(data, metric)
    worse = args.target > base if metric not in LOWER_IS_BETTER else args.target < base
    if worse:
        raise UserError(f"target {args.target} is better than the unpruned baseline {base:.4g} of {metric}: "
                        "nothing can be pruned to reach it")
    chosen = choose_sparsities(data, metric, args.target, args.rule)
    doc = build_schedule(chosen, args.method, args.model, args.dataset, input_size)
    out = Path(args.output or Path("yaml_file") / f"{args.model}_{args.target:g}.yaml")
    header = (f"generated by auto_make_yaml.py from {args.csv}\n"
              f"target {metric} = {args.target:g} (baseline {base:.4g}), rule: {args.rule}")
    write_schedule(doc, out, header, force=args.force)
    for layer, s in chosen.items():
        print(f"  {layer}: {s:g}")
    print(f"schedule: {out}")
    return out


if __name__ == "__main__":
    main()
