"""Ristretto-style dynamic fixed point: each layer's weights and input activations get their own format.

A ``bits``-bit signed fixed-point number with fractional length ``fl`` is ``k * 2^-fl``,
``k in [-2^(bits-1), 2^(bits-1) - 1]``. Ristretto picks the integer length ``il = ceil(log2(max|x|)) + 1``
(one bit for the sign) so the largest value fits, and ``fl = bits - il`` (may be negative or exceed ``bits``).
Weights take ``max|w|`` from the tensor, activations the largest ``|x|`` seen over the calibration batches.
Biases stay in float (integer kernels keep them at 32 bits). Optionally fold BN first, which changes the
weight ranges and therefore the chosen ``fl``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.engine.quant.bn_fold import fold_bn
from compression_tool.engine.quant.qmodules import calibrate, quant_layers, quantize_layers
from compression_tool.engine.quant.quantizers import Quantizer, qrange


def fractional_length(absmax: float, bits: int) -> int:
    """Ristretto's ``fl = bits - (ceil(log2(max|x|)) + 1)``; ``bits - 1`` for an all-zero tensor."""
    if absmax <= 0.0 or not math.isfinite(absmax):
        return bits - 1
    return bits - (math.ceil(math.log2(absmax)) + 1)


class FixedPointQuantizer(Quantizer):
    """Signed dynamic fixed point. ``weight=True``: ``fl`` from each tensor seen; else from calibration."""

    def __init__(self, bits: int = 8, weight: bool = False):
        super().__init__(bits, signed=True)
        self.weight = weight
        self.register_buffer("absmax", torch.tensor(0.0))

    @property
    def fl(self) -> int:
        return fractional_length(float(self.absmax), self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight or self.calibrating:
            self.absmax = torch.maximum(self.absmax, x.detach().abs().max()) if not self.weight \
                else x.detach().abs().max()
        if self.calibrating:
            return x
        qmin, qmax = qrange(self.bits, signed=True)
        scale = 2.0 ** -self.fl
        return self.fake_quant(x, torch.tensor(scale), torch.tensor(0.0), qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, fl={self.fl}"


@dataclass
class LayerFormat:
    name: str
    fl_weight: int
    fl_act: int


def dynamic_fixed_point(model: nn.Module, batches: Sequence[torch.Tensor], w_bits: int = 8, a_bits: int = 8,
                        fold: bool = False) -> Tuple[nn.Module, List[LayerFormat]]:
    """Fixed-point copy of ``model`` (optionally BN-folded first), calibrated; plus each layer's ``fl``."""
    base = fold_bn(model)[0] if fold else model
    q = quantize_layers(base, lambda n, m: (FixedPointQuantizer(w_bits, weight=True),
                                            FixedPointQuantizer(a_bits)))
    calibrate(q, batches)
    formats = []
    for name, layer in quant_layers(q).items():
        layer.w_quant(layer.layer.weight)          # record the weight range
        formats.append(LayerFormat(name, layer.w_quant.fl, layer.a_quant.fl))
    return q, formats
