"""``pruning.py --mode search``: per-group pruning ratios under a FLOPs/params budget -> schedule YAML.

    python pruning.py --mode search --algo abc --flops 0.5 --model digits_net \
        --best_model_path work_space/checkpoints/digits_net.pth

Prints ``best_candidates_prune=[…]`` (ratio per prunable group, first layer to last) and writes the
schedule to ``yaml_file/<model>_search_<algo>_<flops>.yaml``, ready for ``pruning.py --mode prune --yaml``.
"""
from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch.nn as nn

from common.errors import UserError
from common.io import check_writable
from core.checkpoint_io import example_input
from core.schedule import build_schedule, write_schedule
from core.search import ALGORITHMS, Searcher, make_searcher
from core.search.fitness import Candidate, PruningFitness
from core.workflow import criterion_name, load_for_args, prepared_criterion, setup_for

log = logging.getLogger(__name__)

DEFAULT_EVAL_BATCHES = 4      # the held-out subset the fitness evaluates on (x --batch_size images)


def add_search_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``--mode search`` (pruning.py adds them to its parser)."""
    g = p.add_argument_group("search (--mode search)")
    g.add_argument("--algo", choices=list(ALGORITHMS), default="abc",
                   help="search algorithm: genetic (ga), particle swarm (pso), artificial bee colony (abc), "
                        "ant colony (aco)")
    g.add_argument("--flops", type=float, default=None,
                   help="budget: fraction of the unpruned FLOPs (MACs) to keep, e.g. 0.5")
    g.add_argument("--params", type=float, default=None, help="budget: fraction of the unpruned parameters to keep")
    g.add_argument("--population", type=int, default=10, help="candidates per iteration (ABC: food sources)")
    g.add_argument("--iterations", type=int, default=10, help="generations / swarm moves / bee cycles / ant tours")
    g.add_argument("--search_batches", type=int, default=4,
                   help="batches used to re-calibrate BatchNorm statistics of each candidate before evaluating it "
                        f"(the fitness evaluates --eval_batches batches, default {DEFAULT_EVAL_BATCHES})")
    g.add_argument("--max_ratio", type=float, default=0.9, help="upper bound of every group's pruning ratio")


def budget_of(args: argparse.Namespace) -> Tuple[str, float, str]:
    """(resource, fraction, file tag) from --flops / --params (exactly one)."""
    if (args.flops is None) == (args.params is None):
        raise UserError("--mode search needs exactly one budget: --flops F or --params F (fraction to keep)")
    if args.flops is not None:
        return "macs", args.flops, f"{args.flops:g}"
    return "params", args.params, f"params{args.params:g}"


def schedule_ratio(pruned: int, channels: int) -> float:
    """A 6-digit ratio that ``n_prune`` (floor) maps back to exactly ``pruned`` channels."""
    r = round(pruned / channels, 6)
    while int(r * channels + 1e-9) < pruned:
        r = round(r + 1e-6, 6)
    return r


def describe(name: str, c: Candidate, exact: Dict[str, float], full: Dict[str, float]) -> str:
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in (c.metrics or {}).items())
    return (f"{name}: FLOPs = {exact['macs'] / 1e6:.3f}M ({full['macs'] / exact['macs']:.2f}X | "
            f"{exact['macs'] / full['macs']:.1%} kept) | PARAMs = {exact['params'] / 1e6:.3f}M "
            f"({full['params'] / exact['params']:.2f}X | {exact['params'] / full['params']:.1%} kept) | "
            f"score {c.score:.4g} | {metrics}")


@dataclass
class Outcome:
    """A finished search: channel counts, exact costs and evaluations of the best and the uniform schedule."""
    fitness: PruningFitness
    pruned: np.ndarray
    exact: Dict[str, float]
    best: Candidate
    uniform_exact: Dict[str, float]
    uniform: Candidate

    def ratios(self) -> List[float]:
        return [schedule_ratio(int(n), g.channels) for n, g in zip(self.pruned, self.fitness.groups)]

    def lines(self, algo: str) -> List[str]:
        full = self.fitness.full
        return [f"best_candidates_prune={self.ratios()}", describe(f"{algo} search", self.best, self.exact, full),
                describe("uniform (same budget)", self.uniform, self.uniform_exact, full)]


def search(fitness: PruningFitness, searcher: Searcher, fraction: float) -> Outcome:
    """Run the searcher, then meet the budget on the really thinned model; evaluate the uniform schedule too."""
    pruned, exact = fitness.meet_exactly(fitness.repair(searcher.search(fitness, fitness.n_groups, fraction)))
    uniform, uniform_exact = fitness.meet_exactly(fitness.repair(fitness.uniform_ratios()))
    return Outcome(fitness, pruned, exact, fitness.evaluate_counts(pruned), uniform_exact,
                   fitness.evaluate_counts(uniform))


def run_search(args: argparse.Namespace) -> Path:
    resource, fraction, tag = budget_of(args)
    if args.search_batches <= 0:
        raise UserError("--search_batches must be positive")
    model, meta = load_for_args(args)
    name = meta["model"]
    out = Path(args.output or Path("yaml_file") / f"{name}_search_{args.algo}_{tag}.yaml")
    check_writable(out, args.force)                     # fail before the search, not after
    sargs = copy.copy(args)
    sargs.eval_batches = args.eval_batches or DEFAULT_EVAL_BATCHES
    setup = setup_for(sargs, meta)
    method = criterion_name(args)
    fitness = build_fitness(model, example_input(meta["input_size"]), method, setup, sargs, resource, fraction, name)
    searcher = make_searcher(args.algo, population=args.population, iterations=args.iterations, seed=args.seed,
                             high=args.max_ratio)
    log.info("searching %d groups with %s (population %d, %d iterations) for %s <= %.3g of the model",
             fitness.n_groups, args.algo, args.population, args.iterations, resource, fraction)
    outcome = search(fitness, searcher, fraction)
    lines = outcome.lines(args.algo)
    print("\n".join(lines))
    doc = build_schedule({g.name: r for g, r in zip(fitness.groups, outcome.ratios())}, method, name, setup.dataset,
                         meta["input_size"])
    flag = "flops" if resource == "macs" else "params"
    header = (f"generated by pruning.py --mode search --algo {args.algo} --{flag} {fraction:g} --population "
              f"{args.population} --iterations {args.iterations} --seed {args.seed}\n"
              f"criterion {method}; fitness on {sargs.eval_batches} batches of {args.data} after BN re-calibration "
              f"on {args.search_batches} batches\n" + "\n".join(lines))
    write_schedule(doc, out, header, force=True)
    print(f"schedule: {out}")
    return out


def build_fitness(model: nn.Module, x, method: str, setup, args: argparse.Namespace, resource: str,
                  fraction: float, tag: str) -> PruningFitness:
    from core.groups import GroupIndex

    index = GroupIndex(model, x, ignore=args.ignore)
    crit = prepared_criterion(method, model, index, setup, args, tag)
    calib: List = [b for _, b in zip(range(args.search_batches), setup.batches())]
    return PruningFitness(model, x, crit, setup.evaluate, calib, fraction, resource, high=args.max_ratio,
                          ignore=args.ignore, index=index)
