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
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from common.errors import UserError, cli_main  # noqa: E402

STRATEGIES = ("base", "gmp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python train_module/train_sparse.py", description=__doc__,
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
    return p


# ---------------------------------------------------------------- pieces

def classifier_spec(name: str) -> Any:
    from model_define import model_spec

    spec = model_spec(name)
    if spec.kind != "classifier":
        raise UserError(f"--model {name} is a {spec.kind}; this script trains classifiers on digits")
    return spec


def digits_for(spec: Any, batch_size: int, seed: int) -> Tuple[Any, Any]:
    from common.data import digits_loaders

    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    c, h, _ = spec.input_size
    return digits_loaders(image_size=h, channels=c, batch_size=batch_size, seed=seed)


def load_initial(model_name: Optional[str], pretrained: Optional[str], from_data_parallel: bool, seed: int
                 ) -> Tuple[nn.Module, str]:
    """The model named by --model / the checkpoint's meta (default digits_net), with ``pretrained`` weights."""
    from common.checkpoint import load_weights
    from common.sparse_checkpoint import read_any_weights

    sd: Optional[Dict[str, torch.Tensor]] = None
    name = model_name
    if pretrained:
        sd, meta = read_any_weights(pretrained)
        name = name or meta.get("model") or meta.get("arch")
    name = name or "digits_net"
    torch.manual_seed(seed)
    model = classifier_spec(name).build()
    if sd is not None:
        load_weights(model, sd, pretrained, from_data_parallel=from_data_parallel)
    return model, name


def train_dense(model: nn.Module, train: Any, epochs: int, seed: int, progress: bool) -> None:
    from train_module.finetune import FinetuneConfig, finetune_classifier

    iters = epochs * len(train)
    cfg = FinetuneConfig(epochs=epochs, lr=0.05, weight_decay=5e-4, warmup_iters=len(train),
                         milestones=(int(iters * 0.6), int(iters * 0.85)), seed=seed, progress=progress)
    finetune_classifier(model, train, cfg)


def make_pruner(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer, iters: int) -> Any:
    from patches.unstructured import GMPSchedule, GMPUnstructuredPruner, UnstructuredPruner

    if args.pruning_strategy == "base":
        return UnstructuredPruner(model, mode=args.pruning_mode, threshold=args.threshold, ratio=args.ratio,
                                  local_sparsity=args.local_sparsity, optimizer=optimizer)
    if args.pruning_mode != "ratio":
        raise UserError("--pruning_strategy gmp ramps a ratio: use --pruning_mode ratio")
    if args.pruning_steps < 1:
        raise UserError(f"--pruning_steps must be >= 1, got {args.pruning_steps}")
    pruning_iters = args.pruning_epochs * iters
    schedule = GMPSchedule(args.initial_ratio, args.ratio, pruning_iters, args.stable_epochs * iters,
                           max(1, pruning_iters // args.pruning_steps))
    return GMPUnstructuredPruner(model, schedule, local_sparsity=args.local_sparsity, optimizer=optimizer)


def checkpoint_path(model_path: Path, epoch: int) -> Path:
    return model_path / f"epoch_{epoch}.pth"


def check_outputs(model_path: Path, start: int, args: argparse.Namespace) -> List[Path]:
    """Refuse up front (before any training) to overwrite checkpoints this run would write."""
    from common.io import check_writable
    from patches.unstructured import epoch_due

    return [check_writable(checkpoint_path(model_path, e), args.force) for e in range(start + 1, args.num_epochs + 1)
            if epoch_due(e, args.model_period, args.num_epochs)]


def print_eval(model: nn.Module, test: Any) -> Dict[str, float]:
    from patches.unstructured import UnstructuredPruner, weight_sparsity
    from test_module.classification import evaluate_classifier

    metrics = dict(evaluate_classifier(model, test))
    print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"total_sparse {UnstructuredPruner.total_sparse(model):.4f} (zero entries / all parameters)")
    print(f"weight_sparsity {weight_sparsity(model):.4f} (zero entries / weights the default pruner masks)")
    return metrics


def _validate(args: argparse.Namespace) -> None:
    for flag in ("num_epochs", "test_period", "model_period"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.dense_epochs < 0:
        raise UserError(f"--dense_epochs must be >= 0, got {args.dense_epochs}")
    if args.resume_epoch >= args.num_epochs:
        raise UserError(f"--resume_epoch {args.resume_epoch} leaves nothing to do with --num_epochs "
                        f"{args.num_epochs}; raise --num_epochs")
    if args.resume_epoch >= 0 and args.pretrained_model:
        raise UserError("use either --resume_epoch (continue a run) or --pretrained_model (start one), not both")


# ---------------------------------------------------------------- main

def run(args: argparse.Namespace) -> Optional[Path]:
    from patches.unstructured import (SparseTrainConfig, restore_training_checkpoint, save_training_checkpoint,
                                      sparse_train)
    from test_module.classification import evaluate_classifier
    from train_module.optim import build_optimizer, build_scheduler

    if args.eval_only:
        if not args.pretrained_model:
            raise UserError("--eval_only needs --pretrained_model CHECKPOINT")
        model, name = load_initial(args.model, args.pretrained_model, args.from_data_parallel, args.seed)
        print_eval(model, digits_for(classifier_spec(name), args.batch_size, args.seed)[1])
        return None
    _validate(args)
    resuming = args.resume_epoch >= 0
    model, name = load_initial(args.model, args.pretrained_model, args.from_data_parallel, args.seed)
    spec = classifier_spec(name)
    model_path = Path(args.model_path or ROOT / "work_space" / "sparse" / name)
    start = max(args.resume_epoch, 0)
    check_outputs(model_path, start, args)
    train, test = digits_for(spec, args.batch_size, args.seed)
    if not resuming and not args.pretrained_model and args.dense_epochs:
        print(f"no --pretrained_model: training {name} dense from scratch for {args.dense_epochs} epochs")
        train_dense(model, train, args.dense_epochs, args.seed, not args.no_progress)
    optimizer = build_optimizer(model, None, args.lr, args.momentum, args.weight_decay)
    scheduler = build_scheduler(optimizer)
    pruner = make_pruner(args, model, optimizer, len(train))
    if resuming:
        restore_training_checkpoint(checkpoint_path(model_path, start), model, pruner, optimizer, scheduler)
        print(f"resumed from {checkpoint_path(model_path, start)} (sparsity {pruner.sparsity():.4f})")
    else:
        print("before sparse training: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                     evaluate_classifier(model, test).items()))
    meta = {"model": name, "input_size": list(spec.input_size), "args": dict(vars(args))}

    def save(epoch: int, metrics: Optional[Dict[str, float]]) -> Path:
        return save_training_checkpoint(checkpoint_path(model_path, epoch), model, pruner, epoch=epoch,
                                        meta={**meta, "metrics": metrics or {}}, optimizer=optimizer,
                                        scheduler=scheduler, force=args.force)

    cfg = SparseTrainConfig(epochs=args.num_epochs, test_period=args.test_period, model_period=args.model_period,
                            seed=args.seed, progress=not args.no_progress)
    records = sparse_train(model, pruner, train, optimizer, scheduler, cfg, start_epoch=start,
                           eval_fn=lambda m: evaluate_classifier(m, test), save_fn=save)
    last = records[-1]
    print_eval(model, test)
    print(f"checkpoint: {last.saved}")
    return last.saved


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
