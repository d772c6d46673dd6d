"""Data-driven pruning criteria: APoZ, ThiNet, first-order Taylor — and the structural look-ups they share.

Each criterion collects statistics in ``prepare(model, batches, roots)`` from at most ``limit`` batches
(a batch is ``x`` or ``(x, labels, ...)``) and then ranks a root's output channels (lowest removed first):

- ``apoz``   Average Percentage of Zeros of the channel's activation after its nonlinearity (ReLU, PReLU…).
             A value counts as "zero" when it is <= 0, so ReLU (exact zeros) and PReLU (negative slope) read alike.
- ``thinet`` ThiNet's greedy selection: channels whose removal least changes the *next* layer's output on sampled
             positions go first (the set removed so far is kept, each step adds the channel that keeps the
             reconstruction error smallest).
- ``taylor`` Molchanov et al.: |mean over positions of activation x gradient|, averaged over samples. The loss is
             cross-entropy when batches carry labels, else the output energy (see ``taylor_loss``).

The activation of a root is found by a forward trace: the chain root -> BN -> activation of modules that each
consume the previous one's output. Which layers consume a group (ThiNet) and which BNs belong to it (the BN
criteria in ``compression_tool.engine.criteria.stats``) come from the dependency group itself (``coupled_layers``).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.criteria.base import Criterion, _register
from compression_tool.engine.criteria.weight import L1
from compression_tool.engine.groups import Coupled, _param_dtype, activation_sites, coupled_layers
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]

# ---------------------------------------------------------------- batches

def split(batch) -> Batch:
    """``x`` or ``(x, labels, ...)`` -> ``(x, labels or None)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise UserError(f"criterion data: expected tensors or (inputs, labels) batches, got {type(batch).__name__}")


def take_batches(batches: Iterable, limit: int, who: str) -> List[Batch]:
    """The first ``limit`` batches as ``(x, labels)`` pairs; a loader that yields nothing is a user error."""
    out: List[Batch] = []
    for b in batches:
        if len(out) >= max(limit, 1):
            break
        out.append(split(b))
    if not out:
        raise UserError(f"{who}: the data loader yielded no batches")
    return out


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, positions)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


# ---------------------------------------------------------------- base

class DataCriterion(Criterion):
    """Scores computed in ``prepare``; ``channel_scores`` only looks them up."""
    needs_data = True

    def __init__(self, limit: int = 5, seed: int = 0):
        self.limit, self.seed = limit, seed
        self.scores: Dict[str, torch.Tensor] = {}

    def channel_scores(self, root_name, root):
        if root_name not in self.scores:
            raise UserError(f"{self.name}: no statistics for {root_name!r}; call prepare(model, batches, roots) "
                            "with that layer among the roots first")
        return self.scores[root_name]


class _SiteHooks:
    """Forward hooks on each root's activation site, calling ``fn(root_name, output)``."""

    def __init__(self, sites: Dict[str, nn.Module], fn):
        self.handles = [m.register_forward_hook(lambda mod, i, o, n=n: fn(n, o)) for n, m in sites.items()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------- APoZ

@_register
class APoZ(DataCriterion):
    """Average Percentage of Zeros after the nonlinearity; score = 1 - APoZ (mostly-zero channels go first)."""
    name, pruner_class = "apoz", "ActivationAPoZRankedFilterPruner"

    def __init__(self, limit: int = 5, seed: int = 0):
        super().__init__(limit, seed)
        self.apoz: Dict[str, torch.Tensor] = {}

    def prepare(self, model, batches, roots):
        data = take_batches(batches, self.limit, self.name)
        sites = activation_sites(model, data[0][0], roots)
        zeros: Dict[str, torch.Tensor] = {}
        total: Dict[str, int] = {}

        def count(name, out):
            a = per_channel(out.detach())
            zeros[name] = zeros.get(name, 0) + (a <= 0).sum((0, 2)).double().cpu()
            total[name] = total.get(name, 0) + a.shape[0] * a.shape[2]

        was = model.training
        model.eval()
        try:
            with _SiteHooks(sites, count), torch.no_grad():
                for x, _ in data:
                    model(_param_dtype(model, x))
        finally:
            model.train(was)
        for name in roots:
            if name not in zeros:
                raise UserError(f"apoz: layer {name!r} did not run in the model's forward pass")
            self.apoz[name] = (zeros[name] / total[name]).float()
            self.scores[name] = 1.0 - self.apoz[name]


# ---------------------------------------------------------------- Taylor

def taylor_loss(out, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy when the batch has class labels; otherwise the output energy 0.5 * mean(out^2), whose
    first-order change measures how much a channel moves the output (works for logits and embeddings alike,
    and does not saturate the way cross-entropy on the model's own predictions does)."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    labels = labels.to(out.device) if isinstance(labels, torch.Tensor) else labels
    if labels is not None and out.dim() == 2 and labels.dtype == torch.long and labels.shape == out.shape[:1]:
        return F.cross_entropy(out, labels)
    return 0.5 * out.pow(2).mean()


@_register
class Taylor(DataCriterion):
    """First-order Taylor expansion of the loss change when a channel's activation is set to zero."""
    name, pruner_class = "taylor", "TaylorStructureParameterPruner"

    def prepare(self, model, batches, roots):
        data = take_batches(batches, self.limit, self.name)
        sites = activation_sites(model, data[0][0], roots)
        acts: Dict[str, torch.Tensor] = {}
        sums: Dict[str, torch.Tensor] = {}
        n = 0
        was = model.training
        model.eval()
        try:
            with _SiteHooks(sites, acts.__setitem__):
                for x, y in data:
                    acts.clear()
                    loss = taylor_loss(model(_param_dtype(model, x).detach().clone().requires_grad_(True)), y)
                    names = [k for k in roots if k in acts and acts[k].requires_grad]
                    grads = torch.autograd.grad(loss, [acts[k] for k in names], allow_unused=True)
                    for k, g in zip(names, grads):
                        if g is None:
                            g = torch.zeros_like(acts[k])
                        s = per_channel(acts[k].detach() * g).mean(2).abs().sum(0).double().cpu()
                        sums[k] = sums.get(k, 0) + s
                    n += x.shape[0]
        finally:
            model.train(was)
        for k, root in roots.items():
            channels = root.weight.shape[0]
            self.scores[k] = (sums[k] / n).float() if k in sums else torch.zeros(channels)


# ---------------------------------------------------------------- ThiNet

def _padding(conv: nn.Conv2d) -> Tuple[int, int]:
    if isinstance(conv.padding, str):
        raise UserError(f"thinet: string padding {conv.padding!r} is not supported ({conv})")
    return conv.padding


def conv_contributions(conv: nn.Conv2d, x: torch.Tensor, img: torch.Tensor, o: torch.Tensor, i: torch.Tensor,
                       j: torch.Tensor) -> torch.Tensor:
    """Each input channel's share of outputs ``conv(x)[img, o, i, j]`` (bias excluded): (samples, in_channels)."""
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, _padding(conv)
    xp = F.pad(x, (pw, pw, ph, ph))
    rows = (i * sh)[:, None] + torch.arange(kh) * dh                     # (samples, kh)
    cols = (j * sw)[:, None] + torch.arange(kw) * dw                     # (samples, kw)
    patch = xp[img[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]          # (samples, c, kh, kw)
    return (patch * conv.weight.detach()[o]).sum((2, 3))


def sampled_contributions(layer: nn.Module, x: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
    """Contributions to ``samples`` random outputs per image (random position and output channel)."""
    if isinstance(layer, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        img = torch.arange(x.shape[0]).repeat_interleave(samples)
        o = torch.randint(layer.out_features, (len(img),), generator=gen)
        return x[img] * layer.weight.detach()[o]
    oh, ow = (1 + (n + 2 * p - d * (k - 1) - 1) // st for n, p, d, k, st in
              zip(x.shape[2:], _padding(layer), layer.dilation, layer.kernel_size, layer.stride))
    img = torch.arange(x.shape[0]).repeat_interleave(samples)
    m = len(img)
    o, i, j = (torch.randint(k, (m,), generator=gen) for k in (layer.out_channels, oh, ow))
    return conv_contributions(layer, x, img, o, i, j)


def greedy_removal_order(z: np.ndarray) -> np.ndarray:
    """ThiNet's greedy step: ``z`` is (samples, channels) of contributions; returns each channel's removal step.

    Step t removes the channel that, together with those removed before, least changes the summed output."""
    channels = z.shape[1]
    s = np.zeros(z.shape[0])
    norms = (z * z).sum(0)
    alive = np.ones(channels, dtype=bool)
    rank = np.zeros(channels)
    for step in range(channels):
        cost = s @ s + 2 * (s @ z) + norms
        cost[~alive] = np.inf
        c = int(np.argmin(cost))
        rank[c], alive[c] = step, False
        s = s + z[:, c]
    return rank


@_register
class ThiNet(DataCriterion):
    """Greedy channel selection minimising the next layer's reconstruction error (Luo et al., ThiNet)."""
    name, pruner_class = "thinet", "ThiNetStructureParameterPruner"

    def __init__(self, limit: int = 5, seed: int = 0, samples: int = 10):
        super().__init__(limit, seed)
        self.samples = samples

    def prepare(self, model, batches, roots):
        data = take_batches(batches, self.limit, self.name)
        layers = coupled_layers(model, _param_dtype(model, data[0][0]), list(roots))
        consumers = {name: [c for c in cs if not c.out and _is_dense(c.module)] for name, cs in layers.items()}
        gen = torch.Generator().manual_seed(self.seed)
        parts: Dict[str, List[torch.Tensor]] = {name: [] for name in roots}

        def collect(root_name: str, c: Coupled):
            def fn(mod, inp, out):
                z = sampled_contributions(mod, inp[0].detach().cpu(), self.samples, gen)
                parts[root_name].append(torch.stack([z[:, b].sum(1) for b in c.blocks], 1).double())
            return fn

        hooks = [c.module.register_forward_hook(collect(n, c)) for n, cs in consumers.items() for c in cs]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for x, _ in data:
                    model(_param_dtype(model, x))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        for name, root in roots.items():
            if not parts[name]:
                log.info("thinet: no conv/linear consumes %s; ranking it by L1", name)
                self.scores[name] = L1().channel_scores(name, root)
                continue
            z = torch.cat(parts[name]).numpy()
            self.scores[name] = torch.from_numpy(greedy_removal_order(z)).float()


def _is_dense(m: nn.Module) -> bool:
    """A consumer ThiNet can reconstruct: a Linear or an ungrouped 2-d convolution."""
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
