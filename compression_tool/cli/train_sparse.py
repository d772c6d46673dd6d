"""Unstructured-sparse training (PaddleSlim UnstructuredPruner style) on the embedded digits data.

    python train_module/train_sparse.py --pruning_mode threshold --threshold 0.01
    python train_module/train_sparse.py --pruning_mode ratio --ratio 0.55 --num_epochs 4
    python train_module/train_sparse.py --pruning_mode ratio --ratio 0.55 --num_epochs 6 --resume_epoch 4
    python train_module/train_sparse.py --pruning_strategy gmp --initial_ratio 0.2 --ratio 0.9 --num_epochs 6
    python train_module/train_sparse.py --eval_only --pretrained_model work_space/sparse/digits_net/epoch_4.pth

Without --pretrained_model the model is first trained dense from scratch for --dense_epochs. Checkpoints
(sparse format, small on disk, bit-exact on load) go to --model_path as epoch_<N>.pth, N = epochs done.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Optional, Sequence

from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.io.errors import cli_main

STRATEGIES = ("base", "gmp")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python train_module/train_sparse.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered classifier name (default: digits_net, or the model named in the "
                                   "checkpoint's metadata)")
    p.add_argument("--pretrained_model", help="checkpoint to start from or, with --eval_only, to evaluate "
                                              "(a sparse checkpoint of this script or a plain state_dict)")
    p.add_argument("--from_data_parallel", action="store_true",
                   help="--pretrained_model keys carry DataParallel's 'module.' prefix; strip it")
    p.add_argument("--eval_only", action="store_true",
                   help="only evaluate --pretrained_model: print top-1/top-5/loss and total sparsity")
    p.add_argument("--model_path", help="folder for epoch_<N>.pth checkpoints (default work_space/sparse/<model>)")
    p.add_argument("--resume_epoch", type=int, default=-1,
                   help="resume from <model_path>/epoch_<N>.pth (weights, masks, optimizer) and continue with "
                        "epoch N+1 (default -1: no resume)")
    p.add_argument("--num_epochs", type=int, default=3, help="sparse training epochs in total (default 3)")
    p.add_argument("--dense_epochs", type=int, default=5,
                   help="dense training epochs from scratch when there is no --pretrained_model (default 5)")
    p.add_argument("--batch_size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the sparse phase (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight_decay", type=float, default=5e-4,
                   help="weight decay, not applied to BN / bias / PReLU parameters (default 5e-4)")
    p.add_argument("--pruning_mode", choices=("threshold", "ratio"), default="ratio",
                   help="threshold: mask |w| < --threshold; ratio: mask the --ratio smallest |w| (default ratio)")
    p.add_argument("--threshold", type=float, default=0.01, help="magnitude threshold of threshold mode "
                                                                  "(default 0.01)")
    p.add_argument("--ratio", type=float, default=0.55,
                   help="sparsity of ratio mode over the pruned weights; the final ratio for gmp (default 0.55)")
    p.add_argument("--local_sparsity", action="store_true",
                   help="ratio mode: reach --ratio in every weight tensor instead of over all of them together")
    p.add_argument("--pruning_strategy", choices=STRATEGIES, default="base",
                   help="base: prune to --ratio/--threshold from the first step; gmp: cubic ramp from "
                        "--initial_ratio to --ratio (ratio mode only)")
    p.add_argument("--initial_ratio", type=float, default=0.15, help="gmp: ratio at the start of the ramp "
                                                                      "(default 0.15)")
    p.add_argument("--stable_epochs", type=int, default=0, help="gmp: dense epochs before the ramp (default 0)")
    p.add_argument("--pruning_epochs", type=int, default=2, help="gmp: epochs the ramp lasts (default 2)")
    p.add_argument("--pruning_steps", type=int, default=20,
                   help="gmp: how many times the ratio is raised along the ramp (default 20)")
    p.add_argument("--test_period", type=int, default=1, help="evaluate every N epochs and after the last "
                                                                "(default 1)")
    p.add_argument("--model_period", type=int, default=1, help="save a checkpoint every N epochs and after the "
                                                                 "last (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for the data split, init and batch order (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing checkpoints in --model_path")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a --pretrained_model that needs full unpickling (can run code: only your own files)")
    add_threads_arg(p)
    return p


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> None:
    from compression_tool.apps.sparse_training import SparseJob, run_sparse

    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    saved, lines = run_sparse(SparseJob(**{f.name: getattr(args, f.name) for f in fields(SparseJob)}))
    print("\n".join(lines))
    if saved is not None:
        print(f"checkpoint: {saved}")


if __name__ == "__main__":
    main()
