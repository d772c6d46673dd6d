"""Layer handlers torch-pruning lacks. ``CUSTOM_PRUNERS`` maps a module class to its handler and is
passed to every dependency graph we build (see compression_tool.engine.groups). Users add their own with
``register_handler``.

A handler whose ``prune_out_channels`` and ``prune_in_channels`` differ tells torch-pruning that the layer's
input and output channels are independent (like a conv); equal ones couple them (like BN).
"""
from __future__ import annotations

from typing import Dict, Type

import torch.nn as nn
from torch_pruning.pruner.function import BasePruningFunc

from model_define.resnet_cifar import PadShortcut

CUSTOM_PRUNERS: Dict[Type[nn.Module], BasePruningFunc] = {}


def register_handler(module_cls: Type[nn.Module], handler: BasePruningFunc) -> None:
    """Teach the thinning engine a new layer type."""
    CUSTOM_PRUNERS[module_cls] = handler


class PadShortcutHandler(BasePruningFunc):
    """The CIFAR ResNets' parameter-free zero-padding shortcut: input channel i feeds output pos[i].

    Removing stage-k output channels drops them (and the input channels mapped there); removing
    stage-(k-1) channels drops them from the map. This is what lets residual-coupled stages of unequal
    width be thinned independently."""

    TARGET_MODULES = PadShortcut

    def prune_out_channels(self, layer: PadShortcut, idxs) -> nn.Module:
        layer.remove_outputs(idxs)
        return layer

    def prune_in_channels(self, layer: PadShortcut, idxs) -> nn.Module:
        layer.remove_inputs(idxs)
        return layer

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.planes_out

    def get_in_channels(self, layer: PadShortcut) -> int:
        return layer.planes_in


register_handler(PadShortcut, PadShortcutHandler())
