"""SGD with weight decay only where it belongs, and a per-iteration warm-up + step-milestone, cosine or
warm-up-stable-decay LR schedule."""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

# Parameters of these layers are scale/shift factors: decaying them toward 0 only hurts.
NO_DECAY_LAYERS: Tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
)


def split_decay_params(modules: Iterable[Optional[nn.Module]]
                       ) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """(decay, no_decay) trainable parameters of ``modules``: norm layers, PReLU and every bias go to no_decay.

    ``None`` entries are skipped (e.g. no head); a parameter shared by several modules is listed once.
    """
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    seen: set = set()
    for root in modules:
        if root is None:
            continue
        for module in root.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(module, NO_DECAY_LAYERS) or name == "bias":
                    no_decay.append(p)
                else:
                    decay.append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, head: Optional[nn.Module] = None, lr: float = 0.1,
                    momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD over the model (and margin head): group 0 decays, group 1 (BN / bias / PReLU) has no weight decay."""
    if lr <= 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if weight_decay < 0:
        raise UserError(f"--weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = split_decay_params([model, head])
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters to fine-tune")
    groups: List[Dict] = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
                          {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    log.info("optimizer: SGD lr=%g momentum=%g wd=%g on %d tensors (%d without decay)",
             lr, momentum, weight_decay, len(decay) + len(no_decay), len(no_decay))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def warmup_factor(it: int, warmup_iters: int) -> float:
    """``(it + 1) / warmup_iters`` during a linear warm-up of ``warmup_iters`` iterations, then 1."""
    return min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else 1.0


class WarmupMultiStep:
    """LR factor for iteration ``it`` (0-based; the LR of the (it+1)-th update).

    ``(it + 1) / warmup_iters`` during the warm-up, times ``gamma ** (number of milestones <= it)``.
    A plain object (not a closure) so ``LambdaLR.state_dict`` saves it and a resumed run restores it.
    """

    def __init__(self, milestones: Sequence[int], gamma: float, warmup_iters: int):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)

    def __call__(self, it: int) -> float:
        return warmup_factor(it, self.warmup_iters) * self.gamma ** sum(1 for m in self.milestones if m <= it)


class WarmupCosine:
    """LR factor for iteration ``it``: the linear warm-up of ``WarmupMultiStep``, times a half cosine from 1 at
    iteration 0 to 0 at ``total_iters`` (the last update, ``it = total_iters - 1``, still gets a small LR)."""

    def __init__(self, total_iters: int, warmup_iters: int):
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)

    def __call__(self, it: int) -> float:
        return warmup_factor(it, self.warmup_iters) * 0.5 * (
            1.0 + math.cos(math.pi * min(it, self.total_iters) / self.total_iters))


class WarmupStableDecay:
    """LR factor for iteration ``it``: the linear warm-up of ``WarmupMultiStep``, then constant, then a linear decay
    from 1 to 0 over the last ``decay_iters`` of ``total_iters`` iterations (warm-up-stable-decay). Up to the decay
    it is the constant schedule, so a constant run can be resumed into its decay."""

    def __init__(self, total_iters: int, warmup_iters: int, decay_iters: int):
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.decay_iters = int(decay_iters)

    def __call__(self, it: int) -> float:
        left = self.total_iters - it
        return warmup_factor(it, self.warmup_iters) * (1.0 if left >= self.decay_iters
                                                       else max(0.0, left / self.decay_iters))


LR_SCHEDULES = ("step", "cosine", "wsd")
_SCHEDULE_CLASSES = (WarmupMultiStep, WarmupCosine, WarmupStableDecay)


def schedule_from_state(state: Mapping[str, Any]) -> Optional[Callable[[int], float]]:
    """The schedule object a ``LambdaLR`` state's ``lr_lambdas`` entry was saved from (None if not one of ours)."""
    for cls in _SCHEDULE_CLASSES:          # each keeps exactly its constructor's arguments as attributes
        if set(inspect.signature(cls).parameters) == set(state):
            fn = cls.__new__(cls)
            fn.__dict__.update(state)
            return fn
    return None


def describe_schedule(fn: Any) -> str:
    """``fn``'s flags in words, for error messages."""
    return ", ".join(f"{k}={v}" for k, v in vars(fn).items()) if hasattr(fn, "__dict__") else repr(fn)


def build_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (), gamma: float = 0.1,
                    warmup_iters: int = 0, schedule: str = "step", total_iters: int = 0, decay_iters: int = 0
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call ``.step()`` after every optimizer step); milestones are iteration counts.

    ``schedule='cosine'`` decays to 0 over ``total_iters`` iterations (the run's length, so that a resumed run
    continues the same curve); ``'wsd'`` holds the LR, then decays it linearly to 0 over the last ``decay_iters``.
    Both refuse milestones and do not use gamma."""
    if warmup_iters < 0:
        raise UserError(f"--warmup_iters must be >= 0, got {warmup_iters}")
    if decay_iters and schedule != "wsd":
        raise UserError(f"--decay_iters belongs to --lr_schedule wsd, not {schedule}")
    if schedule in ("cosine", "wsd"):
        if milestones:
            raise UserError(f"--lr_schedule {schedule} decays the LR by itself: drop --milestones")
        if total_iters < 1:
            raise UserError(f"--lr_schedule {schedule} needs the run's length in iterations, got {total_iters}")
        if schedule == "cosine":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_iters, warmup_iters))
        if not 0 < decay_iters <= total_iters:
            raise UserError(f"--decay_iters must be in 1..{total_iters} (the run's iterations) for --lr_schedule "
                            f"wsd, got {decay_iters}")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupStableDecay(total_iters, warmup_iters, decay_iters))
    if schedule != "step":
        raise UserError(f"--lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if any(int(m) < 0 for m in milestones):
        raise UserError(f"--milestones must be non-negative iteration counts, got {list(milestones)}")
    if not 0 < gamma <= 1:
        raise UserError(f"--gamma must be in (0, 1], got {gamma}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupMultiStep(milestones, gamma, warmup_iters))


def restore_schedule(saved: Mapping[str, Any], scheduler: Any, optimizer: torch.optim.Optimizer, source: str,
                     step: Optional[int] = None, flag: str = "--resume") -> None:
    """Continue ``scheduler`` (this run's flags) from a saved ``LambdaLR`` state at ``step`` (default: the saved
    scheduler's own count of steps); ``flag`` names the resume option in messages.

    A resumed run must be the run a straight one with today's flags would have been: the LR of every iteration
    already done must match the saved schedule's (else one line says so). What lies ahead may differ, e.g. a
    constant run continued into a ``wsd`` decay, or a milestone moved past ``step``."""
    step = int(saved.get("last_epoch", 0)) if step is None else int(step)
    now = scheduler.lr_lambdas[0]
    then = schedule_from_state((saved.get("lr_lambdas") or [None])[0] or {})
    base_then = [float(b) for b in saved.get("base_lrs", scheduler.base_lrs)]
    if then is not None:
        for it in range(step):
            if not all(math.isclose(a * then(it), b * now(it), rel_tol=1e-9, abs_tol=1e-15)
                       for a, b in zip(base_then, scheduler.base_lrs)):
                raise UserError(f"{flag}: {source} ran iteration {it} at LR {base_then[0] * then(it):.3g} "
                                f"({describe_schedule(then)}, lr={base_then[0]:g}); these flags give "
                                f"{scheduler.base_lrs[0] * now(it):.3g} there: resume with that run's --lr and "
                                "--lr_schedule (only what lies after the checkpoint may change)")
    mine = dict(vars(now)) if hasattr(now, "__dict__") else None
    scheduler.load_state_dict(saved)
    if mine is not None:                   # load_state_dict put the saved schedule's flags back: keep today's
        now.__dict__.update(mine)
    lrs = [base * now(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
