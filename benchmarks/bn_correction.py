#!/usr/bin/env python
"""BN statistics after thinning, side by side: kept as they are, AdaBN, and the paired correction.

For each model: the seeded SA / check / report split and the L1 sensitivity CSV of ``benchmarks/target_true.py``
(computed on the SA part when missing); the moves of that CSV in its order (least sensitive first); for each
``--moves`` k, the first k moves thinned and the BN statistics handled three ways (``engine.bn_stats``), the
calibration images being the SA part's (as in every target-true run). Judged on the report split, which neither the
ordering nor the calibration saw: the metric, and the churn — the share of report outcomes (images, or pairs for
faces) that differ from the unpruned model's. A light cut that changes many outcomes cannot be vouched for by a
check split of realistic size, whatever its mean drop.

    python benchmarks/bn_correction.py --models resnet20,resnet56,mobilefacenet --moves 3,6,12,20,30,45
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from target_true import MODELS, evaluators

from compression_tool.data.splits import parse_split
from compression_tool.engine.budget import ordered_moves, schedule_after
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.sensitivity import load_csv, sweep
from compression_tool.engine.target_true import ComposedChecker, TargetTrueConfig
from compression_tool.io.errors import cli_main
from compression_tool.io.files import atomic_write_json

log = logging.getLogger("bench_bn")
WAYS = (("as is", "never", "adabn"), ("AdaBN", "always", "adabn"), ("paired", "always", "paired"))


def run_model(name: str, seed: int, moves_k: List[int], work: Path, split_text: Optional[str]) -> List[Dict]:
    spec = MODELS[name]
    model, meta = load_model(str(spec["ckpt"]), name, bool(spec["dp"]), spec.get("input_size"))
    size = meta["input_size"]
    x = example_input(size)
    split = parse_split(split_text or str(spec["split"]), seed)
    ev, sa_evaluate, names, calib, n_parts = evaluators(name, model, size, split)
    tag = (split_text or str(spec["split"])).replace(",", "-").replace("/", "_")
    csv = work / f"{name}_l1_{tag}_seed{seed}.csv"
    sweep(model, GroupIndex(model, x), make_criterion("l1"), sa_evaluate, csv, [round(0.1 * i, 1) for i in range(10)],
          names)
    _, table = load_csv(csv)
    metric = names[0]
    moves, layers = ordered_moves(table, metric), list(table)
    checkers = {way: ComposedChecker(model, x, make_criterion("l1"), ev["report"], calib,
                                     TargetTrueConfig(drop=0.0, metric=metric, bn_recalib_batches=len(calib),
                                                      bn_mode=mode, bn_method=method))
                for way, mode, method in WAYS}
    base = next(iter(checkers.values())).base
    full = next(iter(checkers.values())).cost(model)["macs"]
    rows = []
    for k in moves_k:
        if k > len(moves):
            break
        sp = schedule_after(moves, k, layers)
        row: Dict[str, object] = {"model": name, "seed": seed, "moves": k, "metric": metric,
                                  "report_n": base.n, "unpruned": round(base.value, 2)}
        for way, chk in checkers.items():
            t = time.perf_counter()
            m, cost = chk.measure(sp)
            row["macs_kept"] = round(cost["macs"] / full, 4)
            row[way] = round(m.value, 2)
            row[f"{way} churn"] = round(100 * float(np.mean(m.per_sample != base.per_sample)), 2)
            row[f"{way} s"] = round(time.perf_counter() - t, 2)
        log.info("%s", row)
        rows.append(row)
    return rows


def table_md(rows: List[Dict]) -> str:
    ways = [w for w, _, _ in WAYS]
    head = ("| model (unpruned) | moves | MACs kept | " + " | ".join(f"{w}: metric (churn)" for w in ways)
            + " |\n|---|---|---|" + "---|" * len(ways))
    lines = [f"| {r['model']} ({r['unpruned']:.2f}) | {r['moves']} | {r['macs_kept']:.3f} | "
             + " | ".join(f"{r[w]:.2f} ({r[f'{w} churn']:.1f} %)" for w in ways) + " |" for r in rows]
    return "\n".join([head, *lines])


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20", help="comma-separated, from benchmarks/target_true.py's MODELS")
    p.add_argument("--seed", type=int, default=0, help="the split seed")
    p.add_argument("--moves", default="3,6,12,20,30,45", help="comma-separated prefix lengths of the move order")
    p.add_argument("--split", action="append", default=[], metavar="MODEL=SIZES",
                   help="override a model's sa,check,report sizes, e.g. resnet20=512,4000,rest")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="work_space/bench_target_true", help="where the sensitivity CSVs are kept")
    p.add_argument("--out", default="work_space/bench_bn_correction.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    overrides = dict(o.split("=", 1) for o in args.split)
    rows: List[Dict] = []
    for name in args.models.split(","):
        rows += run_model(name, args.seed, [int(k) for k in args.moves.split(",")], work, overrides.get(name))
        atomic_write_json(args.out, rows)
    print(table_md(rows))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
