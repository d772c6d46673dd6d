"""Turn ``--data`` into a fixed evaluation subset and a metric function ``evaluate(model) -> metrics``.

Specs: ``digits`` (the embedded default), ``image_folder:DIR`` (``DIR/<class>/<img>``, e.g. the CIFAR-10
JPEGs), ``mnist:DIR``, ``cifar10:DIR`` / ``cifar100:DIR`` (python pickles), ``json:DIR`` (custom data), and for
face embedders ``orl:DIR`` / ``identity_folders:DIR`` (seeded balanced pairs), ``pairs:FILE`` (with
``--test_root_path``), ``lfw:PAIRS_TXT`` (with ``--test_root_path``), ``bin:FILE`` (insightface).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from common.errors import UserError

log = logging.getLogger(__name__)

CLASSIFIER_METRICS = ["top1", "top5", "loss"]
FACE_SPECS = ("orl", "identity_folders", "pairs", "lfw", "bin")


@dataclass
class EvalSetup:
    evaluate: Callable[[nn.Module], "OrderedDict[str, float]"]
    metric_names: List[str]
    batches: Callable[[], Iterable[torch.Tensor]]   # input batches for data-driven criteria (hrank…)
    dataset: str


def _split(spec: str):
    kind, _, arg = spec.partition(":")
    return kind, arg


# RGB image data is normalised the way the CIFAR/ImageNet-style checkpoints expect unless --mean/--std say otherwise
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def _per_channel(values: Optional[Sequence[float]], default: float, c: int, x: torch.Tensor) -> torch.Tensor:
    v = list(values) if values is not None else [default]
    if len(v) == 1:
        v = v * c
    if len(v) != c:
        raise UserError(f"--mean/--std: give 1 or {c} values (the data has {c} channels), got {len(v)}")
    return torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1)


def normalise(x: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> torch.Tensor:
    """``x`` in [0, 1] -> (x - mean) / std per channel (one value applies to every channel)."""
    if mean is None and std is None:
        return x
    c = x.shape[1]
    return (x - _per_channel(mean, 0.0, c, x)) / _per_channel(std, 1.0, c, x)


def classifier_tensors(spec: str, input_size: Sequence[int], seed: int = 0,
                       mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
    """(x, y) test tensors for a classifier data spec, resized to ``input_size``. Files are read as [0, 1] and
    normalised with ``mean``/``std``; for RGB image folders and CIFAR pickles they default to RGB_MEAN/RGB_STD."""
    kind, arg = _split(spec)
    c, h, w = input_size
    if kind == "digits":
        from common.data import digits_split
        if h != w:
            raise UserError(f"--data digits: the model input must be square, got {h}x{w}")
        return digits_split(image_size=h, channels=c, seed=seed)[1]
    if not arg:
        raise UserError(f"--data {spec}: expected {kind}:PATH")
    if kind in ("image_folder", "cifar10", "cifar100") and c == 3 and mean is None and std is None:
        mean, std = RGB_MEAN, RGB_STD
    if kind == "image_folder":
        from common.imagefolder import load_image_folder
        x, y, _ = load_image_folder(arg, size=(h, w), channels=c)
        return normalise(x, mean, std), y
    from test_module import readers
    fn = {"mnist": "read_mnist", "cifar10": "read_cifar", "cifar100": "read_cifar100", "json": "read_json_data"}.get(kind)
    if fn is None or not hasattr(readers, fn):
        known = "digits, image_folder:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, json:DIR, " + \
            ", ".join(f"{k}:…" for k in FACE_SPECS)
        raise UserError(f"--data: unknown data spec {spec!r}; known: {known}")
    x, y = getattr(readers, fn)(arg, split="test")
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) \
        if tuple(x.shape[-2:]) != (h, w) else x
    return normalise(x, mean, std), y


def classifier_setup(spec: str, input_size: Sequence[int], batch_size: int = 64,
                     eval_batches: Optional[int] = None, seed: int = 0, mean=None, std=None) -> EvalSetup:
    from test_module.classification import evaluate_classifier

    x, y = classifier_tensors(spec, input_size, seed, mean, std)
    if eval_batches and eval_batches * batch_size < len(y):
        # a seeded random subset: image folders come sorted by class, so a prefix would be one class
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: eval_batches * batch_size]
        x, y = x[pick.sort().values], y[pick.sort().values]
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    return EvalSetup(evaluate=lambda m: evaluate_classifier(m, loader), metric_names=list(CLASSIFIER_METRICS),
                     batches=lambda: (b for b, _ in loader), dataset=spec.split(":")[0])


def face_setup(spec: str, input_size: Sequence[int], metric: str = "lfw_acc", batch_size: int = 64,
               eval_batches: Optional[int] = None, seed: int = 0, test_root: Optional[str] = None,
               folds: int = 10, flip: bool = False, bgr: bool = False) -> EvalSetup:
    from test_module import readers
    from test_module.verification import evaluate_pairs, ordered_metrics

    names = list(evaluate_names(metric))
    pairset = readers.load_pairset(spec, input_size=tuple(input_size[1:]), seed=seed, test_root=test_root, bgr=bgr)
    if eval_batches:
        pairset = pairset.subset(eval_batches * batch_size, seed=seed)
    check_target_resolvable(names[0], int((~pairset.issame).sum()))

    def evaluate(m: nn.Module):
        return ordered_metrics(evaluate_pairs(m, pairset, folds=folds, flip=flip, batch_size=batch_size), metric)

    return EvalSetup(evaluate=evaluate, metric_names=names,
                     batches=lambda: (pairset.images[i:i + batch_size]
                                      for i in range(0, len(pairset.images), batch_size)),
                     dataset=spec.split(":")[0])


def evaluate_names(metric: str) -> List[str]:
    from test_module.verification import metric_names
    names = metric_names()
    key = metric.replace("tar@far", "tpr@fpr")
    if key not in names:
        raise UserError(f"--metric: unknown metric {metric!r}; known: {', '.join(names)}")
    return [key] + [n for n in names if n != key]


def check_target_resolvable(metric: str, n_different: int) -> None:
    """The sensitivity target must measure what it names: ``tpr@fpr=X`` needs at least 1/X different pairs
    (below that every X reports the TPR at zero false accepts, so a schedule would chase noise)."""
    from test_module.verification import metric_fpr, min_different_pairs, resolvable
    if not resolvable(metric, n_different):
        need = min_different_pairs(metric_fpr(metric))
        raise UserError(f"--metric {metric}: the evaluation pairs hold {n_different} different-identity pairs, "
                        f"{metric} needs at least {need} (use more pairs: a larger or no --eval_batches; "
                        f"or a larger FPR)")


def build_setup(spec: str, kind: str, input_size: Sequence[int], **kw) -> EvalSetup:
    """Pick the classifier or the face-verification evaluation for this model kind and data spec."""
    face = _split(spec)[0] in FACE_SPECS
    if kind == "embedder" and not face:
        raise UserError(f"--data {spec}: this model is a face embedder; give verification data "
                        f"({', '.join(k + ':…' for k in FACE_SPECS)})")
    if face:
        return face_setup(spec, input_size, **{k: v for k, v in kw.items() if k not in ("mean", "std")})
    kw = {k: v for k, v in kw.items() if k in ("batch_size", "eval_batches", "seed", "mean", "std")}
    return classifier_setup(spec, input_size, **kw)
