"""Unstructured-sparse training (PaddleSlim UnstructuredPruner style) on the embedded digits data: dense warm-up,
masked training with a base or GMP pruner, periodic evaluation and resumable sparse checkpoints."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)
STRATEGIES = ("base", "gmp")


@dataclass
class SparseJob:
    """One run of unstructured-sparse training (the flags of train_module/train_sparse.py)."""
    model: Optional[str] = None
    pretrained_model: Optional[str] = None
    from_data_parallel: bool = False
    eval_only: bool = False
    model_path: Optional[str] = None
    resume_epoch: int = -1
    num_epochs: int = 3
    dense_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pruning_mode: str = "ratio"
    threshold: float = 0.01
    ratio: float = 0.55
    local_sparsity: bool = False
    pruning_strategy: str = "base"
    initial_ratio: float = 0.15
    stable_epochs: int = 0
    pruning_epochs: int = 2
    pruning_steps: int = 20
    test_period: int = 1
    model_period: int = 1
    seed: int = 0
    force: bool = False
    no_progress: bool = False
    trust_checkpoint: bool = False     # full unpickling of --pretrained_model (can run code: only your own files)


# ---------------------------------------------------------------- pieces

def classifier_spec(name: str) -> Any:
    from model_define import model_spec

    spec = model_spec(name)
    if spec.kind != "classifier":
        raise UserError(f"--model {name} is a {spec.kind}; this script trains classifiers on digits")
    return spec


def digits_for(spec: Any, batch_size: int, seed: int) -> Tuple[Any, Any]:
    from compression_tool.data.digits import digits_loaders

    if batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch_size}")
    c, h, _ = spec.input_size
    return digits_loaders(image_size=h, channels=c, batch_size=batch_size, seed=seed)


def load_initial(model_name: Optional[str], pretrained: Optional[str], from_data_parallel: bool, seed: int,
                 trust: bool = False) -> Tuple[nn.Module, str]:
    """The model named by --model / the checkpoint's meta (default digits_net), with ``pretrained`` weights."""
    from compression_tool.engine.checkpoint import load_model

    torch.manual_seed(seed)
    if pretrained:
        model, meta = load_model(pretrained, model_name, from_data_parallel, trust=trust)
        classifier_spec(meta["model"])
        return model, meta["model"]
    name = model_name or "digits_net"
    return classifier_spec(name).build(), name


def train_dense(model: nn.Module, train: Any, epochs: int, seed: int, progress: bool) -> None:
    from train_module.finetune import FinetuneConfig, finetune_classifier

    iters = epochs * len(train)
    cfg = FinetuneConfig(epochs=epochs, lr=0.05, weight_decay=5e-4, warmup_iters=len(train),
                         milestones=(int(iters * 0.6), int(iters * 0.85)), seed=seed, progress=progress)
    finetune_classifier(model, train, cfg)


def make_pruner(job: SparseJob, model: nn.Module, optimizer: torch.optim.Optimizer, iters: int) -> Any:
    from compression_tool.engine.unstructured import GMPSchedule, GMPUnstructuredPruner, UnstructuredPruner

    if job.pruning_strategy == "base":
        return UnstructuredPruner(model, mode=job.pruning_mode, threshold=job.threshold, ratio=job.ratio,
                                  local_sparsity=job.local_sparsity, optimizer=optimizer)
    if job.pruning_mode != "ratio":
        raise UserError("--pruning_strategy gmp ramps a ratio: use --pruning_mode ratio")
    if job.pruning_steps < 1:
        raise UserError(f"--pruning_steps must be >= 1, got {job.pruning_steps}")
    pruning_iters = job.pruning_epochs * iters
    schedule = GMPSchedule(job.initial_ratio, job.ratio, pruning_iters, job.stable_epochs * iters,
                           max(1, pruning_iters // job.pruning_steps))
    return GMPUnstructuredPruner(model, schedule, local_sparsity=job.local_sparsity, optimizer=optimizer)


def checkpoint_path(model_path: Path, epoch: int) -> Path:
    return model_path / f"epoch_{epoch}.pth"


def check_outputs(model_path: Path, start: int, job: SparseJob) -> List[Path]:
    """Refuse up front (before any training) to overwrite checkpoints this run would write."""
    from compression_tool.io.files import check_writable
    from train_module.sparse import epoch_due

    return [check_writable(checkpoint_path(model_path, e), job.force) for e in range(start + 1, job.num_epochs + 1)
            if epoch_due(e, job.model_period, job.num_epochs)]


def eval_lines(model: nn.Module, test: Any) -> List[str]:
    from compression_tool.engine.unstructured import UnstructuredPruner, weight_sparsity
    from test_module.classification import evaluate_classifier

    metrics = dict(evaluate_classifier(model, test))
    return [" ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            f"total_sparse {UnstructuredPruner.total_sparse(model):.4f} (zero entries / all parameters)",
            f"weight_sparsity {weight_sparsity(model):.4f} (zero entries / weights the default pruner masks)"]


def _validate(job: SparseJob) -> None:
    for flag in ("num_epochs", "test_period", "model_period"):
        if getattr(job, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(job, flag)}")
    if job.dense_epochs < 0:
        raise UserError(f"--dense_epochs must be >= 0, got {job.dense_epochs}")
    if job.resume_epoch >= job.num_epochs:
        raise UserError(f"--resume_epoch {job.resume_epoch} leaves nothing to do with --num_epochs "
                        f"{job.num_epochs}; raise --num_epochs")
    if job.resume_epoch >= 0 and job.pretrained_model:
        raise UserError("use either --resume_epoch (continue a run) or --pretrained_model (start one), not both")


# ---------------------------------------------------------------- main

def run_sparse(job: SparseJob) -> Tuple[Optional[Path], List[str]]:
    """Train (or with ``eval_only`` evaluate); returns the last checkpoint written and the final evaluation lines."""
    from test_module.classification import evaluate_classifier
    from train_module.optim import build_optimizer, build_scheduler
    from train_module.sparse import (
        SparseTrainConfig,
        restore_training_checkpoint,
        save_training_checkpoint,
        sparse_train,
    )

    if job.eval_only:
        if not job.pretrained_model:
            raise UserError("--eval_only needs --pretrained_model CHECKPOINT")
        model, name = load_initial(job.model, job.pretrained_model, job.from_data_parallel, job.seed,
                                   job.trust_checkpoint)
        return None, eval_lines(model, digits_for(classifier_spec(name), job.batch_size, job.seed)[1])
    _validate(job)
    resuming = job.resume_epoch >= 0
    model, name = load_initial(job.model, job.pretrained_model, job.from_data_parallel, job.seed,
                               job.trust_checkpoint)
    spec = classifier_spec(name)
    model_path = Path(job.model_path or Path("work_space") / "sparse" / name)
    start = max(job.resume_epoch, 0)
    check_outputs(model_path, start, job)
    train, test = digits_for(spec, job.batch_size, job.seed)
    if not resuming and not job.pretrained_model and job.dense_epochs:
        log.info(f"no --pretrained_model: training {name} dense from scratch for {job.dense_epochs} epochs")
        train_dense(model, train, job.dense_epochs, job.seed, not job.no_progress)
    optimizer = build_optimizer(model, None, job.lr, job.momentum, job.weight_decay)
    scheduler = build_scheduler(optimizer)
    pruner = make_pruner(job, model, optimizer, len(train))
    if resuming:
        restore_training_checkpoint(checkpoint_path(model_path, start), model, pruner, optimizer, scheduler)
        log.info(f"resumed from {checkpoint_path(model_path, start)} (sparsity {pruner.sparsity():.4f})")
    else:
        log.info("before sparse training: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                     evaluate_classifier(model, test).items()))
    meta = {"model": name, "input_size": list(spec.input_size), "args": asdict(job),
            "threads": torch.get_num_threads()}

    def save(epoch: int, metrics: Optional[Dict[str, float]]) -> Path:
        return save_training_checkpoint(checkpoint_path(model_path, epoch), model, pruner, epoch=epoch,
                                        meta={**meta, "metrics": metrics or {}}, optimizer=optimizer,
                                        scheduler=scheduler, force=job.force)

    cfg = SparseTrainConfig(epochs=job.num_epochs, test_period=job.test_period, model_period=job.model_period,
                            seed=job.seed, progress=not job.no_progress)
    records = sparse_train(model, pruner, train, optimizer, scheduler, cfg, start_epoch=start,
                           eval_fn=lambda m: evaluate_classifier(m, test), save_fn=save)
    last = records[-1]
    return last.saved, eval_lines(model, test)


