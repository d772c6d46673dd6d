"""Fine-tuning loops: cross-entropy for classifiers, margin heads for embedders, optional distillation.

Everything takes a plain ``nn.Module``, so pruned (thinned) models train like any other. One iteration loop
serves all cases (``finetune``); ``finetune_classifier`` / ``finetune_embedder`` are the two entry points.

Reproducibility and resume: the global RNG is re-seeded from ``(seed, epoch)`` before each epoch's loader
iterator is created (and the loader's own generator, if it has one) and from ``(seed, step)`` before each
batch is fetched, so a run resumed from a checkpoint at step ``s`` replays exactly the batches and random draws of a
run that went straight through.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from compression_tool.engine.device import amp_context, check_amp, resolve_device
from compression_tool.io.checkpoint import torch_load
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_torch_save, check_writable_dir
from train_module.distributed import DataParallel
from train_module.features import FeatureDistill, expand_layers
from train_module.optim import build_optimizer, build_scheduler, restore_schedule

log = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], Mapping[str, float]]
DISTILL_KINDS = ("cosine", "mse", "kd")
TASKS = ("classifier", "embedder")
_SEED_MUL = 2_654_435_761
FEATURES_NEED_TEACHER = "--feature_distill matches the teacher's feature maps: give --teacher_path and --distill"
MIXUP_NEEDS_DISTILL = ("--mixup blends images but not their labels: use it with label-free distillation only "
                       "(--teacher_path, --distill, and --unlabeled or --head none)")


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run. Iteration counts are optimizer steps (batches)."""
    epochs: int = 1
    max_iters: Optional[int] = None        # stop after this many iterations in total (overrides epochs)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = ()       # iterations at which the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_iters: int = 0                  # linear warm-up from lr/warmup_iters to lr
    lr_schedule: str = "step"              # 'step' (milestones x gamma) | 'cosine' (half cosine to 0 at the end)
                                           # | 'wsd' (constant, then linear to 0 over the last decay_iters)
    decay_iters: int = 0                   # 'wsd': length of the final decay, in iterations
    distill: Optional[str] = None          # 'cosine' | 'mse' | 'kd' (needs a teacher; 'kd': classifier logits)
    alpha: float = 1.0                     # weight of the distillation term
    temperature: float = 4.0               # 'kd': softmax temperature T (the term is scaled by T**2)
    feature_layers: Tuple[str, ...] = ()   # also match the teacher's maps at these layers (needs distill)
    feature_weight: float = 1.0            # weight of the feature-map term (mean over the layers)
    feature_loss: str = "mse"              # 'mse' (normalised, on the kept channels) | 'at' (attention transfer)
    mixup: float = 0.0                     # distillation: blend the batch's images, lam ~ Beta(mixup, mixup); 0 off
    freeze_bn: bool = False                # keep BN running statistics fixed (small fine-tuning sets)
    sync_bn: bool = True                   # under torchrun: BN statistics over the whole batch, not each share
    eval_every: int = 0                    # iterations between evaluations; 0 = at the end of every epoch
    save_dir: Optional[str] = None         # where best_<metric>=<value>_step=<n>.pth go; None = no files
    force: bool = False                    # allow overwriting an existing checkpoint file
    restore_best: bool = False             # put the best evaluated weights back into the model at the end
    eval_at_start: bool = False            # evaluate (and keep as best so far) the model before any update
    seed: int = 0
    progress: bool = True                  # tqdm progress bar
    device: str = "cpu"
    amp: bool = False                      # CUDA only: float16 autocast + gradient scaler (refused on the CPU)


def step_decay_config(epochs: int, iters_per_epoch: int, lr: float, seed: int, momentum: float = 0.9,
                      weight_decay: float = 5e-4) -> FinetuneConfig:
    """The CIFAR fine-tune recipe of the benchmarks and of ``apps.proxy_select``: SGD with momentum and weight
    decay, LR / 10 at 50 % and at 75 % of the ``epochs * iters_per_epoch`` iterations."""
    total = epochs * iters_per_epoch
    return FinetuneConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          milestones=(total // 2, (3 * total) // 4), gamma=0.1, seed=seed)


@dataclass
class FinetuneResult:
    step: int                                            # iterations done in total (incl. before resume)
    losses: List[Tuple[int, float]] = field(default_factory=list)   # (step, loss) of this run's iterations
    evals: List[Tuple[int, Dict[str, float]]] = field(default_factory=list)
    best_metrics: Optional[Dict[str, float]] = None
    best_step: Optional[int] = None
    best_path: Optional[Path] = None                     # best checkpoint written by this run
    last_path: Optional[Path] = None                     # written at the end when there is no eval_fn


# ---------------------------------------------------------------- losses

def split_batch(batch: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A batch is ``x``, ``(x,)`` or ``(x, labels, ...)``; returns ``(x, labels or None)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise UserError(f"the training data must yield tensors or (inputs, labels) pairs, got {type(batch).__name__}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine",
                      temperature: float = 4.0) -> torch.Tensor:
    """'cosine': mean (1 - cos) between rows; 'mse': mean squared error; 'kd' (Hinton et al. 2015, logits of
    shape (N, classes)): ``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` averaged over the batch, so
    its gradients keep the size of a cross-entropy's whatever ``T``. All three are 0 when student == teacher."""
    if student.shape != teacher.shape:
        raise UserError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ; "
                        "the embedding/logit layer must not be pruned for distillation")
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "kd":
        if student.dim() != 2:
            raise UserError(f"--distill kd compares class logits of shape (batch, classes); the model outputs "
                            f"{tuple(student.shape)}")
        t = float(temperature)
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                        log_target=True) * (t * t)
    raise UserError(f"unknown distill {kind!r}; expected one of: {', '.join(DISTILL_KINDS)}")


class FinetuneLoss:
    """``(model, x, labels) -> (loss, parts)``: task loss (CE on logits or on a margin head) + alpha * distill
    (+ feature_weight * the feature-map term of ``features``, hooked on the model and the teacher)."""

    def __init__(self, task: str, head: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
                 distill: Optional[str] = None, alpha: float = 1.0, temperature: float = 4.0,
                 features: Optional[FeatureDistill] = None, feature_weight: float = 1.0):
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
        if task == "classifier" and head is not None:
            raise UserError("a margin head is for embedders; a classifier is fine-tuned with cross-entropy")
        if (teacher is None) != (distill is None):
            raise UserError("distillation needs both a teacher model and --distill cosine|mse|kd")
        if distill is not None and distill not in DISTILL_KINDS:
            raise UserError(f"unknown distill {distill!r}; expected one of: {', '.join(DISTILL_KINDS)}")
        if distill == "kd" and task != "classifier":
            raise UserError("--distill kd softens class logits; for an embedder use --distill cosine or mse")
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"--temperature must be a positive number, got {temperature}")
        if task == "embedder" and head is None and teacher is None:
            raise UserError("an embedder needs a margin head (identity labels) or a teacher (distillation)")
        self.task, self.head, self.teacher, self.distill, self.alpha = task, head, teacher, distill, alpha
        self.temperature = temperature
        if features is not None and teacher is None:
            raise UserError(FEATURES_NEED_TEACHER)
        self.features, self.feature_weight = features, feature_weight

    @property
    def needs_labels(self) -> bool:
        return self.task == "classifier" or self.head is not None

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, Dict[str, float]]:
        if self.needs_labels and labels is None:
            raise UserError("this fine-tune needs labels but the data yields inputs only "
                            "(use pure distillation: no head, a teacher and --distill)")
        with self.features.recording() if self.features is not None else contextlib.nullcontext():
            out = model(x)
            target = None
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x)
        parts: Dict[str, float] = {}
        loss = out.new_zeros(())
        if self.task == "classifier":
            ce = F.cross_entropy(out, labels)
        elif self.head is not None:
            ce = F.cross_entropy(self.head(out, labels), labels)
        else:
            ce = None
        if ce is not None:
            loss = loss + ce
            parts["ce"] = ce.item()
        if target is not None:
            d = distillation_loss(out, target.detach(), self.distill, self.temperature)
            loss = loss + self.alpha * d
            parts["distill"] = d.item()
        if self.features is not None:
            f = self.features.loss()
            loss = loss + self.feature_weight * f
            parts["feature"] = f.item()
        return loss, parts


def mixup_batch(batch: Any, alpha: float, seed: int) -> Any:
    """Mixup of the inputs only (for distillation: the teacher and the student then see the same blended images,
    Beyer et al. 2022's function matching): ``x`` becomes ``lam * x + (1 - lam) * x[perm]``, one
    ``lam ~ Beta(alpha, alpha)`` per image and one random permutation ``perm`` of the batch, all drawn from ``seed``
    alone (the global RNG is left as it was). Labels, if any, pass through unchanged; ``alpha == 0``: the batch as
    it is."""
    if alpha == 0:
        return batch
    x, _ = split_batch(batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((x.shape[0],))
        perm = torch.randperm(x.shape[0])
    lam = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    mixed = lam * x + (1 - lam) * x[perm]
    return mixed if isinstance(batch, torch.Tensor) else (mixed, *batch[1:])


# ---------------------------------------------------------------- checkpoints

def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", s)


def checkpoint_name(metric: str, value: float, step: int) -> str:
    """``best_<metric>=<value, 2 decimals>_step=<step>.pth``, e.g. ``best_lfw_acc=98.17_step=300.pth``."""
    return f"best_{_safe_name(metric)}={value:.2f}_step={step}.pth"


def save_checkpoint(path: str | Path, model: nn.Module, *, step: int, metrics: Optional[Mapping[str, float]] = None,
                    meta: Optional[Mapping[str, Any]] = None, head: Optional[nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Optional[Any] = None,
                    force: bool = False) -> Path:
    """Atomically write ``{'state_dict', 'meta'}``; ``meta`` = caller's meta (model name, keep-arrays…) plus
    ``step``, ``metrics`` and ``train_state`` (head / optimizer / scheduler state for ``--resume``)."""
    full_meta = dict(meta or {})
    full_meta["step"] = int(step)
    full_meta["metrics"] = {k: float(v) for k, v in (metrics or {}).items()}
    full_meta["train_state"] = {
        "head": head.state_dict() if head is not None else None,
        "head_class": type(head).__name__ if head is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    return atomic_torch_save({"state_dict": model.state_dict(), "meta": full_meta}, path, force=force)


def load_checkpoint(path: str | Path, trust: bool = False) -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; UserError naming the file when it is not one. Weights only
    unless ``trust`` (--trust_checkpoint): our own checkpoints never need more."""
    p = Path(path)
    ckpt = torch_load(p, trust, what="--resume checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "train_state" not in ckpt.get("meta", {}):
        raise UserError(f"--resume: {p} is not a train_module checkpoint (expected 'state_dict' and "
                        "'meta.train_state')")
    return ckpt


def restore_training_state(ckpt: Mapping[str, Any], model: nn.Module, head: Optional[nn.Module],
                           optimizer: torch.optim.Optimizer, scheduler: Any, source: str = "checkpoint") -> int:
    """Load model, head, optimizer and scheduler state from a loaded checkpoint; returns its step."""
    ts = ckpt["meta"]["train_state"]
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"--resume: {source} does not match the model: {str(exc).splitlines()[0]}") from None
    if (head is None) != (ts.get("head") is None):
        raise UserError(f"--resume: {source} was trained {'with' if ts.get('head') is not None else 'without'} "
                        "a margin head; use the same --head as that run")
    if head is not None:
        if ts.get("head_class") != type(head).__name__:
            raise UserError(f"--resume: {source} has a {ts.get('head_class')} head, not {type(head).__name__}")
        head.load_state_dict(ts["head"])
    if ts.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(ts["optimizer"])
        except ValueError as exc:
            raise UserError(f"--resume: optimizer state in {source} does not fit: {exc}") from None
    step = int(ckpt["meta"]["step"])
    if ts.get("scheduler") is not None:
        restore_schedule(ts["scheduler"], scheduler, optimizer, source, step)
    return step


# ---------------------------------------------------------------- the loop

def set_train_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    """``model.train()``; with ``freeze_bn`` the BN layers stay in eval mode (running stats not updated)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _seed(seed: int, kind: int, index: int) -> int:
    return (seed * _SEED_MUL + kind * (1 << 40) + index) % (1 << 63)


def seed_epoch(loader: Iterable, seed: int, epoch: int) -> None:
    """Seed everything that decides an epoch's batch order (global RNG and the loader's own generators)."""
    s = _seed(seed, 1, epoch)
    torch.manual_seed(s)
    gens = {id(g): g for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None),
                                                                             "generator", None)) if g is not None}
    for g in gens.values():
        g.manual_seed(s)


def _check_metrics(metrics: Any, step: int) -> Dict[str, float]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise UserError(f"eval_fn must return a non-empty mapping metric -> value, got {metrics!r} at step {step}")
    out = OrderedDict((str(k), float(v)) for k, v in metrics.items())
    if math.isnan(next(iter(out.values()))):
        log.warning("step %d: metric %s is NaN", step, next(iter(out)))
    return out


class _BestKeeper:
    """Tracks the best value of the first metric; writes its checkpoint and removes this run's previous best."""

    def __init__(self, cfg: FinetuneConfig, meta: Optional[Mapping[str, Any]], best: Optional[float]):
        self.cfg, self.meta, self.best = cfg, meta, best
        self.path: Optional[Path] = None
        self.metrics: Optional[Dict[str, float]] = None
        self.step: Optional[int] = None
        self.state: Optional[Dict[str, torch.Tensor]] = None    # in-memory copy for cfg.restore_best

    def offer(self, metrics: Dict[str, float], step: int, **state: Any) -> bool:
        name, value = next(iter(metrics.items()))
        if math.isnan(value) or (self.best is not None and value <= self.best):
            return False
        self.best, self.metrics, self.step = value, metrics, step
        if self.cfg.restore_best:
            self.state = {k: v.detach().clone() for k, v in state["model"].state_dict().items()}
        if self.cfg.save_dir is not None:
            path = Path(self.cfg.save_dir) / checkpoint_name(name, value, step)
            meta = {**(self.meta or {}), "best_metric": name, "best_value": value}
            save_checkpoint(path, step=step, metrics=metrics, meta=meta, force=self.cfg.force, **state)
            if self.path is not None and self.path != path and self.path.exists():
                self.path.unlink()
            self.path = path
            log.info("step %d: new best %s=%.4f -> %s", step, name, value, path)
        return True


def _validate(cfg: FinetuneConfig, iters_per_epoch: int) -> int:
    if iters_per_epoch < 1:
        raise UserError("the training data is empty")
    if cfg.epochs < 1 and not cfg.max_iters:
        raise UserError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.max_iters is not None and cfg.max_iters < 1:
        raise UserError(f"--max_iters must be >= 1, got {cfg.max_iters}")
    if cfg.eval_every < 0:
        raise UserError(f"--eval_every must be >= 0, got {cfg.eval_every}")
    for flag, v, low in (("--lr", cfg.lr, 0.0), ("--momentum", cfg.momentum, None), ("--weight_decay",
                         cfg.weight_decay, None), ("--alpha", cfg.alpha, None), ("--gamma", cfg.gamma, 0.0),
                         ("--feature_weight", cfg.feature_weight, None), ("--mixup", cfg.mixup, None)):
        if not math.isfinite(v) or v < 0 or (low is not None and v <= low):
            raise UserError(f"{flag} must be a {'positive' if low is not None else 'non-negative'} number, got {v}")
    return cfg.max_iters or cfg.epochs * iters_per_epoch


def _check_save_dir(cfg: FinetuneConfig) -> None:
    """Fail before training, not after it, when a fresh run would write over an earlier run's checkpoints."""
    if cfg.save_dir is None or cfg.force or not Path(cfg.save_dir).is_dir():
        return
    old = sorted(p.name for p in Path(cfg.save_dir).glob("*.pth") if p.name.startswith(("best_", "last_step=")))
    if old:
        raise UserError(f"--save_dir {cfg.save_dir} already holds checkpoints of an earlier run ({old[0]}…); "
                        "pass --force, --resume one of them, or choose another --save_dir")


def replay_batches(train_loader: Iterable, cfg: FinetuneConfig, step: int, total: int,
                   iters_per_epoch: int) -> Iterator[Any]:
    """The batches of iterations ``step+1 .. total`` in the order a run from step 0 would see them.

    Seeds per epoch (batch order) and per batch (augmentation in the dataset, dropout in the step that
    follows); after a resume, the already-trained batches of the current epoch are fetched and skipped.
    """
    while step < total:
        epoch, skip = divmod(step, iters_per_epoch)
        seed_epoch(train_loader, cfg.seed, epoch)
        batches = iter(train_loader)
        for i in range(min(iters_per_epoch, skip + total - step)):
            torch.manual_seed(_seed(cfg.seed, 2, epoch * iters_per_epoch + i))
            batch = next(batches, None)
            if batch is None:
                raise UserError(f"the training data yielded {i} batches, fewer than its length {iters_per_epoch}")
            if i >= skip:
                step += 1
                yield batch


def _setup(model: nn.Module, head: Optional[nn.Module], teacher: Optional[nn.Module], cfg: FinetuneConfig,
           resume: Optional[str | Path], trust_resume: bool = False, device: Optional[torch.device] = None,
           total: int = 0) -> Tuple[torch.optim.Optimizer, Any, int, Optional[float]]:
    """Move to the device, build optimizer and schedule, restore a checkpoint: (opt, sched, step, best)."""
    device = device or resolve_device(cfg.device)
    for m in (model, head, teacher):
        if m is not None:
            m.to(device)
    if teacher is not None:
        teacher.eval()
    optimizer = build_optimizer(model, head, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.milestones, cfg.gamma, cfg.warmup_iters, cfg.lr_schedule, total,
                                cfg.decay_iters)
    if cfg.save_dir is not None:          # an unwritable --save_dir fails now, not after the first epoch
        check_writable_dir(cfg.save_dir)
    if resume is None:
        _check_save_dir(cfg)
        return optimizer, scheduler, 0, None
    ckpt = load_checkpoint(resume, trust_resume)
    step = restore_training_state(ckpt, model, head, optimizer, scheduler, source=str(resume))
    best = ckpt["meta"].get("best_value")
    log.info("resumed from %s at step %d (best so far: %s)", resume, step, best)
    return optimizer, scheduler, step, best


def finetune(model: nn.Module, train_loader: Iterable, cfg: FinetuneConfig, *, task: str = "classifier",
             head: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
             eval_fn: Optional[EvalFn] = None, meta: Optional[Mapping[str, Any]] = None,
             resume: Optional[str | Path] = None, trust_resume: bool = False,
             feature_channels: Optional[Mapping[str, Sequence[int]]] = None) -> FinetuneResult:
    """Train ``model`` (and ``head``) on ``train_loader``; see the module doc and ``FinetuneConfig``.

    ``cfg.feature_layers``: the model also matches the teacher's feature maps at these layers
    (``train_module.features``); ``feature_channels[layer]`` gives the teacher channel of each of the model's
    channels there (a thinned model: ``compression_tool.apps.finetune.feature_channel_map``).

    ``eval_fn(model) -> OrderedDict`` is called every ``cfg.eval_every`` iterations (or each epoch) and at the
    end; its first entry is maximised and each new best is saved as ``cfg.save_dir/best_<m>=<v>_step=<n>.pth``
    with ``meta`` (model name, keep-arrays…) merged into the checkpoint's metadata.
    """
    try:
        iters_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise UserError("the training data must have a length (a DataLoader over a sized dataset)") from None
    total = _validate(cfg, iters_per_epoch)
    loss_fn = FinetuneLoss(task, head, teacher, cfg.distill, cfg.alpha, cfg.temperature)
    if cfg.mixup and loss_fn.needs_labels:
        raise UserError(MIXUP_NEEDS_DISTILL)
    features = None
    if cfg.feature_layers:                      # hooks last: nothing after them may fail before the try below
        if teacher is None:
            raise UserError(FEATURES_NEED_TEACHER)
        features = FeatureDistill(model, teacher, expand_layers(model, cfg.feature_layers), cfg.feature_loss,
                                  feature_channels)
        loss_fn.features, loss_fn.feature_weight = features, cfg.feature_weight
    was_training = model.training
    ddp = DataParallel.from_env(cfg.device)     # under torchrun: one share of every batch per process
    try:
        return _finetune(model, train_loader, cfg, loss_fn, total, iters_per_epoch, was_training, head, teacher,
                         eval_fn, meta, resume, trust_resume, ddp)
    finally:
        if ddp is not None:
            ddp.close()
        if features is not None:
            features.close()


def _finetune(model, train_loader, cfg, loss_fn, total, iters_per_epoch, was_training, head, teacher, eval_fn,
              meta, resume, trust_resume, ddp) -> FinetuneResult:
    device = ddp.device if ddp is not None else resolve_device(cfg.device)
    check_amp(str(device), cfg.amp)
    optimizer, scheduler, step, best = _setup(model, head, teacher, cfg, resume, trust_resume, device, total)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp else None
    train_model, train_loss = ddp.wrap(model, loss_fn, cfg.sync_bn) if ddp is not None else (model, loss_fn)
    if ddp is not None and loss_fn.features is not None:
        loss_fn.features.attach()               # wrap may have swapped the BN layers the hooks were on
    if ddp is not None and not ddp.is_main:    # rank 0 alone writes checkpoints
        cfg = dataclasses.replace(cfg, save_dir=None, progress=False)
    keeper = _BestKeeper(cfg, meta, best)
    result = FinetuneResult(step=step)
    state = dict(model=model, head=head, optimizer=optimizer, scheduler=scheduler)

    def evaluate(at: int) -> None:
        if ddp is not None:
            ddp.sync_buffers(model)
        metrics = _check_metrics(eval_fn(model), at)  # type: ignore[misc]
        set_train_mode(model, cfg.freeze_bn)
        result.evals.append((at, metrics))
        log.info("step %d: %s", at, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        keeper.offer(metrics, at, **state)

    if eval_fn is not None and cfg.eval_at_start and step == 0:
        evaluate(0)
    set_train_mode(model, cfg.freeze_bn)
    with tqdm(total=total, initial=step, desc="finetune", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for batch in replay_batches(train_loader, cfg, step, total, iters_per_epoch):
            batch = mixup_batch(batch, cfg.mixup, _seed(cfg.seed, 3, step))
            loss = train_step(train_model, batch, train_loss, optimizer, scheduler, device, step, scaler)
            step += 1
            result.losses.append((step, loss))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
            due = step % cfg.eval_every == 0 if cfg.eval_every else step % iters_per_epoch == 0
            if eval_fn is not None and (due or step == total):
                evaluate(step)
    result.step = step
    result.best_metrics, result.best_step, result.best_path = keeper.metrics, keeper.step, keeper.path
    if eval_fn is None and cfg.save_dir is not None and result.losses:
        result.last_path = save_checkpoint(Path(cfg.save_dir) / f"last_step={step}.pth", step=step, meta=meta,
                                           force=cfg.force, **state)
        log.info("saved %s", result.last_path)
    if cfg.restore_best and keeper.state is not None:
        model.load_state_dict(keeper.state)
    model.train(was_training)
    return result


def train_step(model: nn.Module, batch: Any, loss_fn: FinetuneLoss, optimizer: torch.optim.Optimizer,
               scheduler: Any, device: torch.device, step: int = 0,
               scaler: Optional["torch.amp.GradScaler"] = None) -> float:
    """One SGD update (and one scheduler step); returns the loss before the update. ``scaler`` (``--amp`` on
    CUDA): the forward pass runs under float16 autocast and the loss is scaled for the backward pass."""
    x, y = split_batch(batch)
    x = x.to(device)
    y = y.to(device) if y is not None else None
    optimizer.zero_grad(set_to_none=True)
    with amp_context(device, scaler is not None):
        loss, _ = loss_fn(model, x, y)
    if not torch.isfinite(loss):
        raise UserError(f"the loss became {loss.item()} at step {step + 1}; lower --lr or check the data")
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    return loss.item()


def finetune_classifier(model: nn.Module, train_loader: Iterable, cfg: FinetuneConfig, *,
                        teacher: Optional[nn.Module] = None, eval_fn: Optional[EvalFn] = None,
                        meta: Optional[Mapping[str, Any]] = None, resume: Optional[str | Path] = None,
                        feature_channels: Optional[Mapping[str, Sequence[int]]] = None) -> FinetuneResult:
    """Cross-entropy on the model's logits (+ ``cfg.alpha`` * distillation to ``teacher``'s logits, + its feature
    maps with ``cfg.feature_layers``)."""
    return finetune(model, train_loader, cfg, task="classifier", teacher=teacher, eval_fn=eval_fn, meta=meta,
                    resume=resume, feature_channels=feature_channels)


def finetune_embedder(model: nn.Module, train_loader: Iterable, cfg: FinetuneConfig, *,
                      head: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
                      eval_fn: Optional[EvalFn] = None, meta: Optional[Mapping[str, Any]] = None,
                      resume: Optional[str | Path] = None,
                      feature_channels: Optional[Mapping[str, Sequence[int]]] = None) -> FinetuneResult:
    """Margin-head cross-entropy over identity labels and/or distillation to ``teacher``'s embeddings (and, with
    ``cfg.feature_layers``, its feature maps; ``feature_channels`` as in ``finetune``).

    With ``head=None`` and a teacher this is pure distillation: the data may yield inputs only (no labels).
    """
    return finetune(model, train_loader, cfg, task="embedder", head=head, teacher=teacher, eval_fn=eval_fn,
                    meta=meta, resume=resume, feature_channels=feature_channels)


def config_dict(cfg: FinetuneConfig) -> Dict[str, Any]:
    """The config as plain values (for a checkpoint's meta)."""
    d = asdict(cfg)
    d["milestones"] = list(d["milestones"])
    d["feature_layers"] = list(d["feature_layers"])
    return d
