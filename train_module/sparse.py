"""Training with an unstructured pruner: the epoch loop, periodic evaluation/saving, resumable checkpoints."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.unstructured import UnstructuredPruner
from compression_tool.io.checkpoint import load_weights
from compression_tool.io.errors import UserError
from compression_tool.io.sparse_checkpoint import load_sparse_checkpoint, save_sparse_checkpoint
from train_module.finetune import FinetuneLoss, seed_epoch, train_step
from train_module.optim import restore_schedule

log = logging.getLogger(__name__)


@dataclass
class SparseTrainConfig:
    epochs: int = 3              # train up to this epoch (1-based, counting epochs done before a resume)
    test_period: int = 1         # evaluate every N epochs (and after the last)
    model_period: int = 1        # save every N epochs (and after the last)
    seed: int = 0
    progress: bool = True


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    sparsity: float                               # over the pruned parameters
    metrics: Optional[Dict[str, float]] = None
    saved: Optional[Path] = None


def epoch_due(epoch: int, period: int, last: int) -> bool:
    return epoch == last or (period > 0 and epoch % period == 0)


def sparse_train(model: nn.Module, pruner: UnstructuredPruner, loader: Any, optimizer: torch.optim.Optimizer,
                 scheduler: Any, cfg: SparseTrainConfig, *, start_epoch: int = 0,
                 eval_fn: Optional[Callable[[nn.Module], Mapping[str, float]]] = None,
                 save_fn: Optional[Callable[[int, Optional[Dict[str, float]]], Path]] = None) -> List[EpochRecord]:
    """Cross-entropy training from epoch ``start_epoch + 1`` to ``cfg.epochs``, ``pruner.step()`` after every
    optimizer step; ``eval_fn(model)`` every ``test_period`` and ``save_fn(epoch, metrics)`` every
    ``model_period`` epochs. Batch order is seeded per epoch, so a resumed run replays the same batches."""
    loss_fn = FinetuneLoss("classifier")
    device = next(model.parameters()).device
    step = start_epoch * len(loader)
    records: List[EpochRecord] = []
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        seed_epoch(loader, cfg.seed, epoch - 1)
        model.train()
        losses = []
        for batch in tqdm(loader, desc=f"sparse epoch {epoch}/{cfg.epochs}", disable=not cfg.progress,
                          leave=False, dynamic_ncols=True):
            losses.append(train_step(model, batch, loss_fn, optimizer, scheduler, device, step))
            step += 1
            pruner.step()
        pruner.update_params()
        rec = EpochRecord(epoch, sum(losses) / max(1, len(losses)), pruner.sparsity())
        if eval_fn is not None and epoch_due(epoch, cfg.test_period, cfg.epochs):
            rec.metrics = {k: float(v) for k, v in eval_fn(model).items()}
        if save_fn is not None and epoch_due(epoch, cfg.model_period, cfg.epochs):
            rec.saved = save_fn(epoch, rec.metrics)
        target = f"threshold {pruner.threshold:.4g}" if pruner.mode == "threshold" else \
            f"ratio {pruner.ratio:.4f}, threshold {pruner.threshold:.4g}"
        log.info("epoch %d: loss %.4f, sparsity %.4f (%s)%s", epoch, rec.loss, rec.sparsity, target,
                 "".join(f", {k} {v:.4f}" for k, v in (rec.metrics or {}).items()))
        records.append(rec)
    return records


def save_training_checkpoint(path: str | Path, model: nn.Module, pruner: UnstructuredPruner, *, epoch: int,
                             meta: Optional[Mapping[str, Any]] = None,
                             optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                             force: bool = False) -> Path:
    """Sparse checkpoint with the masks, pruner settings (meta ``pruner``) and, for resume, optimizer state."""
    pruner.update_params()
    train_state = None
    if optimizer is not None:
        train_state = {"optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict() if scheduler is not None else None}
    full_meta = {**dict(meta or {}), "epoch": int(epoch), "pruner": pruner.settings(),
                 "total_sparse": UnstructuredPruner.total_sparse(model), "sparsity": pruner.sparsity()}
    return save_sparse_checkpoint(path, model.state_dict(), full_meta, masks=pruner.masks,
                                  train_state=train_state, force=force)


def restore_training_checkpoint(path: str | Path, model: nn.Module, pruner: UnstructuredPruner,
                                optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None
                                ) -> Dict[str, Any]:
    """Load weights, masks, pruner settings and optimizer/scheduler state; returns the checkpoint's meta."""
    ckpt = load_sparse_checkpoint(path)
    if "pruner" not in ckpt.meta:
        raise UserError(f"{path}: a sparse checkpoint without pruner settings; it cannot be resumed")
    load_weights(model, ckpt.state_dict, str(path))
    pruner.load_state_dict({"settings": ckpt.meta["pruner"], "masks": ckpt.masks}, source=str(path))
    if optimizer is not None:
        if not ckpt.train_state or ckpt.train_state.get("optimizer") is None:
            raise UserError(f"{path}: holds no optimizer state; it cannot be resumed")
        try:
            optimizer.load_state_dict(ckpt.train_state["optimizer"])
        except ValueError as exc:
            raise UserError(f"{path}: optimizer state does not fit: {exc}") from None
        if scheduler is not None and ckpt.train_state.get("scheduler") is not None:
            restore_schedule(ckpt.train_state["scheduler"], scheduler, optimizer, str(path), flag="--resume_epoch")
        pruner.zero_optimizer_state()
    return ckpt.meta
