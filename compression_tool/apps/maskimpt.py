"""MaskImpt's API (``MaskFPGM``, ``MaskThiNet``, ``MaskAPoZ``, ``MaskFilterNorm``) over :class:`ChannelPruner`:

    mask = MaskFPGM(model, pre_layer=False, rate_dist_per_layer=0.3, input_shape=(1, 3, 224, 224))
    mask.make()                          # trace the model, find the prunable groups
    mask.do_mask()                       # soft pruning: 0/1 masks, same parameter count
    mask.if_zero()                       # {layer: fraction of zero output channels}, printed
    pruned = mask.generate_pruned_model()   # hard pruning: the masked channels are cut out (same outputs)

With ``pre_layer=True`` every ``do_mask()`` masks one more group (model order) and returns True, then False once
every group is done, so training can run between layers as MaskImpt documents. ``rate_dist_per_layer`` is one
fraction for every group or ``{layer or weight name: fraction}``. ``ThiNet`` and ``APoZ`` need activations: pass
``dataloader=`` (batches of images or (images, labels)); without it they see ``input_shape`` random images.
Differences from MaskImpt: the model is thinned in place and also returned; ``use_cuda`` is accepted but the
project runs on the CPU; output layers (logits) are never pruned; nn.ModuleList models are supported.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from compression_tool.engine.strategies import ChannelPruner, format_zero_report, if_zero
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

Rate = Union[float, Mapping[str, float]]


class Mask:
    """One MaskImpt pruning algorithm; subclasses set ``criterion`` (a project criterion name)."""

    criterion = "l1"

    def __init__(self, model: nn.Module, pre_layer: bool = False, rate_dist_per_layer: Rate = 0.3,
                 input_shape: Sequence[int] = (1, 3, 224, 224), use_cuda: bool = False,
                 dataloader: Optional[Iterable] = None, max_batches: int = 5, ignore: Sequence[str] = (),
                 seed: int = 0):
        if len(tuple(input_shape)) != 4:
            raise UserError(f"input_shape: expected (B, C, H, W) as MaskImpt takes it, got {tuple(input_shape)}")
        if use_cuda:
            log.warning("note: use_cuda=True is ignored: the project prunes on the CPU")
        self.model, self.pre_layer, self.rate = model, bool(pre_layer), rate_dist_per_layer
        self.input_shape = tuple(int(v) for v in input_shape)
        self.dataloader, self.max_batches, self.ignore, self.seed = dataloader, max_batches, tuple(ignore), seed
        self.pruner: Optional[ChannelPruner] = None
        self._todo: List[str] = []
        self._done = False

    # ------------------------------------------------------------ MaskImpt steps
    def _batches(self) -> List[torch.Tensor]:
        if self.dataloader is None:
            g = torch.Generator().manual_seed(self.seed)
            return [torch.randn(max(self.input_shape[0], 8), *self.input_shape[1:], generator=g)]
        out = []
        for b in self.dataloader:
            out.append(b[0] if isinstance(b, (list, tuple)) else b)
            if len(out) >= self.max_batches:
                break
        if not out:
            raise UserError("dataloader yielded no batches")
        return out

    def make(self) -> "Mask":
        """Trace the model and find its prunable groups (MaskImpt: build the masks and hooks)."""
        was_training = self.model.training
        self.model.eval()
        example = torch.zeros(1, *self.input_shape[1:])
        with torch.enable_grad():
            self.pruner = ChannelPruner(self.model, example, self.criterion, ignore=self.ignore,
                                        batches=self._batches(), seed=self.seed)
        self.model.train(was_training)
        if isinstance(self.rate, Mapping):
            self._todo = [self.pruner.index.find(name, source="rate_dist_per_layer").name for name in self.rate]
        else:
            self._todo = [g.name for g in self.pruner.index.groups]
        self._done = False
        return self

    def _rate_of(self, group: str) -> float:
        if not isinstance(self.rate, Mapping):
            return float(self.rate)
        for name, r in self.rate.items():
            if self._need().index.find(name).name == group:
                return float(r)
        raise KeyError(group)

    def _need(self) -> ChannelPruner:
        if self.pruner is None:
            raise UserError("call make() before do_mask() / if_zero() / generate_pruned_model()")
        return self.pruner

    def do_mask(self) -> bool:
        """Soft-prune: all groups at once, or with ``pre_layer`` the next group. True when something was masked."""
        pruner = self._need()
        if self.pre_layer:
            if not self._todo:
                return False
            name = self._todo.pop(0)
            pruner.refresh_statistics()  # data-driven criteria see the layers masked so far (as MaskImpt re-runs)
            pruner.soft({name: self._rate_of(name)})
            log.info("masked %s (%d groups left)", name, len(self._todo))
            return True
        if self._done:
            return False
        pruner.soft(self.rate)
        self._todo, self._done = [], True
        return True

    def if_zero(self) -> Dict[str, float]:
        """{layer: fraction of its output channels whose weights are all zero}; printed as MaskImpt does."""
        report = if_zero(self.model)
        for line in format_zero_report(report):
            print(line)
        return report

    def generate_pruned_model(self) -> nn.Module:
        """Hard-prune: cut the masked channels out (convs, BN statistics, biases, the Linear after them)."""
        pruner = self._need()
        with torch.enable_grad():       # tracing the dependency graph needs autograd, even inside no_grad()
            self.keep = pruner.hard()
        return self.model

    def settings(self) -> Dict[str, Any]:
        return {"class": type(self).__name__, "criterion": self.criterion, "pre_layer": self.pre_layer,
                "rate_dist_per_layer": self.rate, "input_shape": list(self.input_shape)}


class MaskFPGM(Mask):
    """Filter pruning via geometric median (He et al. 2019)."""
    criterion = "fpgm"


class MaskThiNet(Mask):
    """ThiNet (Luo et al. 2017): channels whose removal changes the next layer's input least; needs data."""
    criterion = "thinet"


class MaskAPoZ(Mask):
    """Average percentage of zeros after the activation (Hu et al. 2016); needs data."""
    criterion = "apoz"


class MaskFilterNorm(Mask):
    """Smallest-L1-norm filters (Li et al. 2017, "Pruning filters for efficient ConvNets")."""
    criterion = "l1"


MASKS = {"MaskFPGM": MaskFPGM, "MaskThiNet": MaskThiNet, "MaskAPoZ": MaskAPoZ, "MaskFilterNorm": MaskFilterNorm}
