"""pruning.py: the Distiller-style pruning workflow, one mode at a time.

  --mode sa        sensitivity analysis: every prunable group x sparsity levels -> CSV
  --mode prune     apply a YAML schedule: select channels, thin, report, save the thinned checkpoint
  --mode search    per-layer ratios under a FLOPs/params budget (GA, PSO, ABC, ACO) -> YAML schedule
  --mode finetune  fine-tune a (thinned) model (the flags of `python -m train_module`)

`python pruning.py --mode MODE --help` lists the flags of one mode.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

from compression_tool.cli.common import (
    HELP_FORMAT,
    add_bn_method_arg,
    add_criterion_args,
    add_eval_args,
    add_latency_args,
    add_model_args,
    add_output_args,
    criterion_config,
    eval_config,
    model_source,
    positive_int,
)
from compression_tool.cli.parser import ArgumentParser, apply_threads
from compression_tool.io.errors import UserError, cli_main

MODES = ("sa", "prune", "search", "finetune")
DEFAULT_SEARCH_EVAL_BATCHES = 4


def split_mode(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """``--mode X`` / ``--mode=X`` out of argv (the seed tool's form), and the rest."""
    for i, a in enumerate(argv):
        if a == "--mode" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if a.startswith("--mode="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def _sparsity_levels(text: str):
    from compression_tool.engine.sensitivity import parse_sparsities

    try:
        return parse_sparsities(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def sa_parser(prog: str = "pruning.py --mode sa") -> argparse.ArgumentParser:
    from compression_tool.engine.sensitivity import default_sparsities

    p = ArgumentParser(prog=prog, formatter_class=HELP_FORMAT, description=(
        "Sensitivity analysis: sweep every prunable group (layers coupled by residual adds or depthwise convs are "
        "one group, named by its leading weight) over sparsity levels on a fixed, seeded evaluation subset and "
        "append the metrics to a Distiller-shaped CSV (parameter,sparsity,<metrics>). Re-running resumes when the run "
        "matches <csv>.meta.json (checkpoint hash, data, seed, subset, criterion, grid, threads); --force starts "
        "afresh."))
    add_model_args(p)
    add_eval_args(p)
    add_criterion_args(p)
    p.add_argument("--sparsities", type=_sparsity_levels, default=default_sparsities(),
                   help="levels as '0,0.2,0.4' or 'start:stop:step' (stop exclusive; default 0.0..0.9 step 0.1)")
    p.add_argument("--ci", action="store_true",
                   help="append confidence-interval columns after Distiller's: the measurement noise of every row. "
                        "Classifiers: top1_lo,top1_hi,top5_lo,top5_hi (95%% Wilson interval on the evaluation "
                        "images); face pairs: <metric>_lo,<metric>_hi for lfw_acc, tpr@fpr=X or fidelity (95%% "
                        "bootstrap over the pairs' people, then their images); image_folder: fidelity_lo,fidelity_hi "
                        "(over its subfolders, then images)")
    p.add_argument("--no_cache", action="store_true",
                   help="recompute the unchanged prefix of the network instead of reusing its activations")
    add_worker_args(p, "measure the groups in N workers, one task per group (--threads split among them); the CSV "
                       "is the serial run's, row for row")
    add_output_args(p, "CSV path (default work_space/sensitivity_data/<model>_<method>.csv)")
    return p


def add_worker_args(p, what: str) -> None:
    """--workers N and --pool process|ray (apps.worker_pool): ``what`` says what the workers do."""
    p.add_argument("--workers", type=positive_int, default=1,
                   help=f"{what} (default 1: in this process); a worker that dies has its tasks re-run")
    p.add_argument("--pool", choices=("process", "ray"), default="process",
                   help="where --workers run: process (local processes) or ray (Ray actors: a local Ray, or the "
                        "cluster --ray_address / RAY_ADDRESS names, sharing a file system)")
    p.add_argument("--ray_address", default=None,
                   help="--pool ray: join this existing Ray cluster (e.g. HOST:6379 or ray://HOST:10001) instead of "
                        "starting a local Ray (default: RAY_ADDRESS, else local)")


def add_round_to(p) -> None:
    p.add_argument("--round_to", type=int, default=1,
                   help="keep a multiple of N channels in every group (rounded up: never prunes more than asked; "
                        "a group narrower than N stays whole); 8 or 16 suit SIMD kernels")


def prune_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pruning.py --mode prune", formatter_class=HELP_FORMAT, description=(
        "Apply a Distiller-style YAML schedule: rank each named group's channels with the schedule's pruner "
        "classes (or --method), remove them physically (convs, BN, PReLU, residual-coupled layers, Linear after "
        "flatten), print the keep-arrays and a before/after report (params, MACs, latency, metrics)."))
    add_model_args(p)
    add_eval_args(p)
    add_criterion_args(p, default=None)
    p.add_argument("--yaml", default=None,
                   help="the schedule (from auto_make_yaml.py or written by hand; --yaml_path is read too)")
    p.add_argument("--bn_recalib", type=int, default=0,
                   help="re-estimate BN statistics (AdaBN) on N batches of training-side images after thinning; "
                        "a target-true schedule says whether it was checked that way (extensions.target_true.adabn)")
    add_bn_method_arg(p, None, "the schedule's (extensions.target_true.bn_method), else adabn")
    p.add_argument("--save_model_pt", action="store_true",
                   help="write the thinned checkpoint and its keep-arrays (<output>.keep.json)")
    add_round_to(p)
    add_latency_args(p.add_argument_group("latency report"), runtime_default=None,
                     runtime_help="print per-layer latency before/after on this runtime (PyTorch CPU or ONNX Runtime "
                                  "CPU), from per-layer tables cached per machine in --latency_dir")
    add_output_args(p, "thinned checkpoint path (default work_space/pruned_model/<model>.pth)")
    return p


def search_parser() -> argparse.ArgumentParser:
    from compression_tool.engine.search import ALGORITHMS

    p = ArgumentParser(prog="pruning.py --mode search", formatter_class=HELP_FORMAT, description=(
        "Search per-group pruning ratios under a budget; each candidate is thinned, its BN statistics "
        "re-estimated and evaluated on --eval_batches batches. Writes a schedule for --mode prune and prints "
        "best_candidates_prune=[…]."))
    add_model_args(p)
    add_eval_args(p, eval_batches_default=DEFAULT_SEARCH_EVAL_BATCHES)
    add_criterion_args(p)
    g = p.add_argument_group("search")
    g.add_argument("--algo", choices=list(ALGORITHMS), default="abc",
                   help="genetic (ga), particle swarm (pso), artificial bee colony (abc), ant colony (aco)")
    g.add_argument("--flops", type=float, default=None,
                   help="budget: fraction of the unpruned MACs to KEEP, e.g. 0.5 (every budget flag of the "
                        "project is a fraction kept)")
    g.add_argument("--params", type=float, default=None, help="budget: fraction of the unpruned parameters to keep")
    add_latency_args(g, budget_help="budget: fraction of the latency measured on --latency_runtime to keep "
                                    "(per-layer tables, cached per machine in --latency_dir)")
    g.add_argument("--population", type=int, default=10, help="candidates per iteration (ABC: food sources)")
    g.add_argument("--iterations", type=int, default=10, help="generations / swarm moves / bee cycles / ant tours")
    g.add_argument("--search_batches", type=int, default=4,
                   help="batches used to re-estimate each candidate's BatchNorm statistics")
    g.add_argument("--max_ratio", type=float, default=0.9, help="upper bound of every group's pruning ratio")
    add_round_to(g)
    add_worker_args(g, "evaluate each population's candidates in N workers, each holding a model replica and the "
                       "evaluation data (--threads split among them); the same search as in one process")
    add_output_args(p, "schedule path (default yaml_file/<model>_search_<algo>_<budget>.yaml)")
    return p


def run_sa(argv: List[str], prog: str = "pruning.py --mode sa") -> None:
    from compression_tool.apps.workflow import SensitivityConfig, run_sensitivity

    args = sa_parser(prog).parse_args(argv)
    apply_threads(args.threads)
    cfg = SensitivityConfig(source=model_source(args), eval=eval_config(args), criterion=criterion_config(args),
                            sparsities=args.sparsities, output=args.output, work_space=args.work_space,
                            ignore=args.ignore, use_cache=not args.no_cache, force=args.force, ci=args.ci,
                            workers=args.workers, pool=args.pool, ray_address=args.ray_address)
    print(f"sensitivity CSV: {run_sensitivity(cfg)}")


def run_prune(argv: List[str]) -> None:
    from compression_tool.apps.workflow import PruneConfig
    from compression_tool.apps.workflow import run_prune as prune
    from compression_tool.cli.legacy import prune_without_yaml

    args = prune_parser().parse_args(argv)
    if not args.yaml:
        raise prune_without_yaml()
    apply_threads(args.threads)
    crit = criterion_config(args, default=None)
    cfg = PruneConfig(source=model_source(args), schedule=args.yaml, eval=eval_config(args, "report"),
                      criterion=crit, override_criterion=bool(args.method or args.fpgm or args.hrank),
                      ignore=args.ignore, round_to=args.round_to, save=args.save_model_pt, output=args.output,
                      work_space=args.work_space, force=args.force, bn_recalib=args.bn_recalib,
                      bn_method=args.bn_method, latency_runtime=args.latency_runtime,
                      latency_threads=args.latency_threads, latency_batch=args.latency_batch,
                      latency_dir=args.latency_dir)
    result = prune(cfg)
    print("keep-arrays (layer: out channels before -> after):")
    for line in result.keep_lines:
        print("  " + line)
    print(result.report())
    for line in result.latency_lines:
        print(line)
    if result.checkpoint:
        print(f"thinned checkpoint: {result.checkpoint}\nkeep-arrays: {result.keep_path}")
    else:
        print("(not saved: pass --save_model_pt to write the thinned checkpoint)")


def run_search(argv: List[str]) -> None:
    from compression_tool.apps.search import SearchConfig
    from compression_tool.apps.search import run_search as search

    args = search_parser().parse_args(argv)
    apply_threads(args.threads)
    budgets = [(r, v) for r, v in (("macs", args.flops), ("params", args.params), ("latency_ms", args.latency))
               if v is not None]
    if len(budgets) != 1:
        raise UserError("--mode search needs exactly one budget: --flops F, --params F or --latency F (fraction "
                        "to keep)")
    resource, fraction = budgets[0]
    cfg = SearchConfig(source=model_source(args), resource=resource, fraction=fraction, algo=args.algo,
                       eval=eval_config(args, "check"), criterion=criterion_config(args), population=args.population,
                       iterations=args.iterations, search_batches=args.search_batches, max_ratio=args.max_ratio,
                       ignore=args.ignore, round_to=args.round_to, output=args.output, force=args.force,
                       seed=args.seed, latency_runtime=args.latency_runtime, latency_threads=args.latency_threads,
                       latency_batch=args.latency_batch, latency_dir=args.latency_dir, workers=args.workers,
                       pool=args.pool, ray_address=args.ray_address)
    out, lines = search(cfg)
    print("\n".join(lines))
    print(f"schedule: {out}")


def overview_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pruning.py", description=__doc__, formatter_class=HELP_FORMAT)
    p.add_argument("--mode", choices=MODES, required=True, help="what to do (see above)")
    return p


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    from compression_tool.cli.legacy import translate

    mode, rest = split_mode(list(sys.argv[1:] if argv is None else argv))
    if mode in MODES:   # the Distiller-fork compression_tool's flags (--img_list_label_path, --yaml_path, …), noted
        rest = translate(mode, rest)
    if mode == "finetune":  # the seed tool's mode: the same command line as python -m train_module
        from compression_tool.cli.finetune import main as finetune_main
        return finetune_main(rest, prog="pruning.py --mode finetune")
    if mode not in MODES:  # no mode: the overview help (or argparse's one-line error naming the modes)
        overview_parser().parse_args(rest if mode is None else ["--mode", mode, *rest])
        return
    {"sa": run_sa, "prune": run_prune, "search": run_search}[mode](rest)


if __name__ == "__main__":
    main()
