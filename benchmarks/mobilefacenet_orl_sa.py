#!/usr/bin/env python
"""Sensitivity analysis of the real MobileFaceNet on ORL verification pairs, a 1-point schedule, thinning.

    python benchmarks/mobilefacenet_orl_sa.py                      # l1, TPR@FPR=1e-2, 1-point budget
    python benchmarks/mobilefacenet_orl_sa.py --method fpgm --budget 2 --work_space /tmp/mfn_fpgm

The steps are the CLI chain, run in-process with the same arguments (the equivalent commands are printed):
  1. ``pruning.py --mode sa`` on ``mobilefacenet_casia/068.ckpt`` at 112x96 with ``--data orl:…`` (seeded balanced
     pairs of subjects s31..s40: 450 same + 450 different) and ``--metric tpr@fpr=1e-2``;
  2. ``auto_make_yaml.py`` with target = baseline - budget. TPR@FPR is a fraction, so 1 point is 0.01 (for lfw_acc,
     a percentage, it is 1.0). ``--rule strict`` keeps every layer at or above the target *on its own*; the
     layers' losses add up, so this "per-layer" schedule does not bound the thinned model's drop;
  3. a "verified" schedule for the same budget: the SA's (layer, level) moves ordered by their metric (running
     minimum over the levels, compression_tool.engine.budget.ordered_moves), and the longest prefix whose *thinned
     model* still
     meets the target on the same pairs, found by bisection (each probe thins a copy and evaluates it);
  4. ``pruning.py --mode prune`` with each schedule: thin, report, save.
Both thinned models and the baseline are then evaluated on pairs of subjects the schedules never saw (s3..s30) and
timed side by side. No fine-tuning: these are the numbers straight after thinning.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse  # noqa: E402
import copy  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Mapping, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from compression_tool.apps import workflow  # noqa: E402
from compression_tool.cli import (
    auto_make_yaml,  # noqa: E402
    pruning,  # noqa: E402
)
from compression_tool.engine import budget  # noqa: E402
from compression_tool.engine.checkpoint import example_input, load_model  # noqa: E402
from compression_tool.engine.cost import interleaved_latency  # noqa: E402
from compression_tool.engine.groups import GroupIndex  # noqa: E402
from compression_tool.engine.schedule import build_schedule, read_schedule, write_schedule  # noqa: E402
from compression_tool.engine.sensitivity import load_csv  # noqa: E402
from compression_tool.engine.thinning import thin  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from model_define.pretrained import MOBILEFACENET_FILE, shared_data_dir  # noqa: E402

INPUT_SIZE = "112,96"
FACE_INPUT = [3, 112, 96]
PERCENT_METRICS = {"lfw_acc", "lfw_std"}           # reported in percent; the others are fractions
SHOWN = ("tpr@fpr=1e-2", "tpr@fpr=1e-3", "lfw_acc", "auc", "eer")
Metrics = Dict[str, float]


def point(metric: str) -> float:
    """One percentage point in the metric's own units."""
    return 1.0 if metric in PERCENT_METRICS else 0.01


def common_args(args: argparse.Namespace) -> List[str]:
    return ["--model", "mobilefacenet", "--best_model_path", str(args.data / MOBILEFACENET_FILE),
            "--input_size", INPUT_SIZE, "--data", f"orl:{args.data / 'orl_faces'}", "--metric", args.metric,
            "--method", args.method, "--seed", str(args.seed), "--work_space", str(args.work_space)]


def show(tool: str, argv: Sequence[str]) -> None:
    print(f"$ python {tool} {' '.join(shlex.quote(a) for a in argv)}", flush=True)


# ------------------------------------------------------------------------------------------------ the chain

def sensitivity(args: argparse.Namespace) -> Path:
    argv = ["--mode", "sa", *common_args(args), "--sparsities", args.sparsities,
            "--output", str(args.work_space / f"mobilefacenet_{args.method}.csv")]
    show("pruning.py", argv)
    pruning.main(argv)
    return args.work_space / f"mobilefacenet_{args.method}.csv"


def per_layer_schedule(args: argparse.Namespace, csv_path: Path, target: float) -> Path:
    out = args.work_space / f"mobilefacenet_{args.method}_{target:g}.yaml"
    argv = [str(csv_path), f"{target:g}", "mobilefacenet", INPUT_SIZE, "--metric", args.metric, "--rule", args.rule,
            "--method", args.method, "--dataset", "orl", "--output", str(out), "--force"]
    show("pruning_analysis_tools/auto_make_yaml.py", argv)
    return auto_make_yaml.main(argv)


class ThinnedProbe:
    """Evaluate the model thinned to per-layer levels, on a copy, with pruning.py's own evaluation and criterion."""

    def __init__(self, args: argparse.Namespace):
        source = workflow.ModelSource(str(args.data / MOBILEFACENET_FILE), "mobilefacenet", input_size=INPUT_SIZE)
        self.model, meta = workflow.load_source(source)
        self.setup = workflow.eval_setup(workflow.EvalConfig(data=f"orl:{args.data / 'orl_faces'}",
                                                             metric=args.metric, seed=args.seed), meta)
        self.x = example_input(meta["input_size"])
        self.index = GroupIndex(self.model, self.x)
        crit = workflow.CriterionConfig(args.method, seed=args.seed, cache_dir=str(args.work_space / "rank_conv"))
        self.crit = workflow.prepared_criterion(crit, self.model, self.index, self.setup, "mobilefacenet")
        self.cache: Dict[Tuple, Metrics] = {}

    def __call__(self, levels: Mapping[str, float]) -> Metrics:
        counts = budget.prune_counts(self.index, levels)
        key = tuple(sorted(counts.items()))
        if key not in self.cache:
            clone = copy.deepcopy(self.model)
            index = GroupIndex(clone, self.x)
            thin(index, {name: self.crit.select(index, g, n)
                         for name, n in counts.items() for g in [index.find(name)]})
            self.cache[key] = dict(self.setup.evaluate(clone))
        return self.cache[key]


def verified_schedule(args: argparse.Namespace, csv_path: Path, target: float) -> Tuple[Path, Dict[str, float]]:
    """The longest prefix of the SA's ordered moves whose thinned model keeps ``metric >= target``."""
    _, data = load_csv(csv_path)
    moves = budget.ordered_moves(data, args.metric)
    probe = ThinnedProbe(args)
    bar = tqdm(desc="verified schedule", unit="probe", leave=False)

    def breaks(k: int) -> bool:
        bar.update(1)
        return probe(budget.schedule_after(moves, k, list(data)))[args.metric] < target

    k = len(moves) if not breaks(len(moves)) else budget.first_feasible(len(moves), breaks) - 1
    while k > 0 and breaks(k):      # bisection assumes a monotone metric; a noisy one is checked and stepped back
        k -= 1
    bar.close()
    levels = budget.schedule_after(moves, k, list(data))
    reached = probe(levels)[args.metric]
    print(f"verified schedule: {k} of {len(moves)} moves, {args.metric} {reached:.4f} >= {target:.4f} "
          f"({len(probe.cache)} thinned copies evaluated)")
    out = args.work_space / f"mobilefacenet_{args.method}_{target:g}_verified.yaml"
    header = (f"generated by benchmarks/mobilefacenet_orl_sa.py from {csv_path}\n"
              f"verified budget: thinned model {args.metric} {reached:.4f} >= target {target:g}; {k} of "
              f"{len(moves)} moves (compression_tool.engine.budget.ordered_moves)")
    write_schedule(build_schedule(levels, args.method, "mobilefacenet", "orl", FACE_INPUT), out, header, force=True)
    return out, levels


def prune(args: argparse.Namespace, yaml_path: Path, tag: str) -> Tuple[Path, Dict[str, Metrics]]:
    """pruning.py --mode prune; returns the checkpoint and its recorded before/after metrics."""
    out = args.work_space / "pruned_model" / f"mobilefacenet_{args.method}_{tag}.pth"
    argv = ["--mode", "prune", *common_args(args), "--yaml", str(yaml_path), "--save_model_pt", "--output", str(out),
            "--force"]
    show("pruning.py", argv)
    pruning.main(argv)
    return out, torch.load(out, map_location="cpu", weights_only=True)["meta"]["metrics"]


# ------------------------------------------------------------------------------------------------ reporting

def holdout_metrics(args: argparse.Namespace, models: Mapping[str, nn.Module]) -> Dict[str, Metrics]:
    """Metrics of each model on pairs of ``--holdout_subjects`` (identities the schedules never saw)."""
    from compression_tool.data.readers import load_pairset
    from test_module.verification import evaluate_pairs

    pairs = load_pairset(f"orl:{args.data / 'orl_faces'}", FACE_INPUT, seed=args.seed, subjects=args.holdout_subjects)
    print(f"hold-out pairs ({args.holdout_subjects}): {int(pairs.issame.sum())} same + "
          f"{int((~pairs.issame).sum())} different, {len(pairs.images)} images")
    return {name: dict(evaluate_pairs(m, pairs)) for name, m in models.items()}


def cell(key: str, value: float, base: Optional[float]) -> str:
    """One table cell: the value and, when ``base`` is given, its change (relative for costs, points otherwise)."""
    if key in ("params", "macs"):
        text, change = f"{value / 1e6:.3f}M", f"{100 * (value / base - 1):+.0f}%" if base else ""
    elif key.startswith("latency"):
        text, change = f"{value:.1f}ms", f"{100 * (value / base - 1):+.0f}%" if base else ""
    else:
        text, change = f"{value:.4f}", f"{(value - base) / point(key):+.1f}pt" if base is not None else ""
    return f"{text:>10}{change:>8}"


def summary_lines(columns: Mapping[str, Mapping[str, Metrics]], base: str) -> List[str]:
    """One column per model; ``columns[model][section]`` holds that section's numbers; changes are vs ``base``."""
    first = columns[base]
    lines = [f"{'':<30}" + "".join(f"{n:>18}" for n in columns)]
    for section, values in first.items():
        for k in values:
            lines.append(f"{k + ' ' + section:<30}" + "".join(
                cell(k, columns[n][section][k], None if n == base else values[k]) for n in columns))
    return lines


def read_levels(yaml_path: Path) -> Dict[str, float]:
    """Per-weight levels of a schedule file, in its order."""
    return {w: s for p in read_schedule(yaml_path).pruners for w, s in p.sparsities.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="folder holding mobilefacenet_casia/068.ckpt and orl_faces/ (default ../shared/data)")
    p.add_argument("--method", default="l1", help="pruning criterion (l1, l2, fpgm, hrank, …)")
    p.add_argument("--metric", default="tpr@fpr=1e-2", help="verification metric the SA and the schedules target")
    p.add_argument("--budget", type=float, default=1.0, help="allowed drop of --metric in percentage points")
    p.add_argument("--rule", choices=("strict", "closest"), default="strict", help="auto_make_yaml's rule")
    p.add_argument("--sparsities", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7",
                   help="SA levels (pruning.py --sparsities syntax)")
    p.add_argument("--holdout_subjects", default="s3..s30", help="ORL subjects for the hold-out verification check")
    p.add_argument("--work_space", type=Path, default=Path("/tmp/mobilefacenet_orl_sa"),
                   help="CSV, schedules, keep-arrays and the thinned checkpoints go here (the SA CSV resumes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ORL pair lists")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="latency: interleaved timing rounds over the models")
    p.add_argument("--latency_batch", type=int, default=32, help="latency: batch size timed besides batch 1")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.budget <= 0:
        raise UserError(f"--budget: expected a positive number of points, got {args.budget}")
    for need in (args.data / MOBILEFACENET_FILE, args.data / "orl_faces"):
        if not need.exists():
            raise UserError(f"--data {args.data}: {need.name} not found")
    if min(args.threads, args.rounds, args.latency_batch) < 1:
        raise UserError("--threads, --rounds and --latency_batch must be positive")


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    csv_path = sensitivity(args)
    t_sa = time.perf_counter() - t0
    _, data = load_csv(csv_path)
    base = auto_make_yaml.baseline(data, args.metric)
    target = round(base - args.budget * point(args.metric), 6)
    schedules = OrderedDict([("per-layer", per_layer_schedule(args, csv_path, target)),
                             ("verified", verified_schedule(args, csv_path, target)[0])])
    recorded, models = {}, OrderedDict(baseline=load_model(args.data / MOBILEFACENET_FILE, "mobilefacenet",
                                                           input_size=FACE_INPUT)[0])
    for tag, yaml_path in schedules.items():
        ckpt, recorded[tag] = prune(args, yaml_path, tag.replace("-", "_"))
        models[tag] = load_model(ckpt)[0]
    holdout = holdout_metrics(args, models)
    latency = {b: dict(zip(models, interleaved_latency(list(models.values()), torch.randn(b, *FACE_INPUT),
                                                       rounds=args.rounds, reps=5 if b == 1 else 2)))
               for b in (1, args.latency_batch)}
    sa_pairs = OrderedDict(baseline=recorded["per-layer"]["before"], **{t: recorded[t]["after"] for t in schedules})
    columns = OrderedDict((name, OrderedDict([
        ("cost", {"params": sa_pairs[name]["params"], "macs": sa_pairs[name]["macs"],
                  **{f"latency_b{b}": latency[b][name] for b in latency}}),
        ("s31..s40", {k: sa_pairs[name][k] for k in SHOWN}),
        (args.holdout_subjects, {k: holdout[name][k] for k in SHOWN})])) for name in models)
    print(f"\nMobileFaceNet 068.ckpt, 112x96, ORL pairs (s31..s40: the SA's; {args.holdout_subjects}: unseen), "
          f"criterion {args.method}, no fine-tuning; {args.metric} baseline {base:.4f}, target {target:.4f} "
          f"({args.budget:g} point); schedules:")
    for tag, yaml_path in schedules.items():
        print(f"  {tag} ({yaml_path.name}): " + ", ".join(
            f"{g.replace('.weight', '')}={s:g}" for g, s in read_levels(yaml_path).items()))
    print("\n".join(summary_lines(columns, "baseline")))
    print(f"SA {t_sa:.0f}s, total {time.perf_counter() - t0:.0f}s, torch threads {torch.get_num_threads()}; "
          f"latency: median forward of the models timed side by side ({args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
