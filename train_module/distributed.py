"""Data-parallel fine-tuning under torchrun (``python -m torch.distributed.run --nproc_per_node N -m train_module``).

Every process reads the same seeded batches (the single-process order, so resume replays them unchanged) and trains
on its contiguous share of each one; DistributedDataParallel averages the gradients. Each share's loss is weighted
by ``share * world / batch`` so the averaged gradient is the gradient of the whole batch's mean loss, exactly as in
one process. BatchNorm layers in training mode normalise over the whole batch too (``--sync_bn on``, the default):
on CUDA torch's ``nn.SyncBatchNorm``, on the CPU ``GlooSyncBatchNorm`` (batch statistics all-reduced with the
differentiable ``torch.distributed.nn.functional.all_reduce``, shares of unequal size weighted by their counts;
running statistics updated identically on every rank). The swap shares the BN parameters and buffers, and the
original modules are put back when training ends. ``--sync_bn off``: each process normalises over its own share
(running statistics are then rank 0's, broadcast by DDP). Backend: gloo on the CPU, nccl on CUDA. Rank 0 alone
writes checkpoints; every rank evaluates (the same weights, the same numbers).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from compression_tool.engine.device import resolve_device
from compression_tool.io.errors import UserError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the whole batch across the process group (any backend,
    CPU tensors included; torch's ``nn.SyncBatchNorm`` needs CUDA). Two all-reduces: the per-channel sums and the
    element count, then the sums of squared deviations from the global mean (the two-pass variance one process
    computes). Gradients flow through both (``torch.distributed.nn.functional.all_reduce`` is differentiable), so
    DDP's average is the gradient of the whole batch's loss. In eval mode it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    @classmethod
    def sharing(cls, bn: nn.modules.batchnorm._BatchNorm) -> "GlooSyncBatchNorm":
        """A synchronised twin of ``bn`` holding the very same parameters and buffers (the optimizer's)."""
        twin = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            twin.weight, twin.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(twin, name, getattr(bn, name))
        twin.train(bn.training)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=f)
        return out


def swap_batchnorms(model: nn.Module, twin: Callable[[nn.Module], nn.Module]) -> List[Tuple[nn.Module, str, nn.Module]]:
    """Replace every BatchNorm{1,2,3}d under ``model`` by ``twin(bn)``; returns ``(parent, name, original)`` for
    ``restore_batchnorms``."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                setattr(parent, name, twin(child))
                swapped.append((parent, name, child))
    return swapped


def restore_batchnorms(swapped: List[Tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, original in reversed(swapped):
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)


@dataclass
class DataParallel:
    rank: int
    world: int
    device: torch.device
    owns_group: bool          # we initialised the process group (and destroy it at the end)
    swapped: List[Tuple[nn.Module, str, nn.Module]] = field(default_factory=list)   # BN layers to put back

    @classmethod
    def from_env(cls, device: Optional[str]) -> Optional["DataParallel"]:
        """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or None for one process."""
        if not launched_by_torchrun():
            return None
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev, owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, loss_fn: Any, sync_bn: bool = True) -> Tuple[nn.Module, "ShardedLoss"]:
        """DDP over the model (and the margin head the loss holds); the loss trains on this rank's share. With
        ``sync_bn`` the BN layers normalise over the whole batch (put back by ``close``)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        if sync_bn:
            twin = nn.SyncBatchNorm.convert_sync_batchnorm if self.device.type == "cuda" else GlooSyncBatchNorm.sharing
            self.swapped = swap_batchnorms(model, twin)
        loss_fn = copy.copy(loss_fn)
        if getattr(loss_fn, "head", None) is not None and any(p.requires_grad for p in loss_fn.head.parameters()):
            loss_fn.head = nn.parallel.DistributedDataParallel(loss_fn.head, device_ids=ids)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), ShardedLoss(loss_fn, self.rank, self.world)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BN running statistics everywhere (each rank updated its own in the last forward)."""
        for b in model.buffers():
            dist.broadcast(b.data, 0)

    def close(self) -> None:
        restore_batchnorms(self.swapped)
        self.swapped = []
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class ShardedLoss:
    """``loss_fn`` on this rank's contiguous share of the batch. The value returned is the whole batch's mean loss
    (all-reduced, the number one process reports); its gradient is this share's weighted part, which DDP's
    averaging turns into the whole batch's gradient."""

    def __init__(self, loss_fn: Any, rank: int, world: int):
        self.loss_fn, self.rank, self.world = loss_fn, rank, world

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor]):
        n = x.shape[0]
        if n < self.world:
            raise UserError(f"a batch of {n} cannot be shared by {self.world} processes; use a larger --batch_size")
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        loss, parts = self.loss_fn(model, x[lo:hi], labels[lo:hi] if labels is not None else None)
        weighted = loss * ((hi - lo) * self.world / n)
        total = weighted.detach().clone()
        dist.all_reduce(total)
        return weighted + (total / self.world - weighted).detach(), parts
