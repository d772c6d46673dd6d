"""Train the embedded default (digits_net on scikit-learn's digits) when no checkpoint is present."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from compression_tool.data.digits import digits_loaders
from compression_tool.io.files import atomic_torch_save
from model_define import get_model
from test_module.classification import evaluate_classifier
from train_module.finetune import FinetuneConfig, finetune_classifier

log = logging.getLogger(__name__)


def train_default(output: Path, epochs: int = 5, seed: int = 0, force: bool = False) -> Path:
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
