"""Model registry: name -> constructor plus the facts the tools need (input size, kind)."""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from compression_tool.io.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    input_size: Tuple[int, int, int]          # default (C, H, W)
    kind: str                                  # "classifier" | "embedder"
    defaults: Dict[str, object] = field(default_factory=dict)
    # input normalisation the weights expect, per channel on the [0, 1] scale (timm's default_cfg idea);
    # None: the data kind's default (compression_tool.data.normalise)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def build(self, **kwargs) -> nn.Module:
        return self.builder(**{**self.defaults, **kwargs})

    def build_for(self, input_size: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
        """Build for a (C, H, W) input: models whose layers depend on H, W (GDC kernel, flatten size) get
        ``input_size=(H, W)``; ``in_channels`` follows C when it differs from the default."""
        if input_size is not None:
            if len(input_size) != 3:          # (H, W) would be read as C=H, H=W and fail deep inside the model
                raise UserError(f"model {self.name}: input_size must be (C, H, W), e.g. (3, 112, 96), got "
                                f"{tuple(input_size)}")
            params = inspect.signature(self.builder).parameters
            if "input_size" in params and tuple(input_size[1:]) != tuple(self.input_size[1:]):
                kwargs.setdefault("input_size", tuple(int(v) for v in input_size[1:]))
            if "in_channels" in params and int(input_size[0]) != self.input_size[0]:
                kwargs.setdefault("in_channels", int(input_size[0]))
        return self.build(**kwargs)


_REGISTRY: Dict[str, ModelSpec] = {}
log = logging.getLogger(__name__)

# The reference tools' model names (OneFlow platform, the Distiller-fork compression_tool, MaskImpt) -> ours.
ALIASES: Dict[str, str] = {
    "dnn_2": "dnn2", "dnn_4": "dnn4",                 # OneFlow
    "resnet": "resnet20",                              # OneFlow's CIFAR/MNIST ResNet: our CIFAR ResNet-20
    "resnet50": "resnet_ir50", "resnet100": "resnet_ir100",   # the face tool's insightface ResNets (IR blocks)
}
_NOTED: set = set()


def register(name: str, input_size: Tuple[int, int, int], kind: str = "classifier",
             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, **defaults):
    """Decorator: register a constructor under ``name`` with its default (C, H, W) input, its kind and the input
    normalisation its weights expect. Users bring their own model this way."""
    if kind not in ("classifier", "embedder"):
        raise ValueError(f"kind must be classifier or embedder, not {kind!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(name, fn, tuple(input_size), kind, dict(defaults),
                                    tuple(mean) if mean is not None else None, tuple(std) if std is not None else None)
        return fn

    return deco


def canonical_name(name: str) -> str:
    """``name`` in this project's zoo: another tool's name (``dnn_2``, ``resnet100``…) is mapped, with a one-line
    note the first time; a registered name always wins over an alias."""
    if name in _REGISTRY or name not in ALIASES:
        return name
    if name not in _NOTED:
        _NOTED.add(name)
        log.warning("note: model %r is called %r here", name, ALIASES[name])
    return ALIASES[name]


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[canonical_name(name)]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def get_model(name: str, **kwargs) -> nn.Module:
    return model_spec(name).build(**kwargs)


def list_models() -> List[str]:
    return sorted(_REGISTRY)
