#!/usr/bin/env python
"""Our L1 and FPGM channel pruning vs torch-pruning's own MagnitudePruner, at the same FLOPs budget.

One model is trained on scikit-learn's digits, then pruned three ways to MACs <= --flops of the original
(uniform ratio per group in all three, as torch-pruning's defaults do):
  ours-l1 / ours-fpgm   compression_tool.engine.strategies.ChannelPruner(...).prune_to_budget(flops=...)
  tp-magnitude          torch_pruning.pruner.MagnitudePruner with GroupMagnitudeImportance() and default
                        settings; its pruning_ratio is bisected the same way to meet the same budget
Each pruned model gets the same short fine-tune (train_module.finetune, same seed and batches); printed side by
side: MACs, params, top-1 before and after the fine-tune, CPU latency (median, models interleaved).

    python benchmarks/criteria_vs_tp.py [--model digits_net|resnet20] [--flops 0.5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from typing import Callable, Dict, List

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch_pruning as tp  # noqa: E402

import model_define as md  # noqa: E402
from compression_tool.data.digits import digits_loaders  # noqa: E402
from compression_tool.engine.cost import latency_ms, params_and_macs  # noqa: E402
from compression_tool.engine.groups import output_modules  # noqa: E402
from compression_tool.engine.strategies import ChannelPruner  # noqa: E402
from compression_tool.io.errors import cli_main  # noqa: E402
from patches.handlers import CUSTOM_PRUNERS  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402
from train_module.finetune import FinetuneConfig, finetune_classifier  # noqa: E402

# digits at the model's input size: digits_net 1x16x16, resnet20 3x32x32 (grey digits on three channels)
DATA = {"digits_net": (16, 1), "resnet20": (32, 3)}


def train_base(name: str, train, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = md.get_model(name)
    iters = epochs * len(train)
    cfg = FinetuneConfig(epochs=epochs, lr=0.05, warmup_iters=len(train), milestones=(int(iters * 0.7),),
                         seed=seed, progress=False)
    finetune_classifier(model, train, cfg)
    return model.eval()


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    """torch-pruning's MagnitudePruner, defaults, at ``ratio``; the output layer is ignored as ours is."""
    ignored = output_modules(model, x)
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(),
                                       pruning_ratio=ratio, ignored_layers=ignored,
                                       customized_pruners=dict(CUSTOM_PRUNERS))
    pruner.step()
    return model


def tp_to_budget(base: nn.Module, x: torch.Tensor, target: float, tolerance: float = 0.02) -> nn.Module:
    """Bisect MagnitudePruner's pruning_ratio until MACs <= target (within tolerance) of the original."""
    full = params_and_macs(base, x)["macs"]
    lo, hi, best = 0.0, 0.99, None
    for _ in range(20):
        mid = (lo + hi) / 2
        m = tp_prune(copy.deepcopy(base), x, mid)
        r = params_and_macs(m, x)["macs"] / full
        if r <= target:
            hi, best = mid, m
            if r >= target - tolerance:
                break
        else:
            lo = mid
    if best is None:
        best = tp_prune(copy.deepcopy(base), x, hi)
    return best


def ours_to_budget(base: nn.Module, x: torch.Tensor, criterion: str, target: float) -> nn.Module:
    model = copy.deepcopy(base)
    ChannelPruner(model, x, criterion).prune_to_budget(flops=target)
    return model


def interleaved_latency(models: List[nn.Module], x: torch.Tensor, rounds: int = 15) -> List[float]:
    """Median over rounds of ``compression_tool.engine.cost.latency_ms``, the models taking turns so load drifts
    hit all alike."""
    times: List[List[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            times[i].append(latency_ms(m, x, repeats=5, warmup=1))
    return [statistics.median(t) for t in times]


def run(name: str, target: float, base_epochs: int, ft_epochs: int, seed: int, batch: int) -> None:
    size, channels = DATA[name]
    train, test = digits_loaders(image_size=size, channels=channels, batch_size=64, seed=seed)
    x = next(iter(test))[0][:1]
    t0 = time.perf_counter()
    base = train_base(name, train, base_epochs, seed)
    print(f"{name} on digits {channels}x{size}x{size}: base trained in {time.perf_counter() - t0:.0f} s, "
          f"top1 {evaluate_classifier(base, test)['top1']:.2f}%")
    methods: Dict[str, Callable[[], nn.Module]] = {
        "ours-l1": lambda: ours_to_budget(base, x, "l1", target),
        "ours-fpgm": lambda: ours_to_budget(base, x, "fpgm", target),
        "tp-magnitude": lambda: tp_to_budget(base, x, target),
    }
    full = params_and_macs(base, x)
    rows, models = [], [base]
    for label, prune in methods.items():
        model = prune()
        cost = params_and_macs(model, x)
        before = evaluate_classifier(model, test)["top1"]
        cfg = FinetuneConfig(epochs=ft_epochs, lr=0.01, seed=seed, progress=False)
        finetune_classifier(model, train, cfg)
        after = evaluate_classifier(model.eval(), test)["top1"]
        rows.append((label, cost["macs"] / full["macs"], cost["params"] / full["params"], before, after))
        models.append(model)
    lat = interleaved_latency(models, next(iter(test))[0][:batch])
    print(f"budget: MACs <= {target:.0%}; fine-tune: {ft_epochs} epoch(s), lr 0.01, seed {seed}; "
          f"latency: batch {batch}, median of interleaved rounds")
    print(f"{'method':<14}{'MACs':>8}{'params':>8}{'top1 pruned':>13}{'top1 tuned':>12}{'latency ms':>12}")
    print(f"{'unpruned':<14}{1:>8.3f}{1:>8.3f}{'':>13}{evaluate_classifier(base, test)['top1']:>12.2f}{lat[0]:>12.3f}")
    for (label, macs, params, before, after), ms in zip(rows, lat[1:]):
        print(f"{label:<14}{macs:>8.3f}{params:>8.3f}{before:>13.2f}{after:>12.2f}{ms:>12.3f}")


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DATA), default="digits_net", help="model trained on digits")
    p.add_argument("--flops", type=float, default=0.5, help="MACs budget as a fraction of the unpruned model")
    p.add_argument("--base_epochs", type=int, default=8, help="epochs to train the unpruned model")
    p.add_argument("--finetune_epochs", type=int, default=1, help="epochs of the fine-tune after pruning")
    p.add_argument("--batch", type=int, default=64, help="batch size for the latency measurement")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, training and fine-tune")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    run(args.model, args.flops, args.base_epochs, args.finetune_epochs, args.seed, args.batch)


if __name__ == "__main__":
    main()
