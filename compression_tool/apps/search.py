"""``pruning.py --mode search``: per-group pruning ratios under a FLOPs/params budget -> schedule YAML.

    python pruning.py --mode search --algo abc --flops 0.5 --model digits_net \
        --best_model_path work_space/checkpoints/digits_net.pth

Prints ``best_candidates_prune=[…]`` (ratio per prunable group, first layer to last) and writes the
schedule to ``yaml_file/<model>_search_<algo>_<flops>.yaml``, ready for ``pruning.py --mode prune --yaml``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn

from compression_tool.apps.worker_pool import check_pool_args
from compression_tool.apps.workflow import (
    CriterionConfig,
    ModelSource,
    eval_setup,
    load_source,
    prepared_criterion,
    shared_eval,
)
from compression_tool.engine.checkpoint import example_input
from compression_tool.engine.device import resolve_device
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.schedule import build_schedule, write_schedule
from compression_tool.engine.search import Searcher, make_searcher
from compression_tool.engine.search.fitness import Candidate, PruningFitness
from compression_tool.io.errors import UserError
from compression_tool.io.files import check_writable
from test_module.setup import EvalConfig, EvalSetup

log = logging.getLogger(__name__)

DEFAULT_EVAL_BATCHES = 4      # the held-out subset the fitness evaluates on (x --batch_size images)


@dataclass
class SearchConfig:
    source: ModelSource
    resource: str = "macs"                          # the budget: "macs" (--flops), "params", "latency_ms" (--latency)
    fraction: float = 0.5                           # fraction of the unpruned resource to keep
    algo: str = "abc"
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(eval_batches=DEFAULT_EVAL_BATCHES))
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    population: int = 10
    iterations: int = 10
    search_batches: int = 4                         # batches for each candidate's BN re-calibration
    max_ratio: float = 0.9
    ignore: Sequence[str] = ()
    round_to: int = 1                               # kept widths are multiples of this (hardware-friendly)
    latency_runtime: str = "torch"                  # --latency: the runtime, threads, batch the latency is measured on
    latency_threads: int = 1
    latency_batch: int = 1
    latency_dir: str = "work_space/latency"
    output: Optional[str] = None                    # default yaml_file/<model>_search_<algo>_<budget>.yaml
    force: bool = False
    seed: int = 0
    workers: int = 1                                # > 1: populations evaluated by N workers (apps.search_pool)
    pool: str = "process"                           # workers' backend: process (local) | ray
    ray_address: Optional[str] = None               # --pool ray: join this cluster (else RAY_ADDRESS, else local)


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
            + (f"latency = {exact['latency_ms']:.3f} ms predicted ({exact['latency_ms'] / full['latency_ms']:.1%} "
               "kept) | " if "latency_ms" in exact else "")
            + f"score {c.score:.4g} | {metrics}")


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


def run_search(cfg: SearchConfig) -> Tuple[Path, List[str]]:
    """Search per-group ratios, write the schedule; returns its path and the lines describing the outcome."""
    device = resolve_device(cfg.eval.device)
    if cfg.resource not in ("macs", "params", "latency_ms"):
        raise UserError(f"budget resource {cfg.resource!r}: expected macs, params or latency_ms")
    flag = {"macs": "flops", "params": "params", "latency_ms": "latency"}[cfg.resource]
    if not 0.0 < cfg.fraction <= 1.0:
        raise UserError(f"--{flag} {cfg.fraction}: expected the "
                        "fraction to keep, in (0, 1]")
    if cfg.search_batches <= 0:
        raise UserError("--search_batches must be positive")
    if not 0.0 < cfg.max_ratio <= 1.0:   # also NaN
        raise UserError(f"--max_ratio: expected the largest fraction of a group's channels to remove, in (0, 1], "
                        f"got {cfg.max_ratio}")
    for name, v in (("--population", cfg.population), ("--iterations", cfg.iterations)):
        if v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    check_pool_args(cfg.workers, cfg.pool)
    model, meta = load_source(cfg.source)
    model.to(device)
    name = meta["model"]
    tag = f"{cfg.fraction:g}" if cfg.resource == "macs" else f"{flag}{cfg.fraction:g}"
    out = Path(cfg.output or Path("yaml_file") / f"{name}_search_{cfg.algo}_{tag}.yaml")
    check_writable(out, cfg.force)                     # fail before the search, not after
    setup = eval_setup(cfg.eval, meta)
    method = cfg.criterion.name
    fitness = build_fitness(model, example_input(meta["input_size"]).to(device), setup, cfg, name)
    searcher = make_searcher(cfg.algo, population=cfg.population, iterations=cfg.iterations, seed=cfg.seed,
                             high=cfg.max_ratio)
    log.info("searching %d groups with %s (population %d, %d iterations) for %s <= %.3g of the model",
             fitness.n_groups, cfg.algo, cfg.population, cfg.iterations, cfg.resource, cfg.fraction)
    if cfg.workers > 1:
        from compression_tool.apps.search_pool import PlanPool

        fitness.pool = PlanPool(replace(cfg, eval=shared_eval(cfg.eval, setup)), cfg.workers, cfg.pool)
    try:
        outcome = search(fitness, searcher, cfg.fraction)
    finally:
        if fitness.pool is not None:
            fitness.pool.close()
    lines = outcome.lines(cfg.algo)
    doc = build_schedule({g.name: r for g, r in zip(fitness.groups, outcome.ratios())}, method, name, setup.dataset,
                         meta["input_size"])
    header = (f"generated by pruning.py --mode search --algo {cfg.algo} --{flag} {cfg.fraction:g} --population "
              f"{cfg.population} --iterations {cfg.iterations} --seed {cfg.seed}"
              + (f" --round_to {cfg.round_to}" if cfg.round_to > 1 else "") + "\n"
              f"criterion {method}; fitness on {cfg.eval.eval_batches} batches of {cfg.eval.data} after BN "
              f"re-calibration on {cfg.search_batches} batches\n" + "\n".join(lines))
    write_schedule(doc, out, header, force=True)
    return out, lines


def calibration_batches(setup: EvalSetup, n: int) -> List:
    """The first ``n`` batches of the evaluation data: each candidate's BN re-calibration set."""
    return [b for _, b in zip(range(n), setup.batches())]


def build_fitness(model: nn.Module, x, setup: EvalSetup, cfg: SearchConfig, tag: str) -> PruningFitness:
    index = GroupIndex(model, x, ignore=cfg.ignore, round_to=cfg.round_to)
    crit = prepared_criterion(cfg.criterion, model, index, setup, tag)
    calib = calibration_batches(setup, cfg.search_batches)
    latency = None
    if cfg.resource == "latency_ms":
        from compression_tool.engine.latency import LatencyModel, LatencyTable

        latency = LatencyModel(model, x, LatencyTable(cfg.latency_runtime, cfg.latency_threads, cfg.latency_batch,
                                                      cfg.latency_dir))
    return PruningFitness(model, x, crit, setup.evaluate, calib, cfg.fraction, cfg.resource, high=cfg.max_ratio,
                          ignore=cfg.ignore, index=index, latency=latency)
