"""Small-on-disk checkpoints for unstructured-sparse models that load back bit-exactly as dense tensors.

A floating tensor with enough zeros is stored as a bitmap of its non-zero entries (1 bit each, packed into
uint8) plus the non-zero values in their own dtype; everything else is stored as is. At 90 % sparsity an fp32
tensor takes 0.125 + 0.4 = 0.525 bytes per entry instead of 4. "Zero" means the bit pattern +0.0 only: -0.0 and
NaN are kept as values, so decoding gives back exactly the same bits.

File layout (``torch.save`` of plain containers, readable with ``torch.load(weights_only=True)``)::

    {"format": FORMAT,
     "state_dict": {name: Tensor | <sparse record>},
     "masks": {param name: "nonzero" | <packed uint8 bits>},   # pruning masks, True = weight kept
     "train_state": {...} | None,                              # optimizer/scheduler state, same encoding
     "meta": {...}}                                             # model name, epoch, pruner settings, metrics
    <sparse record> = {SPARSE_KEY: 1, "shape": [...], "bits": uint8 Tensor, "values": Tensor}

A mask equal to its weight's non-zero pattern (the usual case) is stored as the word ``"nonzero"``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from compression_tool.io.checkpoint import torch_load
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "compression_tool/sparse-v1"
SPARSE_KEY = "__sparse_v1__"
NONZERO_MASK = "nonzero"
MIN_SPARSE_NUMEL = 64          # smaller tensors are stored dense: the record's own overhead would dominate
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


# ---------------------------------------------------------------- bit packing

def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(numel / 8) bytes (first element in the high bit)."""
    flat = flags.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` flags as a flat bool tensor."""
    bits = packed.reshape(-1, 1).bitwise_and(_BIT_WEIGHTS).ne(0)
    return bits.reshape(-1)[:numel]


def nonzero_pattern(t: torch.Tensor) -> torch.Tensor:
    """True where the entry's bits are not those of +0.0 (so -0.0 and NaN count as values)."""
    return t.ne(0) | torch.signbit(t)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from +0.0 and NaN equals the same NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


# ---------------------------------------------------------------- tensors

def _sparse_bytes(numel: int, nnz: int, itemsize: int) -> int:
    return (numel + 7) // 8 + nnz * itemsize


def encode_tensor(t: torch.Tensor) -> Any:
    """A sparse record when that is smaller than the dense tensor, else the tensor itself."""
    if not t.is_floating_point() or t.is_sparse or t.numel() < MIN_SPARSE_NUMEL:
        return t
    t = t.detach().cpu()
    pattern = nonzero_pattern(t)
    nnz = int(pattern.sum())
    if _sparse_bytes(t.numel(), nnz, t.element_size()) >= t.numel() * t.element_size():
        return t
    return {SPARSE_KEY: 1, "shape": list(t.shape), "bits": pack_bits(pattern),
            "values": t.reshape(-1)[pattern.reshape(-1)].clone()}


def is_sparse_record(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get(SPARSE_KEY) == 1


def decode_tensor(obj: Any) -> Any:
    """Dense tensor from a sparse record (bit-exact); anything else is returned unchanged."""
    if not is_sparse_record(obj):
        return obj
    shape = [int(s) for s in obj["shape"]]
    numel = 1
    for s in shape:
        numel *= s
    values = obj["values"]
    pattern = unpack_bits(obj["bits"], numel)
    if int(pattern.sum()) != values.numel():
        raise UserError(f"corrupt sparse tensor record: {int(pattern.sum())} set bits but {values.numel()} values")
    out = torch.zeros(numel, dtype=values.dtype)
    out[pattern] = values
    return out.reshape(shape)


def map_tree(obj: Any, fn: Callable[[Any], Any], is_leaf: Callable[[Any], bool] = lambda o: False) -> Any:
    """``fn`` applied to every tensor (and every ``is_leaf`` object) inside nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor) or is_leaf(obj):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tree(v, fn, is_leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tree(v, fn, is_leaf) for v in obj)
    return obj


def encode_tree(obj: Any) -> Any:
    return map_tree(obj, encode_tensor)


def decode_tree(obj: Any) -> Any:
    """Inverse of ``encode_tree``."""
    return map_tree(obj, decode_tensor, is_sparse_record)


# ---------------------------------------------------------------- masks

def encode_masks(masks: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``"nonzero"`` where a mask equals its weight's non-zero pattern, packed bits otherwise."""
    out: Dict[str, Any] = {}
    for name, mask in masks.items():
        weight = state_dict.get(name)
        if weight is not None and weight.shape == mask.shape and torch.equal(nonzero_pattern(weight), mask.bool()):
            out[name] = NONZERO_MASK
        else:
            out[name] = {"shape": list(mask.shape), "bits": pack_bits(mask.bool())}
    return out


def decode_masks(encoded: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], source: str
                 ) -> Dict[str, torch.Tensor]:
    masks: Dict[str, torch.Tensor] = {}
    for name, enc in encoded.items():
        if enc == NONZERO_MASK:
            if name not in state_dict:
                raise UserError(f"{source}: mask for {name} refers to a weight the checkpoint does not hold")
            masks[name] = nonzero_pattern(state_dict[name])
        else:
            shape = [int(s) for s in enc["shape"]]
            masks[name] = unpack_bits(enc["bits"], int(torch.Size(shape).numel())).reshape(shape)
    return masks


# ---------------------------------------------------------------- files

@dataclass
class SparseCheckpoint:
    state_dict: Dict[str, torch.Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)
    masks: Dict[str, torch.Tensor] = field(default_factory=dict)
    train_state: Optional[Dict[str, Any]] = None


def save_sparse_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor],
                           meta: Optional[Mapping[str, Any]] = None,
                           masks: Optional[Mapping[str, torch.Tensor]] = None,
                           train_state: Optional[Mapping[str, Any]] = None, force: bool = False) -> Path:
    """Write atomically; refuses to overwrite an existing file unless ``force`` (UserError)."""
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    obj = {"format": FORMAT, "state_dict": encode_tree(sd), "masks": encode_masks(masks or {}, sd),
           "train_state": encode_tree(dict(train_state)) if train_state is not None else None,
           "meta": dict(meta or {})}
    out = atomic_torch_save(obj, path, force=force)
    log.info("saved sparse checkpoint %s (%d bytes)", out, out.stat().st_size)
    return out


def is_sparse_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def _decode(obj: Any, source: str) -> SparseCheckpoint:
    sd = decode_tree(obj["state_dict"])
    return SparseCheckpoint(state_dict=sd, meta=dict(obj.get("meta") or {}),
                            masks=decode_masks(obj.get("masks") or {}, sd, source),
                            train_state=decode_tree(obj["train_state"]) if obj.get("train_state") else None)


def load_sparse_checkpoint(path: str | Path) -> SparseCheckpoint:
    """Read a file written by ``save_sparse_checkpoint``; dense tensors, bit-exact."""
    p = Path(path)
    obj = torch_load(p)
    if not is_sparse_checkpoint(obj):
        raise UserError(f"{p}: not a sparse checkpoint (expected format {FORMAT})")
    return _decode(obj, str(p))


def decode_sparse(obj: Any, source: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(dense state_dict, meta) of an already loaded sparse checkpoint object."""
    ckpt = _decode(obj, source)
    return ckpt.state_dict, ckpt.meta
