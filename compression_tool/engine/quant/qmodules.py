"""Put fake-quantizers on every Conv/Linear: weights through ``w_quant``, input activations through ``a_quant``.

``quantize_layers(model, make)`` returns a copy whose Conv/Linear layers are wrapped in ``QuantLayer``;
``make(name, layer)`` returns the ``(w_quant, a_quant)`` pair for that layer (either may be None: not
quantized). Layer names are those of ``model.named_modules()``, in order (``quant_layer_names``).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from compression_tool.engine.quant.quantizers import Quantizer

QUANT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
MakeQuantizers = Callable[[str, nn.Module], Tuple[Optional[Quantizer], Optional[Quantizer]]]


class QuantLayer(nn.Module):
    """A Conv/Linear whose weight and input pass through fake-quantizers."""

    def __init__(self, layer: nn.Module, w_quant: Optional[Quantizer], a_quant: Optional[Quantizer]):
        super().__init__()
        self.layer, self.w_quant, self.a_quant = layer, w_quant, a_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_quant is not None:
            x = self.a_quant(x)
        w = self.layer.weight if self.w_quant is None else self.w_quant(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def quant_layer_names(model: nn.Module) -> List[str]:
    """Names of the Conv/Linear layers that ``quantize_layers`` wraps, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def quantize_layers(model: nn.Module, make: MakeQuantizers) -> nn.Module:
    """A copy of ``model`` with every Conv/Linear wrapped in a ``QuantLayer`` (see module doc)."""
    q = copy.deepcopy(model)
    for name in quant_layer_names(q):
        layer = q.get_submodule(name)
        w_quant, a_quant = make(name, layer)
        _set_module(q, name, QuantLayer(layer, w_quant, a_quant))
    return q


def quant_layers(model: nn.Module) -> Dict[str, QuantLayer]:
    """The ``QuantLayer``s of a quantized model, by the original layer name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def quantizers(model: nn.Module) -> Iterator[Quantizer]:
    return (m for m in model.modules() if isinstance(m, Quantizer))


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every quantizer only observes its input."""
    qs = list(quantizers(model))
    for q in qs:
        q.calibrating = True
    try:
        yield model
    finally:
        for q in qs:
            q.calibrating = False


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Run ``batches`` through ``model`` (eval mode) with every quantizer observing; returns the model."""
    model.eval()
    with calibrating(model):
        for x in tqdm(batches, desc="calibrate", leave=False):
            model(x)
    return model


@dataclass
class InputSample:
    """A layer's input activations: a random sample of values, exact range, elements per example."""
    values: torch.Tensor
    lo: float
    hi: float
    numel_per_example: int


def _subsample(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    flat = x.detach().flatten()
    if flat.numel() <= k:
        return flat.clone()
    return flat[torch.randint(flat.numel(), (k,), generator=gen)]


@torch.no_grad()
def capture_inputs(model: nn.Module, batches: Iterable[torch.Tensor], names: Optional[List[str]] = None,
                   max_values: int = 100_000, seed: int = 0) -> Dict[str, InputSample]:
    """Input activations of the named Conv/Linear layers (default: all) over ``batches``, as samples of at
    most ``max_values`` values per batch (memory stays small on large models) with their exact range."""
    names = quant_layer_names(model) if names is None else names
    gen = torch.Generator().manual_seed(seed)
    seen: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
    ranges: Dict[str, List[float]] = {}
    sizes: Dict[str, int] = {}

    def hook(name: str):
        def record(mod: nn.Module, args: tuple) -> None:
            x = args[0]
            seen[name].append(_subsample(x, max_values, gen))
            lo, hi = ranges.get(name, [float("inf"), float("-inf")])
            ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
            sizes[name] = x[0].numel()
        return record

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {n: InputSample(torch.cat(seen[n]), *ranges[n], sizes[n]) for n in names if seen[n]}


def input_batches(loader: Iterable, n: int) -> List[torch.Tensor]:
    """The inputs of the first ``n`` batches of a loader yielding ``(x, y)`` or ``x``."""
    out: List[torch.Tensor] = []
    for batch in loader:
        if len(out) >= n:
            break
        out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    if not out:
        raise ValueError("the loader yielded no batches")
    return out
