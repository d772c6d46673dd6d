"""Train the embedded default (digits_net on scikit-learn's digits) when no checkpoint is present.

    python -m core.default_model --output work_space/checkpoints/digits_net.pth
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common.data import digits_loaders
from common.errors import cli_main
from common.io import atomic_torch_save
from model_define import get_model

log = logging.getLogger(__name__)


def train_default(output: Path, epochs: int = 5, seed: int = 0, force: bool = False) -> Path:
    from test_module.classification import evaluate_classifier
    from train_module.finetune import FinetuneConfig, finetune_classifier

    torch.manual_seed(seed)
    train, test = digits_loaders(image_size=16, batch_size=64, seed=seed)
    model = get_model("digits_net")
    iters = epochs * len(train)
    cfg = FinetuneConfig(epochs=epochs, lr=0.05, weight_decay=5e-4, warmup_iters=len(train),
                         milestones=(int(iters * 0.6), int(iters * 0.85)), seed=seed, progress=True)
    finetune_classifier(model, train, cfg)
    metrics = evaluate_classifier(model, test)
    atomic_torch_save({"state_dict": model.state_dict(), "best_prec1": metrics["top1"], "arch": "digits_net"},
                      output, force=force)
    log.info("digits_net trained: top1 %.2f%% on the held-out digits -> %s", metrics["top1"], output)
    return output


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="work_space/checkpoints/digits_net.pth", help="checkpoint to write")
    p.add_argument("--epochs", type=int, default=5, help="training epochs over the 1,438 training digits")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffling")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    args = p.parse_args(argv)
    print(f"checkpoint: {train_default(Path(args.output), args.epochs, args.seed, args.force)}")


if __name__ == "__main__":
    main()
