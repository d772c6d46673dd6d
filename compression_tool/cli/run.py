#!/usr/bin/env python
"""The classic three-step channel-pruning pipeline: 1 train the base model, 2 prune it, 3 fine-tune it.

    python run.py --model lenet --data_type mnist --prune_method bn --percent 0.5 --step 123

Any subset of steps runs (e.g. --step 23 reuses the base model saved by an earlier --step 1). Outputs go to
work_space/output/<model>/<data_type>/model_base|model_prune|model_refine/model.pth, per-epoch logs (top-1,
top-k, loss, throughput) to work_space/log/<model>_<data_type>_base|prune|refine.log.
"""
from __future__ import annotations

import argparse

from compression_tool.apps.pipeline import DATA_TYPES, PipelineConfig  # noqa: E402
from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.engine.criteria.weight import DEFAULT_REDUCTION, REDUCTIONS
from compression_tool.io.errors import UserError, cli_main  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits_net", help="model name from the zoo (lenet = lenet5; default digits_net)")
    p.add_argument("--data_type", default="digits", metavar="|".join(DATA_TYPES) + "|NAME",
                   help="digits: embedded scikit-learn digits; mnist: idx files; cifar10/cifar100: python pickles; "
                        "json: train.json/test.json with data (N x C*H*W, 0..255), label, shape (optional for square "
                        "images); NAME: such a JSON dataset under myData/NAME/ (outputs and logs named NAME)")
    p.add_argument("--data_path", default=None,
                   help="folder holding the data files (default: data/<data_type>, myData/<NAME> for a named dataset)")
    p.add_argument("--step", default="123", help="steps to run: any of 1 (train base), 2 (prune), 3 (fine-tune)")
    p.add_argument("--prune_method", default="l1", help="pruning criterion (l1, l2, fpgm, hrank, bn, …)")
    p.add_argument("--percent", type=float, default=0.5, help="fraction of channels to prune")
    p.add_argument("--scope", default="auto", choices=("auto", "layer", "global"),
                   help="layer: every layer loses --percent; global: one threshold over all channels "
                        "(network slimming); auto: global for bn, layer otherwise")
    p.add_argument("--epochs", type=int, default=10, help="step 1: training epochs")
    p.add_argument("--refine_epochs", type=int, default=5, help="step 3: fine-tuning epochs")
    p.add_argument("--lr", type=float, default=0.05, help="step 1: learning rate (SGD, steps at 50%% and 75%%)")
    p.add_argument("--refine_lr", type=float, default=0.01, help="step 3: learning rate")
    p.add_argument("--sr", type=float, default=0.0,
                   help="step 1: L1 sparsity on BN gammas (network slimming's s, e.g. 1e-4); 0 = off")
    p.add_argument("--batch_size", type=int, default=64, help="training batch size")
    p.add_argument("--topk", type=int, default=5, help="the k of the logged top-k accuracy")
    p.add_argument("--limit", type=int, default=5, help="batches for data-driven criteria (hrank, …)")
    p.add_argument("--reduction", choices=REDUCTIONS, default=DEFAULT_REDUCTION,
                   help=f"l1 / l2 / fpgm: first = leading filters only; mean / sum / max over every coupled slice "
                        f"(default {DEFAULT_REDUCTION}; docs/criteria.md)")
    p.add_argument("--ignore", nargs="*", default=[], help="layer names never to prune (output layers never are)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and shuffling")
    p.add_argument("--work_space", default="work_space", help="root folder for output/ and log/")
    p.add_argument("--force", action="store_true", help="overwrite checkpoints an earlier run saved")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow step 2/3 to load a checkpoint that needs full unpickling (can run code: only your "
                        "own files)")
    add_threads_arg(p)
    return p


@cli_main
def main(argv=None) -> None:
    import sys

    from compression_tool.cli.legacy import translate_oneflow

    args = build_parser().parse_args(translate_oneflow(sys.argv[1:] if argv is None else argv))
    apply_threads(args.threads)
    from compression_tool.apps.pipeline import Pipeline

    for flag in ("epochs", "refine_epochs", "batch_size", "topk", "limit"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    cfg = PipelineConfig(model=args.model, data_type=args.data_type, data_path=args.data_path,
                         prune_method=args.prune_method, percent=args.percent, scope=args.scope, steps=args.step,
                         epochs=args.epochs, refine_epochs=args.refine_epochs, lr=args.lr, refine_lr=args.refine_lr,
                         sr=args.sr, batch_size=args.batch_size, topk=args.topk, limit=args.limit, seed=args.seed,
                         reduction=args.reduction,
                         work_space=args.work_space, force=args.force, progress=not args.no_progress,
                         ignore=args.ignore, trust=args.trust_checkpoint)
    for result in Pipeline(cfg).run().values():
        print(result.summary)


if __name__ == "__main__":
    main()
