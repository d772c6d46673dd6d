"""Soft pruning: zero exactly the parameter slices that thinning would remove.

Zeroing only a conv's filters is not enough: a following BN would still add its shift (β − γ·μ/σ). We zero
every slice the dependency group removes — conv/linear rows and columns, BN γ and β, PReLU slopes — so a
removed channel is exactly 0 everywhere downstream and the masked model computes what the thinned one does.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.io.errors import UserError

# (tensor, dim, indices): tensor.index_fill_(dim, indices, 0)
Slice = Tuple[torch.Tensor, int, torch.Tensor]


def _conv_slices(m: nn.modules.conv._ConvNd, idxs: torch.Tensor, out: bool) -> List[Slice]:
    if m.transposed:
        raise UserError(f"soft masks for transposed convolutions are not supported ({m})")
    depthwise = m.groups > 1 and m.groups == m.in_channels
    if out or depthwise:  # a depthwise conv's input channel *is* its output channel
        sl = [(m.weight, 0, idxs)]
        return sl + ([(m.bias, 0, idxs)] if m.bias is not None else [])
    if m.groups != 1:
        raise UserError(f"soft masks for grouped (non-depthwise) convolutions are not supported ({m})")
    return [(m.weight, 1, idxs)]


def module_slices(m: nn.Module, idxs: Sequence[int], out: bool) -> List[Slice]:
    """The slices of ``m``'s tensors that removing channels ``idxs`` (output side if ``out``) deletes."""
    ix = torch.as_tensor(list(idxs), dtype=torch.long)
    if hasattr(m, "soft_mask_slices"):  # layers that know their own masking (e.g. PadShortcut)
        return list(m.soft_mask_slices(idxs, out))
    if isinstance(m, nn.modules.conv._ConvNd):
        return _conv_slices(m, ix, out)
    if isinstance(m, nn.Linear):
        if out:
            return [(m.weight, 0, ix)] + ([(m.bias, 0, ix)] if m.bias is not None else [])
        return [(m.weight, 1, ix)]
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if not m.affine:
            raise UserError(f"soft masks need an affine BatchNorm ({m})")
        return [(m.weight, 0, ix), (m.bias, 0, ix)]
    if isinstance(m, nn.PReLU):
        return [(m.weight, 0, ix)] if m.num_parameters > 1 else []
    if any(True for _ in m.parameters(recurse=False)):
        raise UserError(f"no soft-mask rule for layer type {type(m).__name__}; give the module a "
                        "soft_mask_slices(idxs, out) method (see model_define.resnet_cifar.PadShortcut)")
    return []  # parameter-free ops (add, flatten, pooling, our shortcut modules)


def group_slices(index: GroupIndex, group: PrunableGroup, idxs: Sequence[int]) -> List[Slice]:
    """All slices a group loses when its root channels ``idxs`` go, across every coupled layer."""
    slices: List[Slice] = []
    if len(idxs) == 0:
        return slices
    for dep, dep_idxs in index.pruning_group(group, idxs):
        out = index.dg.is_out_channel_pruning_fn(dep.handler)
        slices += module_slices(dep.target.module, [int(i) for i in dep_idxs], out)
    return slices


@torch.no_grad()
def apply_slices(slices: List[Slice]) -> None:
    for t, dim, ix in slices:
        t.data.index_fill_(dim, ix.to(t.device), 0.0)


@contextlib.contextmanager
def masked(slices: List[Slice]) -> Iterator[None]:
    """Temporarily zero ``slices``; the original values come back on exit (used by sensitivity sweeps)."""
    saved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for t, _, _ in slices:
        saved.setdefault(id(t), (t, t.detach().clone()))
    apply_slices(slices)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, orig in saved.values():
                t.data.copy_(orig)


def gradient_masks(slices: List[Slice]) -> Dict[torch.Tensor, torch.Tensor]:
    """Per-parameter 0/1 masks, for soft pruning that must stay zero through training steps."""
    masks: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for t, dim, ix in slices:
        _, mk = masks.setdefault(id(t), (t, torch.ones_like(t)))
        mk.index_fill_(dim, ix.to(t.device), 0.0)
    return {t: mk for t, mk in masks.values()}
