#!/usr/bin/env python
"""Ratio search (GA, PSO, ABC, ACO) vs uniform pruning at the same FLOPs budget, on the embedded digits.

Digits are split three ways with a fixed seed: train (the base model, BN re-calibration batches, optional
fine-tuning), validation (the search fitness) and test (the numbers printed). For every algorithm it prints
the FLOPs kept (counted on the thinned model), the validation fitness and the test top-1 / loss after BN
re-calibration (and after a short fine-tune with --finetune_epochs), next to the uniform schedule's.

    python benchmarks/search_vs_uniform.py                       # digits_net, 50 % FLOPs
    python benchmarks/search_vs_uniform.py --model resnet20 --iterations 6
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List, Tuple

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from compression_tool.apps.search import search  # noqa: E402
from compression_tool.data.digits import digits_split  # noqa: E402
from compression_tool.engine.checkpoint import example_input  # noqa: E402
from compression_tool.engine.criteria import make_criterion  # noqa: E402
from compression_tool.engine.search import ALGORITHMS, make_searcher  # noqa: E402
from compression_tool.engine.search.fitness import PruningFitness  # noqa: E402
from compression_tool.io.errors import cli_main  # noqa: E402
from model_define import model_spec  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402
from train_module.finetune import FinetuneConfig, finetune_classifier  # noqa: E402


def splits(input_size, seed: int, n_val: int = 360):
    """(train, val, test) TensorDatasets of digits at the model's input size."""
    c, h, _ = input_size
    (xtr, ytr), (xte, yte) = digits_split(image_size=h, channels=c, seed=seed)
    perm = torch.from_numpy(np.random.RandomState(seed + 1).permutation(len(ytr)))
    val, tr = perm[:n_val], perm[n_val:]
    return TensorDataset(xtr[tr], ytr[tr]), TensorDataset(xtr[val], ytr[val]), TensorDataset(xte, yte)


def train(model, data: TensorDataset, epochs: int, lr: float, seed: int) -> None:
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    iters = epochs * len(loader)
    cfg = FinetuneConfig(epochs=epochs, lr=lr, milestones=(int(iters * 0.6), int(iters * 0.85)), seed=seed,
                         progress=False)
    finetune_classifier(model, loader, cfg)


def test_metrics(fitness: PruningFitness, pruned, test: DataLoader, train_set: TensorDataset,
                 finetune_epochs: int, seed: int) -> Dict[str, float]:
    model = fitness.build(pruned)                       # thinned + BN re-calibrated on training batches
    out = {f"test_{k}": v for k, v in evaluate_classifier(model, test).items() if k in ("top1", "loss")}
    if finetune_epochs:
        train(model, train_set, finetune_epochs, 0.01, seed)
        out["ft_top1"] = evaluate_classifier(model, test)["top1"]
    return out


def row(name: str, fitness: PruningFitness, pruned, seconds: float, evals: int, metrics: Dict[str, float]) -> str:
    exact = fitness.exact_costs(pruned)
    cand = fitness.evaluate_counts(pruned)
    ratios = " ".join(f"{r:.2f}" for r in fitness.ratios(pruned))
    ft = f"{metrics['ft_top1']:>9.2f}" if "ft_top1" in metrics else ""
    return (f"{name:<8}{exact['macs'] / fitness.full['macs']:>8.3f}{cand.metrics['top1']:>9.2f}"
            f"{metrics['test_top1']:>10.2f}{metrics['test_loss']:>10.4f}{ft}{evals:>7d}{seconds:>8.1f}s  [{ratios}]")


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits_net", help="classifier from the zoo (digits resized to its input)")
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the FLOPs to keep")
    p.add_argument("--algos", default=",".join(ALGORITHMS), help="comma-separated algorithms to run")
    p.add_argument("--criterion", default="l1", help="channel ranking inside each layer")
    p.add_argument("--population", type=int, default=10, help="candidates per iteration")
    p.add_argument("--iterations", type=int, default=10, help="search iterations")
    p.add_argument("--base_epochs", type=int, default=8, help="training epochs of the base model")
    p.add_argument("--finetune_epochs", type=int, default=2,
                   help="fine-tune each pruned model this long before the second test number (0 = skip)")
    p.add_argument("--calib_batches", type=int, default=4, help="training batches for BN re-calibration")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, training and the searches")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = model_spec(args.model)
    x = example_input(spec.input_size)
    train_set, val_set, test_set = splits(spec.input_size, args.seed)
    torch.manual_seed(args.seed)
    model = spec.build()
    t0 = time.perf_counter()
    train(model, train_set, args.base_epochs, 0.05, args.seed)
    val = DataLoader(val_set, batch_size=256)
    test = DataLoader(test_set, batch_size=256)
    base = evaluate_classifier(model, test)
    print(f"{args.model} on digits: train {len(train_set)} / val {len(val_set)} / test {len(test_set)}; base model "
          f"test top1 {base['top1']:.2f}% loss {base['loss']:.4f} ({time.perf_counter() - t0:.0f}s to train)")
    calib = [b for b, _ in DataLoader(train_set, batch_size=64)][: args.calib_batches]
    fitness = PruningFitness(model, x, make_criterion(args.criterion), lambda m: evaluate_classifier(m, val), calib,
                             args.flops, "macs")
    print(f"budget: {args.flops:.0%} of {fitness.full['macs'] / 1e6:.3f}M MACs, {fitness.n_groups} groups, "
          f"criterion {args.criterion}, population {args.population} x {args.iterations} iterations, "
          f"seed {args.seed}")
    ft = f"{'ft top1':>9}" if args.finetune_epochs else ""
    print(f"{'schedule':<8}{'FLOPs':>8}{'val top1':>9}{'test top1':>10}{'test loss':>10}{ft}{'evals':>7}{'time':>9}"
          "  ratios per group")
    t0 = time.perf_counter()
    uniform, _ = fitness.meet_exactly(fitness.repair(fitness.uniform_ratios()))
    seconds = time.perf_counter() - t0
    results: List[Tuple[str, Dict[str, float]]] = []
    m = test_metrics(fitness, uniform, test, train_set, args.finetune_epochs, args.seed)
    results.append(("uniform", m))
    print(row("uniform", fitness, uniform, seconds, 1, m), flush=True)
    for algo in [a.strip() for a in args.algos.split(",") if a.strip()]:
        t0 = time.perf_counter()
        searcher = make_searcher(algo, population=args.population, iterations=args.iterations, seed=args.seed,
                                 progress=False)
        pruned = search(fitness, searcher, args.flops).pruned
        seconds = time.perf_counter() - t0
        m = test_metrics(fitness, pruned, test, train_set, args.finetune_epochs, args.seed)
        results.append((algo, m))
        print(row(algo, fitness, pruned, seconds, searcher.trace.evaluations, m), flush=True)
    u = results[0][1]
    for name, m in results[1:]:
        print(f"{name} - uniform: test top1 {m['test_top1'] - u['test_top1']:+.2f} points, "
              f"test loss {m['test_loss'] - u['test_loss']:+.4f}"
              + (f", fine-tuned top1 {m['ft_top1'] - u['ft_top1']:+.2f} points" if "ft_top1" in m else ""))


if __name__ == "__main__":
    main()
