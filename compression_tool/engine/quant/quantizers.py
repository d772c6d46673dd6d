"""Fake-quantizers: ``x -> (clamp(round(x / s) + z, qmin, qmax) - z) * s`` with a straight-through round.

- ``MinMaxQuantizer``: post-training, ranges from calibration (activations) or from the tensor (weights);
  mirrors ONNX Runtime's static quantization (weights int8 symmetric [-127, 127] per channel, activations
  uint8 asymmetric per tensor, ranges including 0) so the PyTorch model predicts what the int8 ONNX model does.
- ``LsqQuantizer`` (in compression_tool.engine.quant.lsq) and ``FixedPointQuantizer`` (in
compression_tool.engine.quant.fixed_point) share this base.

A quantizer has a ``calibrating`` flag: while set it only observes (returns its input unchanged).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return (x.round() - x).detach() + x


def qrange(bits: int, signed: bool, narrow: bool = False) -> Tuple[int, int]:
    """Integer range of a ``bits``-bit code; ``narrow`` drops the most negative value (symmetric int8)."""
    if bits < 1 or (signed and bits < 2):
        raise ValueError(f"cannot quantize to {bits} bits ({'signed' if signed else 'unsigned'})")
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def channel_view(v: torch.Tensor, like: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Reshape a per-channel vector to broadcast against ``like`` along ``axis``."""
    shape = [1] * like.dim()
    shape[axis] = -1
    return v.view(shape)


def per_channel_absmax(x: torch.Tensor, axis: int = 0) -> torch.Tensor:
    return x.detach().abs().transpose(0, axis).flatten(1).max(1).values


class Quantizer(nn.Module):
    """Base class: bit width, signedness, per-tensor or per-channel (axis 0), calibration switch."""

    def __init__(self, bits: int, signed: bool = True, per_channel: bool = False):
        super().__init__()
        self.bits, self.signed, self.per_channel = int(bits), bool(signed), bool(per_channel)
        self.calibrating = False

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, per_channel={self.per_channel}"

    @staticmethod
    def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
                   ) -> torch.Tensor:
        return (torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


class MinMaxQuantizer(Quantizer):
    """Post-training min-max quantizer (ONNX Runtime's MinMax calibration, reproduced).

    ``weight=True``: symmetric narrow-range signed code, scale from the tensor itself (per channel if set);
    ``reduce_range`` uses one bit less, ``[-2^(b-2), 2^(b-2)]`` ([-64, 64] at 8 bits) as ONNX Runtime does.
    ``weight=False``: asymmetric unsigned code per tensor, range = running [min, max] seen while calibrating.
    """

    def __init__(self, bits: int = 8, weight: bool = False, per_channel: bool = False, reduce_range: bool = False):
        super().__init__(bits, signed=weight, per_channel=per_channel)
        self.weight, self.reduce_range = weight, reduce_range
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight:
            return self._weight_quant(x)
        if self.calibrating:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        if not torch.isfinite(self.lo):
            raise RuntimeError("activation quantizer used before calibration")
        qmin, qmax = qrange(self.bits, signed=False)
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=1e-12)
        zero_point = torch.round(qmin - lo / scale)
        return self.fake_quant(x, scale, zero_point, qmin, qmax)

    def _weight_quant(self, w: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, signed=True, narrow=True)
        if self.reduce_range:
            qmin, qmax = -(2 ** (self.bits - 2)), 2 ** (self.bits - 2)
        absmax = per_channel_absmax(w) if self.per_channel else w.detach().abs().max().view(1)
        scale = torch.clamp(absmax / qmax, min=1e-12)
        if self.per_channel:
            scale = channel_view(scale, w)
        return self.fake_quant(w, scale, torch.zeros_like(scale), qmin, qmax)
