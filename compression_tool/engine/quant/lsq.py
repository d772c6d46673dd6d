"""LSQ: learned step size quantization (Esser et al., ICLR 2020) with per-layer weight and activation bits.

``x_q = round(clamp(x / s, Qn, Qp)) * s`` with a straight-through round; the step ``s`` is a parameter whose
gradient is scaled by ``g = 1 / sqrt(N * Qp)`` (N = elements per step), as in the paper. Steps start at the
MSE-optimal step for the first batch (``mse_step``), which starts short fine-tunes closer than the paper's
``2 <|x|> / sqrt(Qp)``. Activation quantizers pick signedness from that batch (unsigned after ReLU).

Bits per layer are dicts ``{layer name: bits}`` over ``quant_layer_names(model)``; a bit width of 32 or more
(or a missing name) leaves that tensor in float.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from compression_tool.engine.quant.qmodules import calibrate, quantize_layers
from compression_tool.engine.quant.quantizers import Quantizer, channel_view, qrange, round_ste
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

FLOAT_BITS = 32


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value ``x``, gradient multiplied by ``g``."""
    y = x * g
    return (x - y).detach() + y


def mse_step(x: torch.Tensor, bits: int, signed: bool, candidates: int = 48, max_values: int = 16_384) -> float:
    """The step minimising ``||quant(x) - x||^2`` over a grid of fractions of ``max|x| / Qp`` (on an evenly
    strided subsample of at most ``max_values`` values plus the extremes, so it stays cheap on big tensors)."""
    x = x.detach().flatten().float()
    if x.numel() > max_values:
        x = torch.cat([x[:: x.numel() // max_values], x.min().view(1), x.max().view(1)])
    qmin, qmax = qrange(bits, signed)
    top = float(x.abs().max()) / max(qmax, 1)
    if top == 0.0:
        return 1.0
    steps = torch.linspace(top / candidates, top, candidates).view(-1, 1)
    errs = ((torch.clamp(torch.round(x / steps), qmin, qmax) * steps - x) ** 2).mean(1)
    return float(steps[int(errs.argmin())])


class LsqQuantizer(Quantizer):
    """Learned-step quantizer. ``signed=None``: decided from the first batch seen (activations).
    ``channels > 0``: one step per output channel (weights)."""

    def __init__(self, bits: int, signed: Optional[bool] = None, channels: int = 0):
        super().__init__(bits, signed=bool(signed), per_channel=channels > 0)
        self.step = nn.Parameter(torch.ones(max(channels, 1)))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("is_signed", torch.tensor(bool(signed)))
        self._auto_sign = signed is None

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        if self._auto_sign:
            self.is_signed.fill_(bool(x.min() < 0))
        signed = bool(self.is_signed)
        if self.per_channel:
            steps = [mse_step(c, self.bits, signed) for c in x.detach().flatten(1)]
            self.step.copy_(torch.tensor(steps))
        else:
            self.step.fill_(mse_step(x, self.bits, signed))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        if self.calibrating:
            return x
        qmin, qmax = qrange(self.bits, bool(self.is_signed))
        per_step = x.numel() // self.step.numel()
        s = grad_scale(self.step.abs() + 1e-12, 1.0 / (per_step * max(qmax, 1)) ** 0.5)
        if self.per_channel:
            s = channel_view(s, x)
        return round_ste(torch.clamp(x / s, qmin, qmax)) * s

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={bool(self.is_signed)}, per_channel={self.per_channel}"


def bits_for_layers(values: Sequence[int], names: List[str], flag: str) -> Dict[str, int]:
    """Map a bit list to layer names: one value for all layers, or exactly one per layer."""
    if len(values) == 1:
        values = list(values) * len(names)
    if len(values) != len(names):
        raise UserError(f"{flag} has {len(values)} values but the model has {len(names)} conv/linear layers "
                        f"({', '.join(names)}); give one value or one per layer")
    for v in values:
        if not 2 <= v <= FLOAT_BITS:
            raise UserError(f"{flag}: bit widths must be 2..{FLOAT_BITS} (32 = keep float), got {v}")
    return dict(zip(names, (int(v) for v in values)))


def lsq_model(model: nn.Module, w_bits: Dict[str, int], a_bits: Dict[str, int],
              per_channel_weights: bool = False) -> nn.Module:
    """A copy of ``model`` with LSQ quantizers at the given per-layer bits (not yet initialized)."""
    def make(name: str, layer: nn.Module):
        wb, ab = w_bits.get(name, FLOAT_BITS), a_bits.get(name, FLOAT_BITS)
        channels = layer.weight.shape[0] if per_channel_weights else 0
        w = LsqQuantizer(wb, signed=True, channels=channels) if wb < FLOAT_BITS else None
        a = LsqQuantizer(ab, signed=None) if ab < FLOAT_BITS else None
        return w, a

    return quantize_layers(model, make)


def init_lsq(qmodel: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Initialize every step from the first batch (activations see the float inputs of each layer)."""
    return calibrate(qmodel, list(batches)[:1])


def step_parameters(qmodel: nn.Module) -> List[nn.Parameter]:
    return [m.step for m in qmodel.modules() if isinstance(m, LsqQuantizer)]


def format_bits(name: str, bits: Dict[str, int], names: List[str]) -> str:
    """``w_bit=[8, 4, …]`` in layer order (32 = float)."""
    return f"{name}=[{', '.join(str(bits.get(n, FLOAT_BITS)) for n in names)}]"
