"""Sensitivity CSV + a target -> a Distiller-style pruning schedule (YAML).

Modes:
  per-layer rule (default; the seed tool's):  auto_make_yaml.py CSV TARGET_ACC MODEL INPUT_SIZE [--rule closest|strict]
      closest: per layer, the level whose metric is closest to the target, then the highest sparsity at least as
      good (Distiller users' rule). strict: the highest sparsity whose metric is >= target. Layers are judged
      one at a time: the composed model usually lands below the target.
  target-true (the default when --best_model_path and --data are given):
      auto_make_yaml.py CSV --drop 1 --model M --best_model_path CKPT --data SPEC [--split 0.34,0.33,0.33]
      the largest MACs reduction whose composed, thinned model meets TARGET_ACC (or the unpruned model minus
      --drop) on a check split, judged on a report split, both disjoint from the sensitivity split
      (pruning.py --mode sa --split …): docs/target_true.md.
  budget:  auto_make_yaml.py CSV --flops 0.7 --model M --best_model_path CKPT [--input_size …]
      least-sensitive layers first, one level at a time, until the thinned model keeps at most 70 % of the MACs
      (every budget flag of the project is the fraction KEPT).
  budget with candidate selection (no CSV: it runs its own sensitivity analyses):
      auto_make_yaml.py --flops 0.5 --select finetune_proxy --criteria l1,fpgm --proxy_epochs 1 --model M
          --best_model_path CKPT --data SPEC [--split 1000,4000,rest]
      budget schedules for every criterion x move ordering (SA top1 / loss) x scope (all groups / inner: not the
      residual streams), each thinned + AdaBN and given a short run of the fine-tune recipe on the training side
      (sa + check parts) minus a selection part; the best top-1 on the selection part wins. Writes the winner's
      schedule and a report JSON (every candidate, its score, MACs); the report part is never used to choose.
      --select adabn scores the thinned + AdaBN candidates without the proxy run (cheaper, weaker).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from compression_tool.apps.proxy_select import AUGMENTS, SELECTORS
from compression_tool.cli.common import (
    HELP_FORMAT,
    add_bn_method_arg,
    add_face_args,
    add_latency_args,
    add_split_args,
)
from compression_tool.cli.parser import ArgumentParser
from compression_tool.data.spec import parse_input_size
from compression_tool.engine.schedule import (
    LOWER_IS_BETTER,
    baseline,
    build_schedule,
    choose_sparsities,
    write_schedule,
)
from compression_tool.engine.sensitivity import load_csv
from compression_tool.engine.sensitivity_ci import resolution_note
from compression_tool.engine.target_true import MULTIPLE_TESTING
from compression_tool.io.errors import UserError, cli_main
from compression_tool.io.files import check_writable
from model_define import model_spec
from test_module.per_sample import BOOTSTRAP_UNITS

POSITIONAL = ["csv", "target", "model", "input_size"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="auto_make_yaml.py", description=__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("pos", nargs="*", help="CSV TARGET_ACC MODEL INPUT_SIZE (the seed tool's positional form)")
    p.add_argument("--csv", help="sensitivity CSV written by pruning.py --mode sa")
    p.add_argument("--target", help="target metric value (e.g. top-1 accuracy 95.0)")
    p.add_argument("--model", help="architecture name recorded in the schedule (arch)")
    p.add_argument("--input_size", help="model input recorded in the schedule: C,H,W (H,W takes the model's "
                                        "channels)")
    p.add_argument("--metric", default=None, help="CSV column to target (default: the first metric column)")
    p.add_argument("--rule", choices=("closest", "strict"), default="closest",
                   help="per-layer rule: closest (the seed tool's) or strict (never below the target)")
    p.add_argument("--flops", type=float, default=None,
                   help="budget mode: fraction of the unpruned MACs to keep, e.g. 0.7 (needs --best_model_path)")
    p.add_argument("--best_model_path", default=None, help="budget mode: the checkpoint the CSV was measured on")
    p.add_argument("--from_data_parallel", action="store_true", help="strip DataParallel's 'module.' prefix")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a checkpoint that needs full unpickling (can run code: only your own files)")
    p.add_argument("--ignore", nargs="*", default=[], help="budget mode: layer names never to prune")
    add_latency_args(p, budget_help="budget mode: fraction of the measured latency to keep, e.g. 0.5, on "
                                    "--latency_runtime (per-layer tables cached in --latency_dir; needs "
                                    "--best_model_path)")
    p.add_argument("--round_to", type=int, default=1,
                   help="budget mode: every group keeps a multiple of N channels (rounded up); the schedule then "
                        "holds each group's exact ratio")
    p.add_argument("--method", default="l1", help="criterion written as the pruner class (l1, l2, fpgm, hrank, …)")
    p.add_argument("--dataset", default="digits", help="dataset name recorded in the schedule")
    p.add_argument("--output", default=None,
                   help="schedule path (default yaml_file/<model>_<target>.yaml, or <model>_flops-<kept %%>.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing schedule")
    add_target_true_args(p)
    add_select_args(p)
    return p


def add_select_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("candidate selection (--flops F --select …; classifier data; also uses --data, --split, "
                             "--split_seed, --bn_recalib, --ignore, --round_to, --data_seed, --model, "
                             "--best_model_path)")
    g.add_argument("--select", choices=SELECTORS, default=None,
                   help="choose among budget candidates: finetune_proxy (a short fine-tune of each, top-1 on the "
                        "selection part) or adabn (top-1 of each thinned + AdaBN candidate); needs --flops, "
                        "--best_model_path and --data, no CSV")
    g.add_argument("--criteria", default="l1,fpgm",
                   help="comma-separated criteria of the candidates (each gets its own sensitivity analysis on the "
                        "SA part)")
    g.add_argument("--orderings", default="top1,loss",
                   help="comma-separated SA columns ordering the budget moves (top1, top5, loss)")
    g.add_argument("--scopes", default="all,inner",
                   help="comma-separated: all (every group) and/or inner (not the groups several convs write into, "
                        "e.g. residual streams)")
    g.add_argument("--proxy_epochs", type=int, default=1, help="finetune_proxy: epochs of each candidate's proxy run")
    g.add_argument("--select_part", default="0.25",
                   help="the selection part, taken from the check part (seeded by --split_seed): a fraction in "
                        "(0, 1) or a count of images; the proxy runs train on the rest of sa + check")
    g.add_argument("--lr", type=float, default=0.01,
                   help="proxy fine-tune: SGD learning rate (momentum 0.9, wd 5e-4, / 10 at 50 %% and 75 %%)")
    g.add_argument("--batch_size", type=int, default=128, help="proxy fine-tune: batch size")
    g.add_argument("--augment", choices=AUGMENTS, default="crop_flip",
                   help="proxy fine-tune augmentation: random crop of the zero-padded image (pad: 1/8 of the side) "
                        "with or without a horizontal flip, or none")
    g.add_argument("--distill", choices=("none", "mse", "cosine", "kd"), default="none",
                   help="proxy fine-tune: distillation from the unpruned model's logits")
    g.add_argument("--alpha", type=float, default=1.0, help="weight of the distillation term")
    g.add_argument("--sa_dir", default=None,
                   help="where the per-criterion SA CSVs go (rewritten every run; default "
                        "work_space/proxy_select/<output name>)")


def add_target_true_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target-true mode")
    g.add_argument("--mode", choices=("auto", "seed", "budget", "target_true"), default="auto",
                   help="seed: the per-layer rule from the CSV alone; budget: --flops; target_true: search on the "
                        "composed model (needs --best_model_path and --data); auto: budget with --flops, else "
                        "target_true when --best_model_path and --data are given, else seed")
    g.add_argument("--data", default=None,
                   help="evaluation data spec (as for pruning.py), split into sa/check/report: classifier data by "
                        "image; face data (orl:, identity_folders:, lfw:, pairs:, bin:) by identity or fold, judged "
                        "on --metric lfw_acc (points), tpr@fpr=X or fidelity (fractions: --drop 0.01 = 1 point)")
    g.add_argument("--drop", type=float, default=None,
                   help="at most this many points below the unpruned model (instead of TARGET_ACC)")
    add_split_args(g, "sa,check,report sizes: fractions or counts, one may be 'rest' (e.g. 512,1000,rest; face "
                      "data: counts of identities, or of folds for pair lists), or identity folders' subjects "
                      "s31..s35/s36..s40/s3..s30; the SA part must be the one pruning.py --mode sa --split "
                      "measured", default="0.34,0.33,0.33")
    add_face_args(g)
    g.add_argument("--bn_recalib", type=int, default=8,
                   help="batches of training-side images to re-estimate BN statistics of every candidate (0: off)")
    add_bn_method_arg(g)
    g.add_argument("--bootstrap_unit", choices=BOOTSTRAP_UNITS, default="identity",
                   help="face data: what the check bound resamples. identity (default): the people, since the "
                        "report split and deployment hold other people and a pruned model can fail some people more "
                        "than others (honest, wide with few check identities); image: the images (narrower; "
                        "assumes people do not matter). Pair sets without image folders (bin:) resample images")
    g.add_argument("--relearn_thresholds", action="store_true",
                   help="face data, --metric lfw_acc: the check bound also re-learns each fold's threshold on every "
                        "bootstrap draw (wider and more honest: a threshold learnt on a few hundred pairs moves; but "
                        "the best-accuracy threshold jumps between draws on small check splits, so the bound is "
                        "erratic there; for large ones, e.g. LFW's 6,000 pairs). A tpr@fpr bound always re-sets its "
                        "threshold")
    g.add_argument("--confidence", type=float, default=0.95, help="one-sided level of the check-split bound")
    g.add_argument("--max_evals", type=int, default=60, help="composed models evaluated on the check split")
    g.add_argument("--multiple_testing", choices=MULTIPLE_TESTING, default=None,
                   help="guard against keeping a lucky pass among the many candidates the search measures: "
                        "bonferroni tests every candidate at 1 - (1 - confidence) / max_evals; posthoc lets the "
                        "search run at --confidence and then backs its pick off along the nested schedules of its "
                        "moves until one passes at 1 - (1 - confidence) / (check measurements: candidates, both BN "
                        "variants each under auto, and the --guard_steps); "
                        "simultaneous backs off the same way, to the level at which the bounds of all candidates "
                        "measured hold together on the same bootstrap resamples (it counts how far their outcomes "
                        "move together, so it never keeps less than posthoc; the default, except with --confirm). "
                        "none keeps the search's own pick and prints its selection-adjusted bound")
    g.add_argument("--guard_steps", type=int, default=16,
                   help="with a back-off guard (simultaneous, posthoc): up to this many lighter schedules along the "
                        "search's moves (every prefix of its move order, then its greedy steps) are also "
                        "measured on the check split, so the guard can back off to a light cut the search itself "
                        "never tried instead of to nothing; they join the family the guard accounts for "
                        "(0: back off along the schedules the search accepted only)")
    g.add_argument("--bonferroni", action="store_true", help="the same as --multiple_testing bonferroni")
    g.add_argument("--reanalyse", action="store_true",
                   help="NNI-style iterative re-analysis: each greedy round re-measures every layer's next level on "
                        "the current composed model (on the SA part) and tries the moves in that order, instead of "
                        "the single-layer order of the CSV (costs one SA-part evaluation per layer and round)")
    g.add_argument("--confirm", type=float, default=0.0,
                   help="hold back this fraction of the check split (e.g. 0.5; face data: of its identities or "
                        "folds): the search runs on the rest, and the schedules it accepted (each a superset of the "
                        "last) are tested there least pruned first; the last to hold before the first failure is "
                        "kept. Guards against the winner's curse of keeping one lucky pass among many candidates, "
                        "at the cost of check resolution (0: off)")
    g.add_argument("--search_confidence", type=float, default=None,
                   help="with --confirm: the level of the search's own decisions (default: --confidence). The "
                        "confirm part re-tests at --confidence, so a lower level (e.g. 0.5) lets the search propose "
                        "further without weakening the promise")
    g.add_argument("--resource", choices=("macs", "params", "latency"), default="macs",
                   help="what to reduce; latency: predicted from per-layer tables measured on --latency_runtime "
                        "(--latency_threads, --latency_batch; cached in --latency_dir)")
    g.add_argument("--data_seed", type=int, default=0, help="seed of the data spec (digits' train/test split)")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.select is not None:
        return select_args(args)
    if args.mode == "auto":
        args.mode = "budget" if args.flops is not None or args.latency is not None else \
            "target_true" if args.best_model_path and args.data else "seed"
    if args.mode == "target_true":
        return target_true_args(args)
    if args.mode == "budget" and args.flops is None and args.latency is None:
        raise UserError("--mode budget needs --flops F or --latency F (the fraction of the MACs / latency to keep)")
    if len(args.pos) > len(POSITIONAL):
        raise UserError(f"expected at most 4 positional arguments (CSV TARGET_ACC MODEL INPUT_SIZE), "
                        f"got {len(args.pos)}")
    for name, val in zip(POSITIONAL, args.pos):
        if getattr(args, name) is None:
            setattr(args, name, val)
    if args.flops is not None and args.latency is not None:
        raise UserError("give one budget: --flops or --latency, not both")
    need = ["csv", "model"] + (["target", "input_size"] if args.flops is None and args.latency is None
                               else ["best_model_path"])
    missing = [n for n in need if getattr(args, n) is None]
    if missing:
        raise UserError(f"missing {', '.join('--' + m for m in missing)} (or give CSV TARGET_ACC MODEL INPUT_SIZE)")
    if args.flops is None and args.latency is None:
        try:
            args.target = float(args.target)
        except ValueError:
            raise UserError(f"TARGET_ACC: expected a number, got {args.target!r}") from None
        if args.target != args.target or args.target in (float("inf"), float("-inf")):
            raise UserError(f"TARGET_ACC: expected a finite number, got {args.target}")
        if args.target < 0:
            raise UserError(f"TARGET_ACC: every metric of the CSV (accuracy, AUC, TPR, loss, EER) is >= 0; a target "
                            f"of {args.target:g} means nothing")
    else:
        flag, keep = ("--flops", args.flops) if args.flops is not None else ("--latency", args.latency)
        if not 0.0 < keep < 1.0:   # also NaN
            raise UserError(f"{flag}: expected the fraction to keep, in (0, 1), e.g. 0.7, got {keep}")
    model_spec(args.model)             # an unknown --model: one line listing the known ones, before any work
    return args


def select_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.mode not in ("auto", "budget"):
        raise UserError(f"--select chooses among budget schedules: it goes with --flops, not --mode {args.mode}")
    if args.pos or args.csv:
        raise UserError("--select runs its own sensitivity analysis per criterion on the SA part: give no CSV")
    if args.latency is not None:
        raise UserError("--select: the budget is --flops (the fraction of the MACs to keep); --latency is not "
                        "supported here")
    missing = [f for f, v in (("--flops", args.flops), ("--best_model_path", args.best_model_path),
                              ("--data", args.data)) if v is None]
    if missing:
        raise UserError(f"--select needs {', '.join(missing)}")
    if args.target is not None or args.drop is not None:
        raise UserError("--select meets a MACs budget (--flops), not an accuracy target: drop --target / --drop")
    if not 0.0 < args.flops < 1.0:   # also NaN
        raise UserError(f"--flops: expected the fraction to keep, in (0, 1), e.g. 0.5, got {args.flops}")
    try:
        part = float(args.select_part)
    except ValueError:
        raise UserError(f"--select_part: expected a fraction in (0, 1) or a count, got {args.select_part!r}") from None
    if not (0.0 < part < 1.0 or (part >= 1 and part == int(part))):
        raise UserError(f"--select_part: expected a fraction in (0, 1) or a whole count >= 1, got {args.select_part}")
    args.select_part = part if part < 1 else int(part)
    if not args.alpha >= 0:
        raise UserError(f"--alpha: expected a weight >= 0, got {args.alpha}")
    if args.model:
        model_spec(args.model)
    args.mode = "select"
    return args


def csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def select(args: argparse.Namespace) -> Path:
    from compression_tool.apps.proxy_select import (
        ProxyRecipe,
        ProxySelectConfig,
        ProxySelectJob,
        default_output,
        run_proxy_select,
    )
    from compression_tool.apps.workflow import ModelSource, input_size_of
    from compression_tool.data.splits import parse_split

    size = input_size_of(ModelSource(args.best_model_path, args.model, input_size=args.input_size))
    split = parse_split(args.split or "0.34,0.33,0.33", args.split_seed)
    output = args.output or (str(default_output(args.model, args.flops, args.select)) if args.model else None)
    sa_dir = args.sa_dir or str(Path("work_space") / "proxy_select" / Path(output or "schedule").stem)
    pad = max(1, (size[1] if size else model_spec(args.model).input_size[1] if args.model else 32) // 8)
    recipe = ProxyRecipe(lr=args.lr, batch_size=args.batch_size, seed=args.split_seed, augment=args.augment,
                         pad=pad, distill=None if args.distill == "none" else args.distill, alpha=args.alpha)
    cfg = ProxySelectConfig(keep=args.flops, criteria=csv_list(args.criteria), orderings=csv_list(args.orderings),
                            scopes=csv_list(args.scopes), select=args.select, proxy_epochs=args.proxy_epochs,
                            recipe=recipe, ignore=list(args.ignore), round_to=args.round_to, work_dir=sa_dir)
    cfg.validate()                                # bad flags: one line, before the model is loaded
    if output:
        check_writable(Path(output), args.force)
        check_writable(Path(output).with_suffix(".report.json"), args.force)
    job = ProxySelectJob(checkpoint=args.best_model_path, data=args.data, config=cfg, model_name=args.model,
                         split=split, select_part=args.select_part, bn_recalib=args.bn_recalib,
                         from_data_parallel=args.from_data_parallel, input_size=list(size) if size else None,
                         trust=args.trust_checkpoint, data_seed=args.data_seed, output=output, force=args.force)
    result, out, report = run_proxy_select(job)
    for c in result.candidates:
        print(f"  candidate {c.name:<24} {args.select} {c.scores[args.select]:6.2f}  MACs kept "
              f"{c.budget.macs_kept:.3f}{'  <- chosen' if c.name == result.chosen else ''}")
    print(f"schedule report: {report}")
    return out


def target_true_args(args: argparse.Namespace) -> argparse.Namespace:
    for name, val in zip(POSITIONAL, args.pos):
        if getattr(args, name) is None:
            setattr(args, name, val)
    if not args.csv or not args.best_model_path or not args.data:
        raise UserError("--mode target_true needs the CSV, --best_model_path and --data")
    if (args.target is None) == (args.drop is None):
        raise UserError("--mode target_true: give exactly one of TARGET_ACC or --drop")
    if args.target is not None:
        try:
            args.target = float(args.target)
        except ValueError:
            raise UserError(f"TARGET_ACC: expected a number, got {args.target!r}") from None
    for name in ("target", "drop"):
        v = getattr(args, name)
        if v is not None and not (v == v and 0 <= v < float("inf")):
            raise UserError(f"--{name}: expected a finite number >= 0, got {v}")
    if not 0.5 <= args.confidence < 1.0:
        raise UserError(f"--confidence: expected a level in [0.5, 1), got {args.confidence}")
    if args.guard_steps < 0:
        raise UserError(f"--guard_steps: expected a count >= 0, got {args.guard_steps}")
    if not 0.0 <= args.confirm < 1.0:      # also NaN
        raise UserError(f"--confirm: expected the fraction of the check split to hold back, in [0, 1), got "
                        f"{args.confirm}")
    if args.bonferroni and args.multiple_testing not in (None, "bonferroni"):
        raise UserError(f"--bonferroni contradicts --multiple_testing {args.multiple_testing}; give one of them")
    if args.search_confidence is not None:
        if not args.confirm:
            raise UserError("--search_confidence: only with --confirm (without a confirm part the search's level is "
                            "--confidence)")
        if not 0.5 <= args.search_confidence < 1.0:
            raise UserError(f"--search_confidence: expected a level in [0.5, 1), got {args.search_confidence}")
    if args.model:
        model_spec(args.model)
    return args


def target_true(args: argparse.Namespace) -> Path:
    from compression_tool.apps.target_true import FaceOptions, TargetTrueJob, run_target_true
    from compression_tool.apps.workflow import ModelSource, input_size_of
    from compression_tool.data.splits import parse_split
    from compression_tool.engine.target_true import format_result

    size = input_size_of(ModelSource(args.best_model_path, args.model, input_size=args.input_size))
    latency = latency_settings(args) if args.resource == "latency" else None
    job = TargetTrueJob(checkpoint=args.best_model_path, csv=args.csv, data=args.data, model_name=args.model,
                        target=args.target, drop=args.drop, method=args.method,
                        split=parse_split(args.split, args.split_seed), metric=args.metric,
                        resource=args.resource, bn_recalib=args.bn_recalib, bn_method=args.bn_method,
                        confidence=args.confidence,
                        max_evals=args.max_evals, from_data_parallel=args.from_data_parallel,
                        input_size=list(size) if size else None, ignore=args.ignore, data_seed=args.data_seed,
                        output=args.output, force=args.force, trust=args.trust_checkpoint,
                        multiple_testing=multiple_testing(args), guard_steps=args.guard_steps,
                        face=FaceOptions(args.subjects, args.test_root_path, args.folds, args.flip, args.bgr,
                                         args.bootstrap_unit, args.relearn_thresholds),
                        latency=latency, confirm=args.confirm,
                        search_confidence=args.search_confidence, reanalyse=args.reanalyse)
    result, out, report = run_target_true(job)
    print(format_result(result))
    print(f"schedule report: {report}")
    return out


def per_layer(args: argparse.Namespace) -> Path:
    input_size = parse_input_size(args.input_size, model_spec(args.model).input_size[0])
    metrics, data = load_csv(args.csv)
    metric = args.metric or metrics[0]
    if metric not in metrics:
        raise UserError(f"--metric {metric!r} is not a column of {args.csv} (columns: {', '.join(metrics)})")
    base = baseline(data, metric)
    worse = args.target > base if metric not in LOWER_IS_BETTER else args.target < base
    if worse:
        raise UserError(f"target {args.target} is better than the unpruned baseline {base:.4g} of {metric}: "
                        "nothing can be pruned to reach it")
    note = resolution_note(data, metric, args.target, base)
    if note:
        print(note)
    chosen = choose_sparsities(data, metric, args.target, args.rule)
    doc = build_schedule(chosen, args.method, args.model, args.dataset, input_size)
    out = Path(args.output or Path("yaml_file") / f"{args.model}_{args.target:g}.yaml")
    header = (f"generated by auto_make_yaml.py from {args.csv}\n"
              f"target {metric} = {args.target:g} (baseline {base:.4g}), rule: {args.rule} (per layer: the "
              f"composed model is not checked)")
    write_schedule(doc, out, header, force=args.force)
    for layer, s in chosen.items():
        print(f"  {layer}: {s:g}")
    return out


def latency_settings(args: argparse.Namespace):
    from compression_tool.apps.target_true import LatencySettings

    return LatencySettings(args.latency_runtime, args.latency_threads, args.latency_batch, args.latency_dir)


def budget(args: argparse.Namespace) -> Path:
    from compression_tool.apps.workflow import ModelSource, input_size_of, load_source
    from compression_tool.engine.budget import schedule_for_budget, write_budget_schedule
    from compression_tool.engine.checkpoint import example_input

    source = ModelSource(args.best_model_path, args.model, args.from_data_parallel, args.input_size,
                         args.trust_checkpoint)
    kind, keep = ("flops", args.flops) if args.flops is not None else ("latency", args.latency)
    out = Path(args.output or Path("yaml_file") / f"{args.model}_{kind}-{round(100 * keep)}.yaml")
    check_writable(out, args.force)   # before the model is loaded and the budget searched
    input_size_of(source)
    model, meta = load_source(source)
    size = meta["input_size"]
    latency = None
    if args.latency is not None:
        latency = latency_settings(args).model_for(model, size)
        print(f"latency of the unpruned model on {args.latency_runtime}, {args.latency_threads} thread(s), "
              f"batch {args.latency_batch}: "
              f"{latency.base:.3f} ms measured (per-layer table {latency.table.path}, "
              f"{latency.table.measured} layer shapes newly timed)")
    result = schedule_for_budget(args.csv, model, example_input(size), keep, args.metric, args.ignore,
                                 args.round_to, latency)
    write_budget_schedule(result, out, args.csv, args.method, meta["model"], args.dataset, size, force=args.force)
    for layer, s in result.sparsities.items():
        print(f"  {layer}: {s:g}")
    if latency is not None:
        print(f"budget {100 * keep:g}% of the latency kept: predicted {result.latency_ms:.3f} ms of "
              f"{result.base_latency_ms:.3f} ms")
    print(f"{'budget ' + format(100 * keep, 'g') + '% of the MACs kept' if latency is None else 'MACs'}: "
          f"{result.macs / 1e6:.3f}M of {result.base_macs / 1e6:.3f}M ({100 * result.reduction:.1f}% removed), "
          f"params {result.params / 1e6:.3f}M of "
          f"{result.base_params / 1e6:.3f}M; {result.moves} of {result.total_moves} moves")
    return out


def multiple_testing(args: argparse.Namespace) -> str:
    """The guard asked for: --multiple_testing, else --bonferroni, else none with --confirm (the confirm part is the
    guard), else simultaneous."""
    if args.multiple_testing:
        return args.multiple_testing
    return "bonferroni" if args.bonferroni else "none" if args.confirm else "simultaneous"


@cli_main
def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    out = {"target_true": target_true, "budget": budget, "seed": per_layer, "select": select}[args.mode](args)
    print(f"schedule: {out}")
    return out


if __name__ == "__main__":
    main()
