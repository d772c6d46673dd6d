"""Image folders (``root/<class>/<image>``) read into tensors with Pillow: ``load_image_folder``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from compression_tool.data.normalise import normalise
from compression_tool.io.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
Stats = Union[float, Sequence[float], None]


def natural_key(name: str) -> Tuple:
    """Sort key that orders s2 before s10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def list_image_folder(root: str | Path, per_class: Optional[int] = None, seed: int = 0
                      ) -> Tuple[List[Path], List[int], List[str]]:
    """(paths, labels, class_names); classes are the sub-folders in natural order.

    ``per_class`` keeps a seeded random subset of that many images per class (all if a class has fewer).
    """
    r = Path(root)
    if not r.is_dir():
        raise UserError(f"{r}: no such image folder")
    classes = sorted((d.name for d in r.iterdir() if d.is_dir()), key=natural_key)
    rng = np.random.RandomState(seed)
    paths: List[Path] = []
    labels: List[int] = []
    for label, cls in enumerate(classes):
        files = sorted((f for f in (r / cls).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda f: natural_key(f.name))
        if per_class is not None and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"{r}: expected class sub-folders holding images ({', '.join(IMAGE_EXTENSIONS)}), "
                        "found none")
    return paths, labels, classes


def read_image(path: Path, size: Optional[Tuple[int, int]] = None, channels: int = 3) -> np.ndarray:
    """uint8 array (C, H, W); ``size`` is (H, W), resized bilinearly when it differs."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(root: str | Path, size: Optional[Sequence[int]] = None, mean: Stats = None,
                      std: Stats = None, per_class: Optional[int] = None, seed: int = 0, channels: int = 3,
                      progress: bool = True, pick: Optional[Sequence[int]] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """All images under ``root/<class>/`` as (x float (N, C, H, W), y long (N,), class_names).

    ``size`` is (H, W) (a (C, H, W) triple is accepted, its C ignored in favour of ``channels``); None keeps
    each image's own size, which must then agree. Pixels become ``(v / 255 - mean) / std``. ``pick``: only these
    positions of the listing are read and decoded (an evaluation subset).
    """
    paths, labels, classes = list_image_folder(root, per_class, seed)
    if pick is not None:
        paths, labels = [paths[int(i)] for i in pick], [labels[int(i)] for i in pick]
    hw = (int(size[-2]), int(size[-1])) if size is not None else None
    arrays = [read_image(p, hw, channels) for p in tqdm(paths, desc=f"reading {Path(root).name}",
                                                        disable=not progress, leave=False)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"{root}: images differ in size ({', '.join(map(str, sorted(shapes)[:3]))}); pass a size")
    x = normalise(torch.from_numpy(np.stack(arrays)).float() / 255.0, mean, std)
    return x, torch.tensor(labels, dtype=torch.long), classes
