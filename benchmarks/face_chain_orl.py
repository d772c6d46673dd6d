#!/usr/bin/env python
"""The face chain on real faces (ORL): train a small embedder, prune it to 30 % and 50 % fewer MACs, fine-tune.

1. MobileFaceNet at 56x48 trained from scratch with ArcFace (s=32, m=0.5) on subjects s3..s30 (280 images);
2. sensitivity analysis on the verification metric (10-fold accuracy on seeded pairs of the held-out subjects
   s31..s40: 450 same + 450 different), l1 criterion;
3. for each budget, a schedule that prunes the least sensitive layers first until that share of the MACs is
   gone (compression_tool.engine.budget: moves ranked on the CSV, MACs measured on thinned copies), thinning,
   fine-tuning on
   s3..s30 without and with distillation from the unpruned model (fixed length, last state kept: nothing is
   selected on the s31..s40 pairs);
4. 10-fold accuracy, TPR@FPR=1e-2, MACs, params and CPU latency of every stage (latency: all models timed in
   alternation at the end). A control row fine-tunes the unpruned model with the same recipe: fine-tuning is
   more training, and the control shows how much of a gain is that alone.

The steps are prune_face.sh's commands, run in one process (compression_tool.apps.face_chain.run_chain).

    python benchmarks/face_chain_orl.py                    # about 10 minutes on 2 busy cores
    python benchmarks/face_chain_orl.py --reductions 0.3 --ft_epochs 3 --work /tmp/fc
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from compression_tool.apps.face_chain import ChainConfig, format_table, run_chain  # noqa: E402
from compression_tool.apps.workflow import parse_input_size  # noqa: E402
from compression_tool.io.errors import cli_main  # noqa: E402

DEFAULT_ORL = ROOT.parent / "shared" / "data" / "orl_faces"


def build_parser() -> argparse.ArgumentParser:
    d = ChainConfig(orl="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orl", default=str(DEFAULT_ORL), help="ORL faces root (s3..s40); skipped when absent")
    p.add_argument("--work", default="work_space/face_chain_orl", help="output folder (overwritten)")
    p.add_argument("--checkpoint", default=None, help="prune this embedder instead of training one")
    p.add_argument("--input_size", default="56,48", help="model input H,W (default 56,48)")
    p.add_argument("--reductions", default="0.3,0.5", help="fractions of the MACs to remove (default 0.3,0.5)")
    p.add_argument("--method", default=d.method, help=f"pruning criterion (default {d.method})")
    p.add_argument("--metric", default=d.metric, help=f"sensitivity metric (default {d.metric})")
    p.add_argument("--sparsities", default=d.sparsities, help=f"sensitivity levels (default {d.sparsities})")
    p.add_argument("--base_epochs", type=int, default=d.base_epochs,
                   help=f"epochs of the embedder trained from scratch (default {d.base_epochs})")
    p.add_argument("--ft_epochs", type=int, default=d.ft_epochs, help=f"fine-tuning epochs (default {d.ft_epochs})")
    p.add_argument("--ft_lr", type=float, default=d.ft_lr, help=f"fine-tuning learning rate (default {d.ft_lr})")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"distillation weight (default {d.alpha})")
    p.add_argument("--freeze_bn", action="store_true", help="fine-tuning: keep BN running statistics fixed")
    p.add_argument("--no_control", action="store_true",
                   help="skip the control row (the unpruned model fine-tuned with the same recipe)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a loaded 2-core machine one thread is the fastest)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and pairs (default 0)")
    return p


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not Path(args.orl).is_dir():
        print(f"skipped: ORL faces not found at {args.orl}")
        return
    torch.set_num_threads(args.threads)
    d = ChainConfig(orl="")
    cfg = ChainConfig(orl=args.orl, work=args.work, checkpoint=args.checkpoint,
                      input_size=tuple(parse_input_size(args.input_size)),
                      reductions=tuple(float(r) for r in args.reductions.split(",")), method=args.method,
                      metric=args.metric, sparsities=args.sparsities, base_epochs=args.base_epochs,
                      ft_epochs=args.ft_epochs, ft_lr=args.ft_lr, alpha=args.alpha, freeze_bn=args.freeze_bn,
                      distill=d.distill, control=not args.no_control, seed=args.seed)
    t0 = time.perf_counter()
    res = run_chain(cfg)
    total = time.perf_counter() - t0
    print(f"\nORL s31..s40 verification pairs (900, seed {args.seed}); {cfg.model} at "
          f"{cfg.input_size[1]}x{cfg.input_size[2]}; criterion {cfg.method}; sensitivity metric {cfg.metric}; "
          f"latency: one image, {torch.get_num_threads()} torch thread(s)")
    print(format_table(res.rows))
    for r, b in res.budgets.items():
        levels = ", ".join(f"{k.replace('.weight', '')}={v:g}" for k, v in b.sparsities.items() if v)
        print(f"budget -{100 * r:.0f}% MACs: {b.moves} of {b.total_moves} moves (last at {b.metric} = "
              f"{b.threshold}) -> {b.macs / 1e6:.2f}M of {b.base_macs / 1e6:.2f}M MACs ({100 * b.reduction:.1f}% "
              f"removed); levels {levels}")
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items()) +
          f"; total {total / 60:.1f} min (budget 15 min)")


if __name__ == "__main__":
    main()
