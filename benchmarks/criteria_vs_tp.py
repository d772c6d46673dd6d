#!/usr/bin/env python
"""Our L1 / L2 / FPGM channel pruning — each group reduction side by side — vs torch-pruning's MagnitudePruner.

One model is pruned several ways to MACs <= --flops of the original (one uniform ratio over every prunable group,
as torch-pruning's defaults do, bisected on the thinned model's MACs):
  l1:first, l1:mean, fpgm:max …  compression_tool.engine.strategies.ChannelPruner(model, x, criterion,
                                 reduction=...).prune_to_budget(flops=...); ``first`` ranks by the leading layer's
                                 filters only (Distiller), mean/sum/max by every coupled slice (docs/criteria.md)
  tp                             torch_pruning.pruner.MagnitudePruner with GroupMagnitudeImportance() and default
                                 settings; its pruning_ratio is bisected the same way to meet the same budget
Each pruned model gets the same short fine-tune (same seed and batches); printed side by side: MACs, params, top-1
before and after the fine-tune, CPU latency (median, models interleaved).

Models: ``digits_net`` / ``resnet20`` trained here on scikit-learn's digits (--base_epochs); ``cifar_resnet20`` /
``cifar_resnet56``: the pretrained CIFAR-10 ResNets (../shared/data/resnet_cifar10, ``module.`` keys), fine-tuned on
a seeded 5,000-image half of the CIFAR-10 test JPEGs (random crop + flip, SGD momentum 0.9, wd 5e-4, lr /10 at 50 %
and 75 %) and evaluated on the other half (the split of benchmarks/resnet56_published.py).

    python benchmarks/criteria_vs_tp.py --model digits_net
    python benchmarks/criteria_vs_tp.py --model cifar_resnet20 --methods l1:first l1:mean l1:max tp
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from pathlib import Path
from typing import List

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch_pruning as tp  # noqa: E402
from resnet56_published import CropFlip, finetune_config, load_data  # noqa: E402  (a sibling script)
from torch.utils.data import DataLoader  # noqa: E402

import model_define as md  # noqa: E402
from compression_tool.data.digits import digits_loaders  # noqa: E402
from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.engine.cost import latency_ms, params_and_macs  # noqa: E402
from compression_tool.engine.groups import output_modules  # noqa: E402
from compression_tool.engine.strategies import ChannelPruner  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from model_define.pretrained import cifar_resnet_path, shared_data_dir  # noqa: E402
from patches.handlers import CUSTOM_PRUNERS  # noqa: E402
from test_module.classification import evaluate_classifier  # noqa: E402
from test_module.reference import top1  # noqa: E402
from train_module.finetune import FinetuneConfig, finetune_classifier  # noqa: E402

# digits at the model's input size: digits_net 1x16x16, resnet20 3x32x32 (grey digits on three channels)
DATA = {"digits_net": (16, 1), "resnet20": (32, 3)}
CIFAR = {"cifar_resnet20": 20, "cifar_resnet56": 56}
DEFAULT_METHODS = ("l1:first", "l1:mean", "l1:sum", "l1:max", "l2:first", "l2:mean", "fpgm:first", "fpgm:mean",
                   "fpgm:max", "tp")


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


def ours_to_budget(base: nn.Module, x: torch.Tensor, method: str, target: float) -> nn.Module:
    """``method`` is ``criterion:reduction`` (e.g. ``l1:mean``)."""
    criterion, _, reduction = method.partition(":")
    model = copy.deepcopy(base)
    ChannelPruner(model, x, criterion, reduction=reduction or "first").prune_to_budget(flops=target)
    return model


def interleaved_latency(models: List[nn.Module], x: torch.Tensor, rounds: int = 15) -> List[float]:
    """Median over rounds of ``compression_tool.engine.cost.latency_ms``, the models taking turns so load drifts
    hit all alike."""
    times: List[List[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            times[i].append(latency_ms(m, x, repeats=5, warmup=1))
    return [statistics.median(t) for t in times]


class Task:
    """A base model, its evaluation and its fine-tune."""

    def __init__(self, args: argparse.Namespace):
        self.seed, self.ft_epochs = args.seed, args.finetune_epochs
        t0 = time.perf_counter()
        if args.model in CIFAR:
            self.base, _ = load_model(cifar_resnet_path(CIFAR[args.model], args.data), args.model[len("cifar_"):],
                                      from_data_parallel=True)
            d = load_data(args.data, args.seed)
            self.x_ft, self.y_ft, self.x_ev, self.y_ev = d["x_ft"], d["y_ft"], d["x_ev"], d["y_ev"]
            self.x = self.x_ev[:1]
            self.what = (f"{args.model} pretrained, CIFAR-10 JPEGs {len(self.y_ft)} fine-tune / {len(self.y_ev)} eval "
                         f"(seed {args.seed}), fine-tune {self.ft_epochs} epoch(s) lr {args.lr}")
            self.lr = args.lr
        else:
            size, channels = DATA[args.model]
            self.train, self.test = digits_loaders(image_size=size, channels=channels, batch_size=64, seed=args.seed)
            self.x = next(iter(self.test))[0][:1]
            self.base = train_base(args.model, self.train, args.base_epochs, args.seed)
            self.what = (f"{args.model} on digits {channels}x{size}x{size} (base {args.base_epochs} epochs), "
                         f"fine-tune {self.ft_epochs} epoch(s) lr 0.01")
        self.base.eval()
        self.what += f"; base ready in {time.perf_counter() - t0:.0f} s"

    def top1(self, model: nn.Module) -> float:
        model.eval()
        if hasattr(self, "x_ev"):
            return top1(model, self.x_ev, self.y_ev)
        return evaluate_classifier(model, self.test)["top1"]

    def finetune(self, model: nn.Module) -> None:
        if self.ft_epochs <= 0:
            return
        if hasattr(self, "x_ft"):
            loader = DataLoader(CropFlip(self.x_ft, self.y_ft), batch_size=128, shuffle=True,
                                generator=torch.Generator().manual_seed(self.seed))
            cfg = finetune_config(self.ft_epochs, len(loader), self.lr, self.seed)
            cfg.progress = False
            finetune_classifier(model, loader, cfg)
        else:
            finetune_classifier(model, self.train, FinetuneConfig(epochs=self.ft_epochs, lr=0.01, seed=self.seed,
                                                                  progress=False))

    def latency_input(self, batch: int) -> torch.Tensor:
        return self.x_ev[:batch] if hasattr(self, "x_ev") else next(iter(self.test))[0][:batch]


def run(args: argparse.Namespace) -> None:
    task = Task(args)
    base_top1 = task.top1(task.base)
    print(task.what)
    print(f"unpruned top1 {base_top1:.2f}%", flush=True)
    full = params_and_macs(task.base, task.x)
    rows, models = [], [task.base]
    for method in args.methods:
        t0 = time.perf_counter()
        model = tp_to_budget(task.base, task.x, args.flops) if method == "tp" else \
            ours_to_budget(task.base, task.x, method, args.flops)
        cost = params_and_macs(model, task.x)
        before = task.top1(model)
        task.finetune(model)
        after = task.top1(model)
        rows.append((method, cost["macs"] / full["macs"], cost["params"] / full["params"], before, after))
        models.append(model.eval())
        print(f"{method}: MACs {cost['macs'] / full['macs']:.3f}, top1 pruned {before:.2f} -> tuned {after:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    lat = interleaved_latency(models, task.latency_input(args.batch), rounds=args.rounds)
    print(f"\nbudget: MACs <= {args.flops:.0%}, one uniform ratio over all groups; {task.what}; "
          f"latency: batch {args.batch}, median of interleaved rounds")
    print(f"{'method':<12}{'MACs':>8}{'params':>8}{'top1 pruned':>13}{'top1 tuned':>12}{'latency ms':>12}")
    print(f"{'unpruned':<12}{1:>8.3f}{1:>8.3f}{'':>13}{base_top1:>12.2f}{lat[0]:>12.3f}")
    for (label, macs, params, before, after), ms in zip(rows, lat[1:]):
        print(f"{label:<12}{macs:>8.3f}{params:>8.3f}{before:>13.2f}{after:>12.2f}{ms:>12.3f}")


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DATA) + sorted(CIFAR), default="digits_net",
                   help="digits_net / resnet20: trained here on digits; cifar_resnet20 / 56: pretrained on CIFAR-10")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="criterion:reduction (l1|l2|fpgm : first|mean|sum|max) or tp (torch-pruning)")
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="CIFAR models: folder holding cifar10_test/ and resnet_cifar10/ (default ../shared/data)")
    p.add_argument("--lr", type=float, default=0.01, help="CIFAR models: fine-tune learning rate")
    p.add_argument("--rounds", type=int, default=15, help="latency: interleaved timing rounds")
    p.add_argument("--flops", type=float, default=0.5, help="MACs budget as a fraction of the unpruned model")
    p.add_argument("--base_epochs", type=int, default=8, help="epochs to train the unpruned model")
    p.add_argument("--finetune_epochs", type=int, default=1, help="epochs of the fine-tune after pruning")
    p.add_argument("--batch", type=int, default=64, help="batch size for the latency measurement")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, training and fine-tune")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    for m in args.methods:
        crit, _, red = m.partition(":")
        if m != "tp" and (crit not in ("l1", "l2", "fpgm") or red not in ("first", "mean", "sum", "max")):
            raise UserError(f"--methods: {m!r} is not criterion:reduction (l1|l2|fpgm : first|mean|sum|max) or tp")
    run(args)


if __name__ == "__main__":
    main()
