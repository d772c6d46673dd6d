#!/usr/bin/env python
"""Issue 12 side by side: the seed tool's per-layer rule vs an NNI-style iterative greedy vs target-true schedules.

For each model and split seed: one seeded split of the test set into SA / check / report parts (MobileFaceNet:
ORL identities, chosen on s31..s40, judged on s3..s30; 10-fold accuracy of pairs); the L1 sensitivity CSV on the SA
part; then three schedules for "at most DROP points below the unpruned model":
- seed rule: ``auto_make_yaml``'s closest rule at (SA baseline − DROP), thinned as ``pruning.py --mode prune`` does
  (no BN re-estimation) and, for comparison, with AdaBN;
- NNI-style iterative greedy: every step re-measures every layer one level further on the current composed model
  (thinned + AdaBN) on the SA part and keeps the best, until the best falls below (SA baseline − DROP);
- target-true (``compression_tool.engine.target_true``): decided on the check split (paired bootstrap bound), AdaBN.
All are judged on the report split: achieved top-1, its drop from the unpruned model on the same images, MACs and
params removed, wall time (sensitivity analysis not included; it is shared).

    python benchmarks/target_true.py --models digits_net,resnet20 --seeds 0,1,2 --out work_space/bench_tt.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from compression_tool.apps.target_true import calibration_batches, held_back, split_data  # noqa: E402
from compression_tool.cli.auto_make_yaml import baseline, choose_sparsities  # noqa: E402
from compression_tool.cli.common import floats  # noqa: E402
from compression_tool.data.splits import parse_split  # noqa: E402
from compression_tool.engine.checkpoint import example_input, load_model  # noqa: E402
from compression_tool.engine.cost import params_and_macs  # noqa: E402
from compression_tool.engine.criteria import make_criterion  # noqa: E402
from compression_tool.engine.groups import GroupIndex  # noqa: E402
from compression_tool.engine.sensitivity import load_csv, sweep  # noqa: E402
from compression_tool.engine.target_true import (  # noqa: E402
    MULTIPLE_TESTING,
    ComposedChecker,
    TargetTrueConfig,
    classifier_evaluator,
    composed_metric,
    target_true_schedule,
)
from compression_tool.io.errors import cli_main  # noqa: E402
from compression_tool.io.files import atomic_write_json  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402
from test_module.per_sample import adverse_value  # noqa: E402

log = logging.getLogger("bench_tt")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS: Dict[str, Dict[str, object]] = {
    "digits_net": dict(ckpt="work_space/checkpoints/digits_net.pth", data="digits", dp=False, split="0.2,0.4,0.4"),
    "resnet20": dict(ckpt=str(SHARED / "resnet_cifar10" / "resnet20-12fca82f.th"),
                     data=f"image_folder:{SHARED / 'cifar10_test'}", dp=True, split="512,1000,rest"),
    "resnet56": dict(ckpt=str(SHARED / "resnet_cifar10" / "resnet56-4bfd9763.th"),
                     data=f"image_folder:{SHARED / 'cifar10_test'}", dp=True, split="512,1000,rest"),
    # chosen on s31..s40 (SA on s31..s35, check on s36..s40), judged on s3..s30: identities it never saw
    "mobilefacenet": dict(ckpt=str(SHARED / "mobilefacenet_casia" / "068.ckpt"), data=f"orl:{SHARED / 'orl_faces'}",
                          dp=False, split="s31..s35/s36..s40/s3..s30", metric="lfw_acc", input_size=(3, 112, 96)),
}


def nni_style_greedy(model, x, crit, table, sa_eval, calib, drop: float, max_evals: int, bn_method: str = "adabn"):
    """NNI-style iterative pruning: re-measure every layer one level further on the current composed model
    (on the SA part, no noise margin), keep the best, stop when the best is below (SA baseline − drop)."""
    cfg = TargetTrueConfig(drop=drop, bn_recalib_batches=len(calib), bn_method=bn_method)
    chk = ComposedChecker(model, x, crit, sa_eval, calib, cfg)
    levels = {w: sorted(s for s, _ in c if s > 0) for w, c in table.items()}
    cur = {w: 0.0 for w in table}
    floor = chk.base.value - drop
    while chk.evals < max_evals:
        best, best_sp = None, None
        for w in table:
            nxt = [s for s in levels[w] if s > cur[w] + 1e-9]
            if not nxt:
                continue
            sp = {**cur, w: nxt[0]}
            m, _ = chk.measure(sp)
            if best is None or m.value > best:
                best, best_sp = m.value, sp
        if best is None or best < floor:
            break
        cur = best_sp
    return cur, chk.adabn_for(cur)


def evaluators(name: str, model, size, split, confirm: float = 0.0, unit: str = "identity"):
    """(sa, check, report) evaluators — with ``confirm``, also ``searched`` / ``confirm``: the check split's two parts
    (``apps.target_true.held_back``; faces: by identity) — the SA sweep's evaluate function and metric names,
    calibration batches."""
    spec = MODELS[name]
    data = str(spec["data"])
    if spec.get("metric"):                      # face embedder: identity-disjoint pair sets
        from compression_tool.apps.target_true import face_parts
        from test_module.per_sample import pair_evaluator
        from test_module.setup import pair_setup

        metric = str(spec["metric"])
        fp = face_parts(data, size, split)
        if confirm:                             # the check identities split once more (no face on both sides)
            halves = face_parts(data, size, split, confirm=confirm)
            fp["searched"], fp["confirm"] = halves["check"], halves["confirm"]
        ev = {p: pair_evaluator(v, metric, reference=model, unit=unit) for p, v in fp.items()}
        sa_setup = pair_setup(fp["sa"], metric, reference=model)
        n = {p: len(v) for p, v in fp.items()}
        return ev, sa_setup.evaluate, sa_setup.metric_names, calibration_batches(data, size, fp["sa"].images, 8), n
    parts = split_data(data, size, split)
    if confirm:
        parts["searched"], parts["confirm"] = held_back(parts["check"], confirm, split.seed)
    ev = {p: classifier_evaluator(*v) for p, v in parts.items()}
    loader = DataLoader(TensorDataset(*parts["sa"]), batch_size=256)
    return (ev, lambda m: evaluate_classifier(m, loader), ["top1", "top5", "loss"],
            calibration_batches(data, size, parts["sa"][0], 8, 64), {k: len(v[1]) for k, v in parts.items()})


def run_one(name: str, seed: int, drop: float, work: Path, max_evals: int, split_text: Optional[str] = None,
            multiple_testing: str = "simultaneous", confirm: float = 0.0, confirm_only: bool = False,
            search_levels: Sequence[Optional[float]] = (None,), others: bool = True, reanalyse: bool = False,
            bn_method: str = "adabn", unit: str = "identity",
            sa_levels: Sequence[float] = (), sa_bn_mode: str = "auto") -> List[Dict[str, object]]:
    spec = MODELS[name]
    model, meta = load_model(str(spec["ckpt"]), name, bool(spec["dp"]), spec.get("input_size"))
    size = meta["input_size"]
    x = example_input(size)
    split = parse_split(split_text or str(spec["split"]), seed)
    ev, sa_evaluate, names, calib, n_parts = evaluators(name, model, size, split, confirm, unit)
    metric = names[0]
    crit = make_criterion("l1")
    tag = (split_text or str(spec["split"])).replace(",", "-").replace("/", "_")
    csv = work / f"{name}_l1_{tag}_seed{seed}.csv"
    t = time.perf_counter()
    sweep(model, GroupIndex(model, x), crit, sa_evaluate, csv, [round(0.1 * i, 1) for i in range(10)], names)
    sa_seconds = time.perf_counter() - t
    _, table = load_csv(csv)
    adverse = adverse_value(metric)
    report = ev["report"]
    rep_base = report(model).value
    full = params_and_macs(model, x)
    rows = []

    def row(method: str, sp: Dict[str, float], seconds: float, adabn: bool) -> None:
        m, cost = composed_metric(model, x, crit, sp, report, calib if adabn else [], bn_method=bn_method)
        rows.append({"model": name, "seed": seed, "split": split_text or spec["split"], "drop_asked": drop,
                     "method": method, "adabn": adabn, "bn_method": bn_method,
                     "bootstrap_unit": unit if spec.get("metric") else "image", "target": round(rep_base - drop, 2),
                     "report_unpruned": round(rep_base, 2), "report": round(m.value, 2),
                     "report_drop": round(rep_base - m.value, 2), "held": rep_base - m.value <= drop + 0.5,
                     "macs_removed": round(1 - cost["macs"] / full["macs"], 4),
                     "params_removed": round(1 - cost["params"] / full["params"], 4), "seconds": round(seconds, 1),
                     "sparsities": {k: v for k, v in sp.items() if v > 0}, "sa_seconds": round(sa_seconds, 1),
                     "metric": metric, "n": n_parts})
        log.info("%s seed %d %-22s report %.2f (unpruned %.2f) MACs -%.1f%% %.1fs", name, seed, method,
                 m.value, rep_base, 100 * rows[-1]["macs_removed"], seconds)

    if others and not confirm_only:
        t = time.perf_counter()
        seed_sp = choose_sparsities(table, metric, baseline(table, metric) - drop, "closest")
        dt = time.perf_counter() - t
        row("seed rule", seed_sp, dt, False)
        row("seed rule + AdaBN", seed_sp, dt, True)
        t = time.perf_counter()
        nni_sp, nni_bn = nni_style_greedy(model, x, crit, table, ev["sa"], calib, drop, max_evals, bn_method)
        row("NNI-style greedy", nni_sp, time.perf_counter() - t, nni_bn)
    if not confirm_only:
        t = time.perf_counter()
        r = target_true_schedule(model, x, crit, table, ev["check"], None, calib,
                                 TargetTrueConfig(drop=drop, metric=metric, bn_recalib_batches=8, seed=seed,
                                                  max_evals=max_evals, multiple_testing=multiple_testing,
                                                  adverse=adverse, reanalyse=reanalyse, bn_method=bn_method),
                                 sa_eval=ev["sa"])
        tags = [t for t in (multiple_testing if multiple_testing != "none" else "", "reanalyse" if reanalyse else "")
                if t]
        row("target-true" + (f" ({', '.join(tags)})" if tags else ""), r.sparsities,
            time.perf_counter() - t, r.adabn)
        rows[-1]["check_bound"] = round(r.check_bound, 2)
        rows[-1]["check"] = round(r.check, 2)
        rows[-1]["check_unpruned"] = round(r.check_baseline, 2)
        rows[-1]["level"] = round(r.level, 5)
        if r.guards and multiple_testing != "none":   # the same search's own pick, before a guard backed off
            pick = r.search_pick or {"sparsities": r.sparsities, "adabn": r.adabn, "bound": r.check_bound}
            row("target-true (the search's pick: none)", pick["sparsities"], 0.0, pick["adabn"])
            rows[-1]["check_bound"] = round(pick["bound"], 2)
        elif r.search_pick is not None:
            row("target-true (the search's pick)", r.search_pick["sparsities"], 0.0, r.search_pick["adabn"])
            rows[-1]["check_bound"] = round(r.search_pick["bound"], 2)
        for guard, pick in (r.guards or {}).items():   # the other back-off guards on the same search (cached: free)
            if guard != multiple_testing:
                row(f"target-true ({guard}, same search)", pick["sparsities"], 0.0, pick["adabn"])
                rows[-1]["level"] = round(pick["level"], 5)
    for level in search_levels if confirm else ():
        # the same search on (1 - confirm) of check; its chain re-tested on the rest
        t = time.perf_counter()
        rc = target_true_schedule(model, x, crit, table, ev["searched"], None, calib,
                                  TargetTrueConfig(drop=drop, metric=metric, bn_recalib_batches=8, seed=seed,
                                                   max_evals=max_evals, adverse=adverse, search_confidence=level,
                                                   bn_method=bn_method),
                                  confirm_eval=ev["confirm"])
        label = f"target-true, confirm {confirm:g}" + (f", search at {level:g}" if level is not None else "")
        row(label, rc.sparsities, time.perf_counter() - t, rc.adabn)
        rows[-1]["confirm"] = rc.confirm
    for level in sa_levels:
        # the search on the SA part (no check data), its chain tested on the whole check split (fixed sequence)
        t = time.perf_counter()
        rc = target_true_schedule(model, x, crit, table, ev["sa"], None, calib,
                                  TargetTrueConfig(drop=drop, metric=metric, bn_recalib_batches=8, seed=seed,
                                                   max_evals=max_evals, adverse=adverse, search_confidence=level,
                                                   bn_method=bn_method, bn_mode=sa_bn_mode),
                                  confirm_eval=ev["check"])
        row(f"target-true, searched on SA at {level:g} (BN {sa_bn_mode}), sequence on check", rc.sparsities,
            time.perf_counter() - t, rc.adabn)
        rows[-1]["confirm"] = rc.confirm
    return rows


def table_md(rows: List[Dict[str, object]]) -> str:
    head = ("| model | split (seed) | method | target (report) | achieved (report) | drop | held ±0.5 | MACs removed | "
            "params removed | wall s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['model']} | {r['split']} ({r['seed']}) | {r['method']} | {r['target']:.2f} | {r['report']:.2f} | "
             f"{r['report_drop']:.2f} | {'yes' if r['held'] else 'no'} | {100 * r['macs_removed']:.1f}% | "
             f"{100 * r['params_removed']:.1f}% | {r['seconds']:.1f} |" for r in rows]
    return "\n".join([head, *lines])


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits_net,resnet20")
    p.add_argument("--seeds", default="0")
    p.add_argument("--drop", type=float, default=1.0)
    p.add_argument("--max_evals", type=int, default=60, help="composed models per search (NNI-style and ours)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--multiple_testing", choices=MULTIPLE_TESTING, default="simultaneous",
                   help="target-true's TargetTrueConfig.multiple_testing; the other back-off guards' picks on the "
                        "same search (posthoc, simultaneous) are added as rows")
    p.add_argument("--bonferroni", action="store_true", help="the same as --multiple_testing bonferroni")
    p.add_argument("--confirm", type=float, default=0.0,
                   help="also run target-true with this fraction of check held back to confirm the winner")
    p.add_argument("--confirm_only", action="store_true",
                   help="run only the --confirm / --sa_search rows")
    p.add_argument("--sa_bn_mode", choices=("auto", "always", "never"), default="auto",
                   help="the --sa_search rows' TargetTrueConfig.bn_mode")
    p.add_argument("--sa_search", type=floats, default=[],
                   help="comma-separated search levels: one row each for target-true searched on the SA part only, "
                        "its chain then tested on the whole check split (a fixed-sequence test)")
    p.add_argument("--target_true_only", action="store_true", help="skip the seed rule and NNI-style rows")
    p.add_argument("--reanalyse", action="store_true", help="target-true with NNI-style re-analysis of greedy moves")
    p.add_argument("--search_confidence", type=floats, default=[None],
                   help="with --confirm: comma-separated search levels, one confirm row each (default: --confidence)")
    p.add_argument("--bn_method", choices=("adabn", "paired"), default="adabn",
                   help="how every row that re-estimates BN statistics after thinning does it (engine.bn_stats)")
    p.add_argument("--bootstrap_unit", choices=("identity", "image"), default="identity",
                   help="face models: what the check bound resamples (auto_make_yaml.py --bootstrap_unit; "
                        "image reproduces the MobileFaceNet rows measured before identity became the default)")
    p.add_argument("--split", action="append", default=[], metavar="MODEL=SIZES",
                   help="override a model's sa,check,report sizes, e.g. resnet20=512,4000,rest")
    p.add_argument("--work", default="work_space/bench_target_true")
    p.add_argument("--out", default="work_space/bench_target_true/results.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    overrides = dict(o.split("=", 1) for o in args.split)
    for name in args.models.split(","):
        if name == "digits_net" and not Path(MODELS[name]["ckpt"]).exists():
            from compression_tool.apps.default_model import train_default
            train_default(Path(MODELS[name]["ckpt"]))
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows += run_one(name, seed, args.drop, work, args.max_evals, overrides.get(name),
                            "bonferroni" if args.bonferroni else args.multiple_testing, args.confirm,
                            args.confirm_only,
                            args.search_confidence, not args.target_true_only, args.reanalyse, args.bn_method,
                            args.bootstrap_unit, args.sa_search, args.sa_bn_mode)
            atomic_write_json(args.out, rows)
    print(table_md(rows))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
