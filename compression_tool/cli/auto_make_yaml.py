"""Sensitivity CSV + a target -> a Distiller-style pruning schedule (YAML).

Modes:
  per-layer rule (default; the seed tool's):  auto_make_yaml.py CSV TARGET_ACC MODEL INPUT_SIZE [--rule closest|strict]
      closest: per layer, the level whose metric is closest to the target, then the highest sparsity at least as
      good (Distiller users' rule). strict: the highest sparsity whose metric is >= target. Layers are judged
      one at a time: the composed model usually lands below the target.
  budget:  auto_make_yaml.py CSV --flops 0.7 --model M --best_model_path CKPT [--input_size …]
      least-sensitive layers first, one level at a time, until the thinned model keeps at most 70 % of the MACs
      (every budget flag of the project is the fraction KEPT).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from compression_tool.cli.common import HELP_FORMAT
from compression_tool.data.spec import parse_input_size
from compression_tool.engine.schedule import (
    LOWER_IS_BETTER,
    baseline,
    build_schedule,
    choose_sparsities,
    write_schedule,
)
from compression_tool.engine.sensitivity import load_csv
from compression_tool.io.errors import UserError, cli_main
from model_define import model_spec

POSITIONAL = ["csv", "target", "model", "input_size"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="auto_make_yaml.py", description=__doc__, formatter_class=HELP_FORMAT)
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
    p.add_argument("--latency", type=float, default=None,
                   help="budget mode: fraction of the measured latency to keep, e.g. 0.5, on --runtime with "
                        "--threads and --batch (per-layer tables cached in --latency_dir; needs --best_model_path)")
    p.add_argument("--runtime", choices=("torch", "ort"), default="torch",
                   help="latency budget: the runtime the model ships on (PyTorch CPU or ONNX Runtime CPU)")
    p.add_argument("--threads", type=int, default=1, help="latency budget: intra-op threads")
    p.add_argument("--batch", type=int, default=1, help="latency budget: batch size")
    p.add_argument("--latency_dir", default="work_space/latency",
                   help="latency budget: per-machine per-layer latency tables")
    p.add_argument("--round_to", type=int, default=1,
                   help="budget mode: every group keeps a multiple of N channels (rounded up); the schedule then "
                        "holds each group's exact ratio")
    p.add_argument("--method", default="l1", help="criterion written as the pruner class (l1, l2, fpgm, hrank, …)")
    p.add_argument("--dataset", default="digits", help="dataset name recorded in the schedule")
    p.add_argument("--output", default=None,
                   help="schedule path (default yaml_file/<model>_<target>.yaml, or <model>_flops-<kept %%>.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing schedule")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
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
    return args


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


def budget(args: argparse.Namespace) -> Path:
    from compression_tool.apps.workflow import ModelSource, input_size_of, load_source
    from compression_tool.engine.budget import schedule_for_budget, write_budget_schedule
    from compression_tool.engine.checkpoint import example_input

    source = ModelSource(args.best_model_path, args.model, args.from_data_parallel, args.input_size,
                         args.trust_checkpoint)
    kind, keep = ("flops", args.flops) if args.flops is not None else ("latency", args.latency)
    out = Path(args.output or Path("yaml_file") / f"{args.model}_{kind}-{round(100 * keep)}.yaml")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    input_size_of(source)
    model, meta = load_source(source)
    size = meta["input_size"]
    latency = None
    if args.latency is not None:
        from compression_tool.engine.latency import LatencyModel, LatencyTable

        latency = LatencyModel(model, example_input(size), LatencyTable(args.runtime, args.threads, args.batch,
                                                                         args.latency_dir))
        print(f"latency of the unpruned model on {args.runtime}, {args.threads} thread(s), batch {args.batch}: "
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


@cli_main
def main(argv: Optional[List[str]] = None) -> Path:
    args = parse_args(argv)
    out = budget(args) if args.flops is not None or args.latency is not None else per_layer(args)
    print(f"schedule: {out}")
    return out


if __name__ == "__main__":
    main()
