"""The one data-spec parser: ``--data KIND[:PATH]`` and ``--input_size`` -> tensors at the model's input.

Classifier kinds: ``digits`` (embedded, scikit-learn's), ``image_folder:DIR`` (``DIR/<class>/<img>``), ``mnist:DIR``
(idx files), ``cifar10:DIR`` / ``cifar100:DIR`` (python pickles), ``json:DIR`` (``train.json``/``test.json`` with
``data``, ``label``, ``shape``). Face kinds (verification pairs, identity folders for training): ``orl:DIR``,
``identity_folders:DIR``, ``pairs:FILE``, ``lfw:PAIRS_TXT``, ``bin:FILE``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from compression_tool.data.normalise import Stats, default_stats, normalise
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

CLASSIFIER_KINDS = ("digits", "image_folder", "mnist", "cifar10", "cifar100", "json")
FACE_KINDS = ("orl", "identity_folders", "pairs", "lfw", "bin")
ORL_TRAIN_SUBJECTS = "s3..s30"     # the held-out s31..s40 are the ORL verification pairs
_SIZE = re.compile(r"^\s*\d+(\s*[,xX]\s*\d+){0,2}\s*$")


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Optional[str] = None

    @property
    def is_face(self) -> bool:
        return self.kind in FACE_KINDS

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind


def known_specs() -> str:
    return ", ".join(["digits"] + [f"{k}:…" for k in CLASSIFIER_KINDS[1:] + FACE_KINDS])


def parse_data_spec(text: "str | DataSpec", flag: str = "--data") -> DataSpec:
    """``"image_folder:DIR"`` -> DataSpec; one-line UserError for unknown kinds or a missing path."""
    if isinstance(text, DataSpec):
        return text
    kind, _, path = str(text).partition(":")
    if kind not in CLASSIFIER_KINDS + FACE_KINDS:
        raise UserError(f"{flag}: unknown data spec {text!r}; known: {known_specs()}")
    if kind != "digits" and not path:
        raise UserError(f"{flag} {text}: expected {kind}:PATH")
    return DataSpec(kind, path or None)


def parse_input_size(text: str, channels: int = 3, flag: str = "--input_size") -> Tuple[int, int, int]:
    """``C,H,W`` (e.g. ``3,112,96``); ``H,W`` and ``H`` (square) take ``channels`` (the model's own)."""
    if not _SIZE.match(str(text)):
        raise UserError(f"{flag}: expected C,H,W (e.g. 3,112,96), H,W or H with positive whole numbers, got {text!r}")
    vals = [int(v) for v in re.split(r"[,xX]", str(text))]
    if len(vals) == 1:
        vals = [channels, vals[0], vals[0]]
    elif len(vals) == 2:
        vals = [channels, *vals]
    if min(vals) <= 0:
        raise UserError(f"{flag}: sizes must be positive, got {text!r}")
    return vals[0], vals[1], vals[2]


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def seeded_subset(count: int, n: Optional[int], seed: int = 0) -> Optional[torch.Tensor]:
    """Sorted positions of a seeded random subset of ``n`` of ``count`` examples; None (all of them) when ``n`` is
    None or not below ``count``. Sorted: image folders come sorted by class, so a prefix would be one class."""
    if not n or n >= count:
        return None
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@dataclass
class LabelledSubset:
    """A classifier evaluation set as decoded: images, labels, and the number of classes of the whole split."""
    x: torch.Tensor
    y: torch.Tensor
    num_classes: Optional[int]


def classifier_subset(spec: "str | DataSpec", input_size: Sequence[int], n: Optional[int], seed: int = 0,
                      mean: Stats = None, std: Stats = None, model_mean: Stats = None, model_std: Stats = None
                      ) -> LabelledSubset:
    """The test split of a classifier spec, or its seeded subset of ``n`` examples (``seeded_subset``); an image
    folder reads and decodes only the picked images."""
    ds = parse_data_spec(spec)
    if ds.kind == "image_folder":
        from compression_tool.data.imagefolder import list_image_folder

        labels = list_image_folder(ds.path)[1]
        pick = seeded_subset(len(labels), n, seed)
        x, y = classifier_tensors(ds, input_size, "test", seed, mean, std, model_mean, model_std, pick=pick)
        return LabelledSubset(x, y, max(labels) + 1)
    x, y = classifier_tensors(ds, input_size, "test", seed, mean, std, model_mean, model_std)
    pick = seeded_subset(len(y), n, seed)
    return LabelledSubset(x if pick is None else x[pick], y if pick is None else y[pick],
                          int(y.max()) + 1 if len(y) else None)


def classifier_tensors(spec: "str | DataSpec", input_size: Sequence[int], split: str = "test", seed: int = 0,
                       mean: Stats = None, std: Stats = None, model_mean: Stats = None, model_std: Stats = None,
                       pick: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a classifier data spec, resized to ``input_size`` (C, H, W) and normalised (``--mean/--std``, else
    the model's registry entry, else the data kind's default). ``split`` is train or test; an image folder is one
    split (give a train folder and a test folder). ``pick``: only those positions (an image folder reads and decodes
only them)."""
    from compression_tool.data import readers

    ds = parse_data_spec(spec)
    if ds.is_face:
        raise UserError(f"--data {ds}: face data holds verification pairs, not labelled classes")
    c, h, w = (int(v) for v in input_size)
    if ds.kind == "digits":
        from compression_tool.data.digits import digits_split

        if h != w:
            raise UserError(f"--data digits: the model input must be square, got {h}x{w}")
        x, y = digits_split(image_size=h, channels=c, seed=seed, mean=None, std=None)[0 if split == "train" else 1]
    elif ds.kind == "image_folder":
        from compression_tool.data.imagefolder import load_image_folder

        x, y, _ = load_image_folder(ds.path, size=(h, w), channels=c, pick=pick)
    else:
        x, y = {"mnist": lambda: readers.read_mnist(ds.path, split),
                "cifar10": lambda: readers.read_cifar(ds.path, split),
                "cifar100": lambda: readers.read_cifar100(ds.path, split),
                "json": lambda: readers.read_json_data(ds.path, split)}[ds.kind]()
        x = _resize(x.float(), h, w)
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.repeat(1, c, 1, 1)
            else:
                raise UserError(f"--data {ds}: images have {x.shape[1]} channels, the model takes {c}")
    if pick is not None and ds.kind != "image_folder":
        x, y = x[pick], y[pick]
    m, s = default_stats(ds.kind, c, mean, std, model_mean, model_std)
    return normalise(x, m, s), y.long()


def train_tensors(spec: "str | DataSpec", input_size: Sequence[int], seed: int = 0, subjects: Optional[str] = None,
                  fit: str = "pad", mean: Stats = None, std: Stats = None, model_mean: Stats = None,
                  model_std: Stats = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) to train on: a classifier spec's train split, or identity folders' images and identities
    (``orl:DIR`` trains on s3..s30 unless ``subjects``)."""
    ds = parse_data_spec(spec)
    if not ds.is_face:
        return classifier_tensors(ds, input_size, "train", seed, mean, std, model_mean, model_std)
    if ds.kind not in ("orl", "identity_folders"):
        raise UserError(f"--data {ds}: training on faces needs identity folders (orl:DIR or identity_folders:DIR)")
    from compression_tool.data import readers
    from compression_tool.data.preprocess import ImageTransform

    c, h, w = (int(v) for v in input_size)
    chosen = subjects if subjects is not None else (ORL_TRAIN_SUBJECTS if ds.kind == "orl" else None)
    images, labels = readers.read_identity_dataset(ds.path, ImageTransform(size=(h, w), channels=c, fit=fit),
                                                   readers.parse_subjects(chosen))[:2]
    log.info("%d training images of %d identities from %s", len(labels), int(labels.max()) + 1, ds.path)
    return images, labels
