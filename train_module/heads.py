"""Margin heads for face-embedder training: ArcFace (additive angular) and CosFace (additive cosine).

Both take ``(embeddings, labels)`` and return logits for cross-entropy. Embeddings and class weights are
L2-normalised, so every logit is ``s * cos(angle)``; the target class gets the margin. With ``labels=None``
the head returns the plain scaled cosines (no margin), e.g. for monitoring.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.io.errors import UserError


class _CosineHead(nn.Module):
    """Normalised weight matrix (num_classes x embedding_size); subclasses add the margin."""

    def __init__(self, embedding_size: int, num_classes: int, s: float):
        super().__init__()
        if embedding_size < 1 or num_classes < 2:
            raise UserError(f"margin head needs embedding_size >= 1 and num_classes >= 2, "
                            f"got {embedding_size} and {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(angle) between each embedding and each class centre, shape (B, num_classes)."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return self.s * cos
        one_hot = F.one_hot(labels.long(), self.num_classes).to(cos.dtype)
        target = self.target_logit(cos)
        return self.s * (one_hot * target + (1.0 - one_hot) * cos)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}"


class ArcFace(_CosineHead):
    """Additive angular margin: the target logit is ``s * cos(theta + m)``.

    ``cos(theta + m)`` stops decreasing once ``theta + m > pi``; as in insightface, past that point
    (``theta > pi - m``) the target uses ``cos(theta) - m * sin(m)`` instead, which keeps the logit monotone in
    theta. With ``easy_margin`` the margin is only applied where ``cos(theta) > 0``.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(embedding_size, num_classes, s)
        if not 0.0 <= m < math.pi:
            raise UserError(f"ArcFace margin m must be in [0, pi), got {m}")
        self.m = float(m)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)          # cos(theta) below this means theta + m > pi
        self.mm = math.sin(math.pi - m) * m      # = m * sin(m): the fallback penalty

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=0.0, max=1.0))
        phi = cos * self.cos_m - sin * self.sin_m   # cos(theta + m)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > self.th, phi, cos - self.mm)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, easy_margin={self.easy_margin}"


class CosFace(_CosineHead):
    """Additive cosine margin (large-margin cosine loss): the target logit is ``s * (cos(theta) - m)``."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


HEADS = {"arcface": ArcFace, "cosface": CosFace}


def make_head(name: str, embedding_size: int, num_classes: int, s: Optional[float] = None,
              m: Optional[float] = None, **kwargs) -> _CosineHead:
    """Build a margin head by name (``arcface`` | ``cosface``); ``s``/``m`` default to the head's own."""
    try:
        cls = HEADS[name.lower()]
    except KeyError:
        raise UserError(f"unknown head {name!r}; expected one of: {', '.join(sorted(HEADS))}") from None
    if s is not None:
        kwargs["s"] = s
    if m is not None:
        kwargs["m"] = m
    return cls(embedding_size, num_classes, **kwargs)
