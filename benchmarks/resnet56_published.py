#!/usr/bin/env python
"""The published ResNet-56 / CIFAR-10 comparison at 50 % FLOPs: L1, FPGM and HRank, each + the same fine-tune.

    python benchmarks/resnet56_published.py                        # all three methods, 3 epochs each
    python benchmarks/resnet56_published.py --methods hrank_act --output /tmp/r56_hrank_act.json

The pretrained ResNet-56 (../shared/data/resnet_cifar10) is pruned to half its MACs with one uniform ratio over
the prunable groups (``--scope inner``: each block's first conv, the usual CIFAR-ResNet setting; ``all`` adds
the residual streams through the zero-pad shortcut). The ratio is found by bisection on the MACs counted on the
thinned model (``compression_tool.engine.strategies.ChannelPruner.prune_to_budget``, within 2 % below the budget), so
every method
removes the same number of channels per layer; only *which* channels differ.
Each pruned model gets the same short fine-tune (SGD, momentum 0.9, wd 5e-4, lr ``--lr`` divided by 10 at 50 %
and 75 % of the iterations, batch 128, random crop + flip) on a seeded 5,000-image half of the CIFAR-10 test
JPEGs and is evaluated on the other 5,000. HRank's feature-map ranks come from the fine-tune half. A criterion that
scores every channel of a group alike cannot rank it (the group is then cut in channel order); the run warns and
the JSON records ``tied_groups``. The toolkit's ``hrank`` ranks the maps after BN + ReLU, as the paper does (until
issue 11 it ranked the raw conv output, which has full rank for every channel here, so all its groups tied);
``--methods hrank_act`` is kept as another name for it.

Our numbers are not the papers' protocol (those fine-tune on the 50,000 training images for hundreds of epochs and
test on the lossless test set); the published drops are printed next to ours for orientation only.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Dict, List, Optional, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from compression_tool.data.augment import CropFlip  # noqa: E402,F401  (re-exported to the sibling scripts)
from compression_tool.data.imagefolder import load_image_folder  # noqa: E402
from compression_tool.data.normalise import RGB_MEAN, RGB_STD  # noqa: E402
from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.engine.cost import interleaved_latency, params_and_macs  # noqa: E402
from compression_tool.engine.criteria import make_criterion  # noqa: E402
from compression_tool.engine.groups import stream_roots  # noqa: E402,F401  (re-exported)
from compression_tool.engine.strategies import ChannelPruner  # noqa: E402
from compression_tool.engine.thinning import layer_widths  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from compression_tool.io.files import atomic_write_json, check_writable  # noqa: E402
from model_define.pretrained import cifar_resnet_path, shared_data_dir  # noqa: E402
from test_module.reference import top1  # noqa: E402
from train_module.finetune import finetune_classifier  # noqa: E402
from train_module.finetune import step_decay_config as finetune_config  # noqa: E402  (the sibling scripts' name)

log = logging.getLogger("resnet56_published")

METHODS = ("l1", "fpgm", "hrank", "hrank_act")
DEFAULT_METHODS = ("l1", "fpgm", "hrank")
# (drop in points of top-1, FLOPs reduction %, source), ResNet-56 on CIFAR-10
PUBLISHED = {"hrank": (-0.09, 50.0, "HRank, Lin et al. CVPR 2020: 93.26 -> 93.17"),
             "fpgm": (-0.33, 52.6, "FPGM, He et al. CVPR 2019: 93.59 -> 93.26"),
             "l1": (None, None, "Li et al. ICLR 2017 report ResNet-56 only at -27.6 % FLOPs (+0.02)")}
PUBLISHED["hrank_act"] = PUBLISHED["hrank"]
SCOPES = ("inner", "all")


# ------------------------------------------------------------------------------------------------ data

def seeded_halves(n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut in two: (fine-tune indices, evaluation indices), each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


# ------------------------------------------------------------------------------------------------ pruning

def tied_groups(pruner: ChannelPruner) -> int:
    """Groups whose channels all score the same: the criterion cannot rank them (selection falls back to index
    order). HRank on a pre-BN conv output is one such case (every map has full rank)."""
    tied = 0
    for g in pruner.index.groups:
        pruner.order(g)                      # collects the criterion's statistics on first use
        tied += len(set(pruner.criterion(pruner.index, g).tolist())) == 1
    return tied


def prune_copy(model: nn.Module, x: torch.Tensor, method: str, keep_macs: float, scope: str,
               batches: Callable[[], List[torch.Tensor]], hrank_batches: int) -> Tuple[nn.Module, Dict, int]:
    """A copy of ``model`` thinned to ``keep_macs`` of its MACs by one uniform ratio over the scoped groups
    (``ChannelPruner.prune_to_budget``: the counts depend only on the budget, the channels on ``method``);
    also the budget result and the number of groups the criterion could not rank."""
    pruned = copy.deepcopy(model).eval()
    crit = make_criterion("hrank" if method == "hrank_act" else method, limit=hrank_batches, cache_dir=None)
    pruner = ChannelPruner(pruned, x, crit, ignore=stream_roots(pruned, x) if scope == "inner" else (),
                           batches=batches() if crit.needs_data else None)
    ties = tied_groups(pruner)
    if ties:
        log.warning("%s: %d of %d groups have all-equal channel scores; they are pruned in channel order",
                    method, ties, len(pruner.index.groups))
    return pruned, pruner.prune_to_budget(flops=keep_macs, how="hard"), ties


# ------------------------------------------------------------------------------------------------ measuring

def run_method(model: nn.Module, method: str, args: argparse.Namespace, data: Dict, base_top1: float,
               base_costs: Dict[str, float]) -> Tuple[nn.Module, Dict]:
    """Prune, evaluate, fine-tune, evaluate: (the fine-tuned model, its result row)."""
    x_ft, y_ft, x_ev, y_ev = data["x_ft"], data["y_ft"], data["x_ev"], data["y_ev"]
    t0 = time.perf_counter()
    hb = args.hrank_batch_size
    pruned, budget, ties = prune_copy(model, x_ev[:1], method, args.keep_macs, args.scope,
                                      lambda: [x_ft[i:i + hb] for i in range(0, args.hrank_batches * hb, hb)],
                                      args.hrank_batches)
    t_prune = time.perf_counter() - t0
    after_prune = top1(pruned, x_ev, y_ev)
    loader = DataLoader(CropFlip(x_ft, y_ft), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    t1 = time.perf_counter()
    finetune_classifier(pruned, loader, finetune_config(args.epochs, len(loader), args.lr, args.seed))
    t_ft = time.perf_counter() - t1
    after_ft = top1(pruned, x_ev, y_ev)
    c = params_and_macs(pruned, x_ev[:1])
    return pruned, {"method": method, "ratio": budget["ratio"], "top1_before": base_top1, "top1_pruned": after_prune,
                    "top1_finetuned": after_ft, "drop": after_ft - base_top1, "tied_groups": ties,
                    "flops_reduction_pct": 100.0 * (1 - c["macs"] / base_costs["macs"]),
                    "params_reduction_pct": 100.0 * (1 - c["params"] / base_costs["params"]),
                    "prune_seconds": t_prune, "finetune_seconds": t_ft, **c,
                    "widths": dict(layer_widths(pruned))}


def add_latencies(models: Dict[str, nn.Module], base: Dict[str, float], rows: List[Dict], batch: int,
                  rounds: int) -> None:
    """Batch-1 and batch-``batch`` latency of the baseline and every pruned model, measured side by side."""
    for b in (1, batch):
        lat = dict(zip(models, interleaved_latency(list(models.values()), torch.randn(b, 3, 32, 32), rounds=rounds,
                                                   reps=5 if b == 1 else 2)))
        base[f"latency_b{b}_ms"] = lat["baseline"]
        for r in rows:
            r[f"latency_b{b}_ms"] = lat[r["method"]]


# ------------------------------------------------------------------------------------------------ report

def report_lines(base_top1: float, base: Dict[str, float], rows: List[Dict], batch: int) -> List[str]:
    lat = f"latency_b{batch}_ms"
    head = (f"{'method':<9}{'MACs M':>8}{'FLOPs':>8}{'params M':>9}{'params':>8}{'b1 ms':>7}{f'b{batch} ms':>9}"
            f"{'top1 0':>8}{'pruned':>8}{'tuned':>8}{'drop':>7}   published drop")
    lines = [head, f"{'baseline':<9}{base['macs'] / 1e6:>8.2f}{'':>8}{base['params'] / 1e6:>9.3f}{'':>8}"
                   f"{base['latency_b1_ms']:>7.1f}{base[lat]:>9.0f}{base_top1:>8.2f}"]
    for r in rows:
        pub, pub_flops, _ = PUBLISHED[r["method"]]
        pub_txt = f"{pub:+.2f} at -{pub_flops:.1f} % FLOPs" if pub is not None else "n/a at -50 %"
        lines.append(f"{r['method']:<9}{r['macs'] / 1e6:>8.2f}{-r['flops_reduction_pct']:>7.1f}%"
                     f"{r['params'] / 1e6:>9.3f}{-r['params_reduction_pct']:>7.1f}%{r['latency_b1_ms']:>7.1f}"
                     f"{r[lat]:>9.0f}{r['top1_before']:>8.2f}{r['top1_pruned']:>8.2f}{r['top1_finetuned']:>8.2f}"
                     f"{r['drop']:>+7.2f}   {pub_txt}")
    lines += ["published: " + PUBLISHED[r["method"]][2] for r in rows]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="folder holding cifar10_test/ and resnet_cifar10/ (default ../shared/data)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                   help="criteria to compare; hrank_act is another name for hrank (post-BN/ReLU maps)")
    p.add_argument("--keep_macs", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    p.add_argument("--scope", default="inner", choices=SCOPES,
                   help="inner: prune each block's first conv; all: also the residual streams")
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs over the 5,000-image half")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate (/10 at 50 %% and 75 %%)")
    p.add_argument("--batch_size", type=int, default=128, help="fine-tune batch size (also the batch latency)")
    p.add_argument("--hrank_batches", type=int, default=5, help="HRank: batches of fine-tune images for ranks")
    p.add_argument("--hrank_batch_size", type=int, default=128, help="HRank: images per rank batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the 5,000/5,000 split and of the fine-tune")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="latency: interleaved timing rounds over the models")
    p.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    return p


def load_data(root: Path, seed: int) -> Dict[str, torch.Tensor]:
    folder = root / "cifar10_test"
    if not folder.is_dir():
        raise UserError(f"--data {root}: no cifar10_test/ folder")
    x, y, _ = load_image_folder(folder, (32, 32), RGB_MEAN, RGB_STD)
    ft, ev = seeded_halves(len(y), seed)
    return {"x_ft": x[ft], "y_ft": y[ft], "x_ev": x[ev], "y_ev": y[ev]}


def save_results(args: argparse.Namespace, base_top1: float, base_costs: Dict[str, float], rows: List[Dict]) -> None:
    if args.output:
        atomic_write_json(args.output, {"args": {k: str(v) for k, v in vars(args).items()},
                                        "baseline": {"top1": base_top1, **base_costs}, "rows": rows})


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.methods = list(dict.fromkeys(args.methods))
    if not 0.0 < args.keep_macs < 1.0:
        raise UserError(f"--keep_macs: expected a fraction in (0, 1), got {args.keep_macs}")
    if min(args.epochs, args.batch_size, args.threads, args.hrank_batches, args.rounds) < 1:
        raise UserError("--epochs, --batch_size, --threads, --hrank_batches and --rounds must be positive")
    if args.output:
        check_writable(args.output, args.force)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, _ = load_model(cifar_resnet_path(56, args.data), "resnet56", from_data_parallel=True)
    data = load_data(args.data, args.seed)
    print(f"CIFAR-10 JPEGs: {len(data['y_ft'])} fine-tune / {len(data['y_ev'])} evaluation images (seed {args.seed});"
          f" torch threads {torch.get_num_threads()}")
    base_top1 = top1(model, data["x_ev"], data["y_ev"])
    base_costs = params_and_macs(model, data["x_ev"][:1])
    print(f"baseline top-1 {base_top1:.2f} % on the evaluation half, {base_costs['macs'] / 1e6:.2f}M MACs")
    rows: List[Dict] = []
    models: Dict[str, nn.Module] = {"baseline": model}
    for method in args.methods:
        models[method], r = run_method(model, method, args, data, base_top1, base_costs)
        rows.append(r)
        print(f"{method}: uniform ratio {r['ratio']:.4f} over the {args.scope} groups, "
              f"MACs {-r['flops_reduction_pct']:+.1f} %; top-1 {r['top1_before']:.2f} -> pruned "
              f"{r['top1_pruned']:.2f} -> fine-tuned "
              f"{r['top1_finetuned']:.2f} ({r['drop']:+.2f}); prune {r['prune_seconds']:.0f}s, "
              f"fine-tune {r['finetune_seconds']:.0f}s", flush=True)
        save_results(args, base_top1, base_costs, rows)
    add_latencies(models, base_costs, rows, args.batch_size, args.rounds)
    save_results(args, base_top1, base_costs, rows)
    print(f"\nResNet-56, CIFAR-10 JPEGs, {args.epochs} fine-tune epoch(s) on 5,000 images, top-1 % on the other "
          f"5,000; latency: median forward of the models "
          f"measured side by side, {torch.get_num_threads()} thread(s)")
    print("\n".join(report_lines(base_top1, base_costs, rows, args.batch_size)))
    print(f"total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
