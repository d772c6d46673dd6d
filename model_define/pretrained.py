"""The pretrained checkpoints in ../shared/data: where they are, their preprocessing, and accuracy checks.

* CIFAR ResNets: RGB, ``x / 255``, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225); top-1 on the JPEG test
  images in ``cifar10_test/<class>/``.
* MobileFaceNet (CASIA-WebFace): 112x96 RGB, ``(x - 127.5) / 128``; ORL faces (92x112 grey) are copied to three
  channels and padded with two black columns on each side; embeddings of the image and its horizontal flip are
  concatenated; 1-NN identification (cosine, leave-one-out) and the same/different pair AUC over all images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common.imagefolder import load_image_folder

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
FACE_MEAN = 127.5 / 255.0        # (x - 127.5) / 128 on the 0..255 scale, written for x / 255
FACE_STD = 128.0 / 255.0
CIFAR_RESNET_FILES: Dict[int, str] = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
                                      44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
MOBILEFACENET_FILE = "mobilefacenet_casia/068.ckpt"


def shared_data_dir() -> Path:
    """``../shared/data`` relative to the repository root (may not exist in a fresh clone)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cifar_resnet_path(depth: int, data: Optional[Path] = None) -> Path:
    return (data or shared_data_dir()) / "resnet_cifar10" / CIFAR_RESNET_FILES[depth]


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
    x, y, _ = load_image_folder(root, (32, 32), CIFAR_MEAN, CIFAR_STD, per_class=per_class, seed=seed)
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
    """Concatenated embeddings of each image and its horizontal flip (2 x embedding size)."""
    return torch.cat([forward_batches(model, x, batch_size, "embed"),
                      forward_batches(model, torch.flip(x, dims=[3]), batch_size, "embed flipped")], 1)


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
