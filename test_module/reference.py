"""Reference checks of the pretrained checkpoints: CIFAR JPEG top-1, ORL 1-NN identification and pair AUC.

* ORL faces (92x112 grey) are copied to three channels and padded with two black columns on each side to 96 px;
  embeddings of the image and its horizontal flip are concatenated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from compression_tool.data.imagefolder import load_image_folder
from compression_tool.data.normalise import FACE_MEAN, FACE_STD, RGB_MEAN, RGB_STD
from test_module.verification import embed_images


@torch.no_grad()
def forward_batches(model: nn.Module, x: torch.Tensor, batch_size: int = 256, desc: str = "forward"
                    ) -> torch.Tensor:
    """``model(x)`` in eval mode, batch by batch, concatenated."""
    model.eval()
    chunks = torch.split(x, batch_size)
    return torch.cat([model(b) for b in tqdm(chunks, desc=desc, leave=False, disable=len(chunks) < 4)])


def cifar_jpeg_tensors(root: Path, per_class: Optional[int] = None, seed: int = 0
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 JPEG test images under ``root/<class>/``, normalised for the pretrained CIFAR ResNets."""
    x, y, _ = load_image_folder(root, (32, 32), RGB_MEAN, RGB_STD, per_class=per_class, seed=seed)
    return x, y


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    pred = forward_batches(model, x, batch_size, "top-1").argmax(1)
    return 100.0 * (pred == y).float().mean().item()


def orl_tensors(root: Path, width: int = 96) -> Tuple[torch.Tensor, torch.Tensor]:
    """ORL faces as (N, 3, 112, ``width``) face-normalised tensors, padded left/right with black, and labels."""
    x, y, _ = load_image_folder(root, None, FACE_MEAN, FACE_STD, channels=3)
    extra = width - x.shape[-1]
    if extra < 0:
        raise ValueError(f"ORL images are {x.shape[-1]} px wide, wider than {width}")
    black = -FACE_MEAN / FACE_STD
    return F.pad(x, (extra // 2, extra - extra // 2), value=black), y


def flip_embeddings(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Embeddings of each image and its horizontal flip, concatenated (2 x embedding size, L2-normalised)."""
    return embed_images(model, x, batch_size, flip=True, fusion="concat")


def nn_identification(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour (cosine) identification accuracy in percent."""
    e = F.normalize(embeddings, dim=1)
    sim = e @ e.t()
    sim.fill_diagonal_(-float("inf"))
    return 100.0 * (labels[sim.argmax(1)] == labels).float().mean().item()


def pair_auc(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of cosine similarity for same- vs different-identity over all unordered pairs."""
    from sklearn.metrics import roc_auc_score

    e = F.normalize(embeddings, dim=1)
    i, j = torch.triu_indices(len(labels), len(labels), 1)
    return float(roc_auc_score((labels[i] == labels[j]).numpy(), (e @ e.t())[i, j].numpy()))
