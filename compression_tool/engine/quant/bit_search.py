"""Per-layer bit widths under an average-bit budget, from layer sensitivity.

Sensitivity of layer ``l`` at ``b`` bits: quantize only that layer's weights (or only its input activations)
to ``b`` bits with the MSE-optimal step, run the calibration batches, and measure the output distortion
``sum ||f_q(x) - f(x)||^2 / sum ||f(x)||^2`` (label-free, so it works for classifiers and embedders alike).

Assignment: start every layer at ``max_bw`` and, while the average is over budget, lower by one bit the
layer whose extra distortion per saved bit is smallest (distortions are taken as additive across layers).
The average is weighted by size: weight elements for weights, input elements per example for activations,
i.e. it is the mean number of bits per stored weight / per activation value.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.quant.lsq import LsqQuantizer
from compression_tool.engine.quant.qmodules import (
    QuantLayer,
    capture_inputs,
    quant_layer_names,
    quant_layers,
    quantize_layers,
)
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Sensitivity:
    """``dist[layer][bits]`` output distortion; ``size[layer]`` the element count used for averaging."""
    dist: Dict[str, Dict[int, float]]
    size: Dict[str, int]


@torch.no_grad()
def _distortion(model: nn.Module, batches: Sequence[torch.Tensor], ref: List[torch.Tensor]) -> float:
    num = sum(float(((model(x) - r) ** 2).sum()) for x, r in zip(batches, ref))
    return num / max(sum(float((r ** 2).sum()) for r in ref), 1e-12)


def _with_one_quantizer(layer: QuantLayer, which: str, q: LsqQuantizer) -> None:
    layer.w_quant, layer.a_quant = (q, None) if which == "weight" else (None, q)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, batches: Sequence[torch.Tensor], bits: Sequence[int], which: str
                      ) -> Sensitivity:
    """Distortion of quantizing each layer alone (``which`` = "weight" or "act") to each of ``bits``."""
    if which not in ("weight", "act"):
        raise ValueError(f"which must be 'weight' or 'act', not {which!r}")
    model = model.eval()
    names = quant_layer_names(model)
    ref = [model(x) for x in batches]
    inputs = capture_inputs(model, batches, names) if which == "act" else {}
    q = quantize_layers(model, lambda n, m: (None, None)).eval()
    layers = quant_layers(q)
    dist: Dict[str, Dict[int, float]] = {}
    for name in tqdm(names, desc=f"{which} sensitivity", leave=False):
        layer, dist[name] = layers[name], {}
        sample = layer.layer.weight if which == "weight" else inputs[name].values
        for b in bits:
            quantizer = LsqQuantizer(b, signed=True if which == "weight" else None)
            quantizer.initialize(sample)
            _with_one_quantizer(layer, which, quantizer)
            dist[name][b] = _distortion(q, batches, ref)
        layer.w_quant = layer.a_quant = None
    size = {n: (model.get_submodule(n).weight.numel() if which == "weight" else inputs[n].numel_per_example)
            for n in names}
    return Sensitivity(dist, size)


def average_bits(bits: Dict[str, int], size: Dict[str, int]) -> float:
    total = sum(size[n] for n in bits)
    return sum(bits[n] * size[n] for n in bits) / max(total, 1)


def assign_bits(sens: Sensitivity, budget: float, min_bw: int = 2, max_bw: int = 8) -> Dict[str, int]:
    """Greedy per-layer bits with size-weighted average ``<= budget`` (see module doc)."""
    if not min_bw <= max_bw:
        raise UserError(f"--min_bw {min_bw} is larger than --max_bw {max_bw}")
    if budget < min_bw:
        raise UserError(f"average-bit budget {budget} is below --min_bw {min_bw}")
    bits = {n: max_bw for n in sens.dist}

    def cost(n: str) -> float:
        b = bits[n]
        extra = sens.dist[n].get(b - 1, float("inf")) - sens.dist[n].get(b, 0.0)
        return max(extra, 0.0) / sens.size[n]

    while average_bits(bits, sens.size) > budget + 1e-9:
        lowerable = [n for n in bits if bits[n] > min_bw]
        best = min(lowerable, key=cost)
        bits[best] -= 1
    log.info("assigned bits: average %.3f (budget %.3f)", average_bits(bits, sens.size), budget)
    return bits


def search_bits(model: nn.Module, batches: Sequence[torch.Tensor], budget: float, which: str,
                min_bw: int = 2, max_bw: int = 8) -> Dict[str, int]:
    """Sensitivity then greedy assignment (``which`` = "weight" or "act")."""
    sens = layer_sensitivity(model, batches, list(range(min_bw, max_bw + 1)), which)
    return assign_bits(sens, budget, min_bw, max_bw)
