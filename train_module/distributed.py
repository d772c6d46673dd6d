"""Data-parallel fine-tuning under torchrun (``python -m torch.distributed.run --nproc_per_node N -m train_module``).

Every process reads the same seeded batches (the single-process order, so resume replays them unchanged) and trains
on its contiguous share of each one; DistributedDataParallel averages the gradients. Each share's loss is weighted
by ``share * world / batch`` so the averaged gradient is the gradient of the whole batch's mean loss, exactly as in
one process (BatchNorm batch statistics are the one difference: each process normalises over its own share;
running statistics are rank 0's, broadcast by DDP). Backend: gloo on the CPU, nccl on CUDA. Rank 0 alone writes
checkpoints; every rank evaluates (the same weights, the same numbers).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from compression_tool.engine.device import resolve_device
from compression_tool.io.errors import UserError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DataParallel:
    rank: int
    world: int
    device: torch.device
    owns_group: bool          # we initialised the process group (and destroy it at the end)

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

    def wrap(self, model: nn.Module, loss_fn: Any) -> Tuple[nn.Module, "ShardedLoss"]:
        """DDP over the model (and the margin head the loss holds); the loss trains on this rank's share."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        loss_fn = copy.copy(loss_fn)
        if getattr(loss_fn, "head", None) is not None and any(p.requires_grad for p in loss_fn.head.parameters()):
            loss_fn.head = nn.parallel.DistributedDataParallel(loss_fn.head, device_ids=ids)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), ShardedLoss(loss_fn, self.rank, self.world)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BN running statistics everywhere (each rank updated its own in the last forward)."""
        for b in model.buffers():
            dist.broadcast(b.data, 0)

    def close(self) -> None:
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
