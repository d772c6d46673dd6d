"""Image preprocessing shared by the readers: decode, fit to the model's input, normalise.

The face convention of the field (SphereFace, MobileFaceNet, insightface): RGB (grey copied to three
channels), the aligned crop resized to the model input (H, W) — 112x112, 112x96, 144x122 … — and pixels
mapped to ``(x - 127.5) / 128``. ``bgr=True`` reverses the channel order for models trained on OpenCV
(BGR) input.

Fitting an image whose aspect ratio differs from the model input (``fit``):

* ``"pad"`` (default): pad the short side with zeros (black), centred, to the target aspect ratio, then
  resize (bilinear) if the size still differs. ORL's 92x112 (W x H) faces become 96x112 by two black
  columns on each side, which is exactly 112x96 (H x W): no resampling at all. For 112x112 they are padded
  to 112x112; for 144x122 padded to 95x112 and resized.
* ``"crop"``: centre-crop the long side to the target aspect ratio, then resize.
* ``"resize"``: resize straight to (H, W), distorting the aspect ratio.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from compression_tool.data.normalise import FACE_MEAN_255, FACE_STD_255
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

FITS = ("pad", "crop", "resize")
Number = Union[float, Sequence[float]]
T = TypeVar("T")


def open_image(path: Union[str, Path]) -> Image.Image:
    """Open and fully decode an image file; UserError naming the file when missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image {p} not found")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot decode image {p}: {exc}") from None


def decode_image(data: bytes, where: str = "image bytes") -> Image.Image:
    """Decode encoded JPEG/PNG bytes (insightface ``.bin`` entries)."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot decode {where}: {exc}") from None


def _pad_to_aspect(img: Image.Image, h: int, w: int) -> Image.Image:
    iw, ih = img.size
    if iw * h < w * ih:      # too narrow: pad width
        new_w, new_h = int(round(ih * w / h)), ih
    else:                    # too wide (or equal): pad height
        new_w, new_h = iw, int(round(iw * h / w))
    if (new_w, new_h) == (iw, ih):
        return img
    canvas = Image.new(img.mode, (new_w, new_h), 0)
    canvas.paste(img, ((new_w - iw) // 2, (new_h - ih) // 2))
    return canvas


def _crop_to_aspect(img: Image.Image, h: int, w: int) -> Image.Image:
    iw, ih = img.size
    if iw * h > w * ih:      # too wide: crop width
        new_w, new_h = int(round(ih * w / h)), ih
    else:
        new_w, new_h = iw, int(round(iw * h / w))
    left, top = (iw - new_w) // 2, (ih - new_h) // 2
    return img.crop((left, top, left + new_w, top + new_h))


def fit_image(img: Image.Image, size: Tuple[int, int], fit: str = "pad") -> Image.Image:
    """Bring ``img`` to (H, W) = ``size`` by the ``fit`` rule (see the module docstring)."""
    if fit not in FITS:
        raise UserError(f"fit {fit!r}: expected one of {', '.join(FITS)}")
    h, w = size
    if fit == "pad":
        img = _pad_to_aspect(img, h, w)
    elif fit == "crop":
        img = _crop_to_aspect(img, h, w)
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    return img


def _as_channel_array(value: Number, channels: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise UserError(f"normalisation constants {value!r}: expected 1 or {channels} values")
    return np.broadcast_to(arr, (channels,)).reshape(channels, 1, 1)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float tensor [C, H, W]: fit to ``size``, channels, order, ``(x - mean) / std``.

    Defaults are the face convention ``(x - 127.5) / 128`` on RGB. ``mean``/``std`` are on the 0..255
    scale and may be per-channel (given in the output channel order).
    """

    size: Tuple[int, int] = (112, 112)
    channels: int = 3
    bgr: bool = False
    fit: str = "pad"
    mean: Number = FACE_MEAN_255
    std: Number = FACE_STD_255

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise UserError(f"channels {self.channels}: expected 1 (grey) or 3 (RGB)")
        if self.fit not in FITS:
            raise UserError(f"fit {self.fit!r}: expected one of {', '.join(FITS)}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("L" if self.channels == 1 else "RGB")
        img = fit_image(img, tuple(self.size), self.fit)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if self.bgr and self.channels == 3:
            arr = arr[::-1]
        arr = (arr - _as_channel_array(self.mean, self.channels)) / _as_channel_array(self.std, self.channels)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def transform_all(items: Sequence[T], load: Callable[[T], Image.Image], transform: ImageTransform,
                  workers: int = 0, desc: str = "images") -> torch.Tensor:
    """``transform(load(item))`` for every item, stacked [N, C, H, W]; ``workers`` > 0 decodes in threads."""
    if len(items) == 0:
        raise UserError("no images to load")

    def one(item: T) -> torch.Tensor:
        return transform(load(item))

    bar = dict(total=len(items), desc=desc, unit="img", leave=False, disable=len(items) < 200)
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            tensors = list(tqdm(pool.map(one, items), **bar))
    else:
        tensors = [one(item) for item in tqdm(items, **bar)]
    return torch.stack(tensors)


def load_images(paths: Sequence[Union[str, Path]], transform: ImageTransform, workers: int = 0,
                desc: str = "images") -> torch.Tensor:
    """Open, decode and preprocess image files into one tensor [N, C, H, W]."""
    return transform_all(paths, open_image, transform, workers, desc)
