"""SGD with weight decay only where it belongs, and a per-iteration warm-up + step-milestone LR schedule."""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

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
        warm = min(1.0, (it + 1) / self.warmup_iters) if self.warmup_iters > 0 else 1.0
        return warm * self.gamma ** sum(1 for m in self.milestones if m <= it)


def build_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (), gamma: float = 0.1,
                    warmup_iters: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call ``.step()`` after every optimizer step); milestones are iteration counts."""
    if any(int(m) < 0 for m in milestones):
        raise UserError(f"--milestones must be non-negative iteration counts, got {list(milestones)}")
    if warmup_iters < 0:
        raise UserError(f"--warmup_iters must be >= 0, got {warmup_iters}")
    if not 0 < gamma <= 1:
        raise UserError(f"--gamma must be in (0, 1], got {gamma}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupMultiStep(milestones, gamma, warmup_iters))
