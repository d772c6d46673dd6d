"""Label-free fidelity of an embedder: how closely a pruned model's embeddings follow the unpruned model's.

``fidelity`` is the mean cosine similarity between the two models' (L2-normalised) embeddings of the same images,
``fidelity_p05`` its 5th percentile (the worst-served images). No identities or pairs are needed, and the value
has far less sampling noise than TPR at a low FPR measured on a few hundred pairs.
"""
from __future__ import annotations

from typing import Dict

import torch

FIDELITY_METRICS = ("fidelity", "fidelity_p05")


def fidelity(embeddings: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    """Both arguments: L2-normalised [N, D] embeddings of the same N images (``verification.embed_images``)."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"fidelity: embeddings {tuple(embeddings.shape)} vs reference {tuple(reference.shape)}")
    cos = (embeddings * reference).sum(1).double()
    return {"fidelity": float(cos.mean()), "fidelity_p05": float(torch.quantile(cos, 0.05))}
