"""Where the pretrained checkpoints of ../shared/data are (their evaluation helpers: test_module.reference).

* CIFAR ResNets: RGB, ``x / 255``, then ImageNet mean/std (compression_tool.data.normalise.RGB_MEAN/RGB_STD).
* MobileFaceNet (CASIA-WebFace): 112x96 RGB, ``(x - 127.5) / 128``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

CIFAR_RESNET_FILES: Dict[int, str] = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
                                      44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
MOBILEFACENET_FILE = "mobilefacenet_casia/068.ckpt"


def shared_data_dir() -> Path:
    """``../shared/data`` relative to the repository root (may not exist in a fresh clone)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cifar_resnet_path(depth: int, data: Optional[Path] = None) -> Path:
    return (data or shared_data_dir()) / "resnet_cifar10" / CIFAR_RESNET_FILES[depth]
