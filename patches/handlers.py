"""Layer handlers torch-pruning lacks. ``CUSTOM_PRUNERS`` maps a module class to its handler and is
passed to every dependency graph we build (see core.groups)."""
from __future__ import annotations

from typing import Dict, Type

import torch.nn as nn
from torch_pruning.pruner.function import BasePruningFunc

CUSTOM_PRUNERS: Dict[Type[nn.Module], BasePruningFunc] = {}


def register_handler(module_cls: Type[nn.Module], handler: BasePruningFunc) -> None:
    """Teach the thinning engine a new layer type (users call this for their own layers too)."""
    CUSTOM_PRUNERS[module_cls] = handler
