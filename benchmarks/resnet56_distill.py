#!/usr/bin/env python
"""ResNet-56 / CIFAR-10 at -50 % MACs, recovered by a CPU-budgeted fine-tune with knowledge distillation.

    python benchmarks/resnet56_distill.py --holdout 1000 --lr 0.05     # try a recipe: the training half only
    python benchmarks/resnet56_distill.py                                # the chosen recipe: evaluate the other half

The pruning is that of ``benchmarks/resnet56_published.py`` (its functions are reused: the seeded 5,000/5,000 split
of the 10,000 CIFAR-10 test JPEGs, one uniform ratio over each block's first conv found by bisection on the thinned
MACs). After thinning, the BatchNorm statistics are re-estimated on the un-augmented training images (AdaBN,
``bn_recalibrate``). The fine-tune (``train_module.finetune_classifier``) then trains on the training half with
random crop + flip, SGD, a linear warm-up and the LR divided by 10 at 50 % and 75 % of the iterations, and with
``--distill kd``: cross-entropy + ``alpha * T^2 * KL`` to the unpruned ResNet-56's temperature-softened logits.

Nothing is chosen on the evaluation half: with ``--holdout N`` the run trains on 5,000 - N images of the training
half and reports on its N others (recipe search); without it, it trains on all 5,000 once and reports on the other
5,000. No checkpoint is selected: the last state is evaluated.

Budget: the fine-tune's CPU time (``time.process_time``) and wall time are printed. The budget is 15 minutes of
fine-tuning on an idle 2-core machine; runs here use ONE torch thread and are sized so the CPU time stays under
15 CPU-minutes: a one-thread process on an idle core takes about its CPU time in wall time, so the run fits 15 wall
minutes even without the second core (and uses at most half of the 30 CPU-minutes two cores give in 15 minutes).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import torch  # noqa: E402
from resnet56_published import SCOPES, CropFlip, finetune_config, load_data, prune_copy  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from compression_tool.engine.checkpoint import load_model  # noqa: E402
from compression_tool.engine.cost import params_and_macs  # noqa: E402
from compression_tool.engine.search.fitness import bn_recalibrate  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from compression_tool.io.files import atomic_write_json, check_writable  # noqa: E402
from model_define.pretrained import cifar_resnet_path, shared_data_dir  # noqa: E402
from test_module.reference import top1  # noqa: E402
from train_module.finetune import DISTILL_KINDS, finetune_classifier  # noqa: E402

log = logging.getLogger("resnet56_distill")
BUDGET_CPU_S = 15 * 60        # one thread: CPU seconds ~ wall seconds on an idle core


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=shared_data_dir(),
                   help="folder holding cifar10_test/ and resnet_cifar10/ (default ../shared/data)")
    p.add_argument("--method", default="fpgm", choices=("l1", "fpgm"), help="pruning criterion (default fpgm)")
    p.add_argument("--keep_macs", type=float, default=0.5, help="fraction of the MACs to keep (default 0.5)")
    p.add_argument("--scope", default="inner", choices=SCOPES,
                   help="inner: prune each block's first conv; all: also the residual streams")
    p.add_argument("--holdout", type=int, default=0,
                   help="recipe search: hold out this many images of the training half and report on them "
                        "(default 0: train on the whole half, report on the evaluation half)")
    p.add_argument("--distill", default="kd", choices=("none",) + DISTILL_KINDS,
                   help="distillation from the unpruned model (default kd)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the distillation term (default 1)")
    p.add_argument("--temperature", type=float, default=4.0, help="kd temperature (default 4)")
    p.add_argument("--epochs", type=int, default=20, help="fine-tune epochs over the training images (default 20)")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate, /10 at 50 %% and 75 %% (default 0.01)")
    p.add_argument("--warmup_iters", type=int, default=20, help="linear LR warm-up iterations (default 20)")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--batch_size", type=int, default=128, help="fine-tune batch size (default 128)")
    p.add_argument("--adabn_batch_size", type=int, default=250,
                   help="AdaBN: images per batch when re-estimating BN statistics on the training images")
    p.add_argument("--seed", type=int, default=0, help="seed of the 5,000/5,000 split and of the fine-tune")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the budget assumes 1)")
    p.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    return p


def train_and_report_sets(data: Dict[str, torch.Tensor], holdout: int, seed: int) -> Dict[str, torch.Tensor]:
    """(x_tr, y_tr, x_rep, y_rep): the training half and the evaluation half, or, with ``holdout``, the training
    half cut into a training part and ``holdout`` held-out images (the evaluation half is then not touched)."""
    if not holdout:
        return {"x_tr": data["x_ft"], "y_tr": data["y_ft"], "x_rep": data["x_ev"], "y_rep": data["y_ev"]}
    n = len(data["y_ft"])
    if not 0 < holdout < n:
        raise UserError(f"--holdout: expected 0 < N < {n}, got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))   # a second cut, inside the half
    tr, rep = perm[holdout:].sort().values, perm[:holdout].sort().values
    return {"x_tr": data["x_ft"][tr], "y_tr": data["y_ft"][tr], "x_rep": data["x_ft"][rep], "y_rep": data["y_ft"][rep]}


def run(args: argparse.Namespace) -> Dict:
    teacher, _ = load_model(cifar_resnet_path(56, args.data), "resnet56", from_data_parallel=True)
    teacher.eval()
    sets = train_and_report_sets(load_data(args.data, args.seed), args.holdout, args.seed)
    x_tr, y_tr, x_rep, y_rep = sets["x_tr"], sets["y_tr"], sets["x_rep"], sets["y_rep"]
    report = f"{len(y_rep)} held-out images of the training half" if args.holdout else \
        f"the {len(y_rep)}-image evaluation half"
    print(f"train on {len(y_tr)} images, report on {report}; torch threads {torch.get_num_threads()}", flush=True)
    base = top1(teacher, x_rep, y_rep)
    base_costs = params_and_macs(teacher, x_rep[:1])

    t0 = time.perf_counter()
    student, budget, _ = prune_copy(teacher, x_rep[:1], args.method, args.keep_macs, args.scope, lambda: [], 0)
    pruned = top1(student, x_rep, y_rep)
    bs = args.adabn_batch_size
    bn_recalibrate(student, [x_tr[i:i + bs] for i in range(0, len(x_tr), bs)])
    adabn = top1(student, x_rep, y_rep)
    t_prune = time.perf_counter() - t0
    costs = params_and_macs(student, x_rep[:1])
    print(f"{args.method}: ratio {budget['ratio']:.4f}, MACs {100 * (costs['macs'] / base_costs['macs'] - 1):+.1f} %;"
          f" top-1 {base:.2f} -> pruned {pruned:.2f} -> AdaBN {adabn:.2f} ({t_prune:.0f}s)", flush=True)

    loader = DataLoader(CropFlip(x_tr, y_tr), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    distill = None if args.distill == "none" else args.distill
    cfg = dataclasses.replace(finetune_config(args.epochs, len(loader), args.lr, args.seed),
                              weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, distill=distill,
                              alpha=args.alpha, temperature=args.temperature, progress=False)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = finetune_classifier(student, loader, cfg, teacher=teacher if distill else None)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    tuned = top1(student, x_rep, y_rep)
    with torch.no_grad():
        agree = 100.0 * (student(x_rep).argmax(1) == teacher(x_rep).argmax(1)).float().mean().item()
    print(f"fine-tuned ({args.epochs} epochs, {result.step} iterations, distill {args.distill}): top-1 {tuned:.2f} "
          f"({tuned - base:+.2f} vs the unpruned {base:.2f}), agrees with the unpruned model on {agree:.2f} %; "
          f"fine-tune CPU {cpu / 60:.1f} min, wall {wall / 60:.1f} min "
          f"({'within' if cpu <= BUDGET_CPU_S else 'OVER'} the 15 CPU-min one-thread budget)", flush=True)
    return {"report_on": report, "top1_unpruned": base, "top1_pruned": pruned, "top1_adabn": adabn,
            "top1_finetuned": tuned, "drop": tuned - base, "agreement_with_unpruned": agree,
            "flops_reduction_pct": 100.0 * (1 - costs["macs"] / base_costs["macs"]), "ratio": budget["ratio"],
            "iterations": result.step, "finetune_cpu_s": cpu, "finetune_wall_s": wall, "threads": args.threads,
            "final_loss": result.losses[-1][1] if result.losses else None, **costs}


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0.0 < args.keep_macs < 1.0:
        raise UserError(f"--keep_macs: expected a fraction in (0, 1), got {args.keep_macs}")
    if min(args.epochs, args.batch_size, args.threads, args.adabn_batch_size) < 1:
        raise UserError("--epochs, --batch_size, --threads and --adabn_batch_size must be positive")
    if args.output:
        check_writable(args.output, args.force)
    torch.set_num_threads(args.threads)
    row = run(args)
    if args.output:
        atomic_write_json(args.output, {"args": {k: str(v) for k, v in vars(args).items()}, "result": row})


if __name__ == "__main__":
    main()
