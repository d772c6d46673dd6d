"""Turn ``--data`` into a fixed evaluation subset and a metric function ``evaluate(model) -> metrics``.

The specs are compression_tool.data.spec's; classifiers get top-1/top-5/loss, face embedders the verification
metrics of test_module.verification, in the order that puts the targeted metric first.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.data.pairs import PairSet
from compression_tool.data.spec import FACE_KINDS, LabelledSubset, classifier_subset, parse_data_spec
from compression_tool.io.errors import UserError
from test_module.fidelity import FIDELITY_METRICS, fidelity

log = logging.getLogger(__name__)

CLASSIFIER_METRICS = ["top1", "top5", "loss"]


@dataclass
class EvalSetup:
    evaluate: Callable[[nn.Module], "OrderedDict[str, float]"]
    metric_names: List[str]
    batches: Callable[[], Iterable[torch.Tensor]]   # input batches for data-driven criteria (hrank…)
    dataset: str
    num_classes: Optional[int] = None               # classifier data: highest label + 1
    decoded: "LabelledSubset | PairSet | None" = None  # the evaluation data as decoded (handed to --workers)


@dataclass
class EvalConfig:
    """What to evaluate on and how: the data spec, a fixed seeded subset, the metric order and face options."""
    data: str = "digits"
    batch_size: int = 64
    eval_batches: Optional[int] = None        # evaluate on this many batches only (a seeded, fixed subset)
    seed: int = 0
    metric: str = "lfw_acc"                   # face embedders: the metric put first (and targeted)
    test_root: Optional[str] = None           # image root of pairs:/lfw: pair lists
    folds: int = 10
    flip: bool = False
    bgr: bool = False
    subjects: Optional[str] = None            # identity folders: which identities to pair (orl: s31..s40)
    split: Optional[str] = None               # target-true splits "sa,check,report" (classifier data) …
    split_seed: int = 0
    split_part: str = "sa"                    # … and the part this evaluation uses
    mean: Optional[Sequence[float]] = None    # classifier data: --mean/--std override the model's and the kind's
    std: Optional[Sequence[float]] = None
    device: str = "cpu"                       # cpu | cuda | cuda:N | auto: where the model runs (batches follow it)
    amp: bool = False                         # CUDA only: float16 autocast during evaluation
    ci: bool = False                          # embedders: also <metric>_lo,_hi (bootstrap over people, then images)
    preloaded: "LabelledSubset | PairSet | None" = None   # the subset already decoded (--workers: the main
    #                                           process's, in shared memory); used instead of reading the data


def classifier_setup(spec: str, input_size: Sequence[int], batch_size: int = 64,
                     eval_batches: Optional[int] = None, seed: int = 0, mean=None, std=None,
                     model_mean=None, model_std=None, preloaded: Optional[LabelledSubset] = None) -> EvalSetup:
    """Top-1/top-5/loss on the test split or its seeded subset (``preloaded``: that subset as already decoded)."""
    from test_module.classification import evaluate_classifier

    data = preloaded or classifier_subset(spec, input_size, eval_batches * batch_size if eval_batches else None,
                                          seed, mean, std, model_mean, model_std)
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=batch_size, shuffle=False)
    return EvalSetup(evaluate=lambda m: evaluate_classifier(m, loader), metric_names=list(CLASSIFIER_METRICS),
                     batches=lambda: (b for b, _ in loader), dataset=spec.split(":")[0], num_classes=data.num_classes,
                     decoded=data)


def face_setup(spec: str, input_size: Sequence[int], metric: str = "lfw_acc", batch_size: int = 64,
               eval_batches: Optional[int] = None, seed: int = 0, test_root: Optional[str] = None,
               folds: int = 10, flip: bool = False, bgr: bool = False,
               reference: Optional[nn.Module] = None, subjects: Optional[str] = None,
               preloaded: Optional[PairSet] = None, ci: bool = False) -> EvalSetup:
    """Verification on pairs (``orl:``, ``lfw:``, ``pairs:``, ``bin:``, ``identity_folders:``); with ``metric``
    ``fidelity`` the ``reference`` model's embeddings of the same images are taken now, and every evaluation adds
    the cosine fidelity to them (first) to the verification metrics."""
    from compression_tool.data import readers

    if preloaded is not None:
        pairset = preloaded
    else:
        pairset = readers.load_pairset(spec, input_size=tuple(input_size), seed=seed, test_root=test_root, bgr=bgr,
                                       subjects=subjects)
        if eval_batches:
            pairset = pairset.subset(eval_batches * batch_size, seed=seed)
    return pair_setup(pairset, metric, batch_size, folds, flip, reference, spec.split(":")[0], ci)


def pair_setup(pairset: PairSet, metric: str = "lfw_acc", batch_size: int = 64, folds: int = 10,
               flip: bool = False, reference: Optional[nn.Module] = None, dataset: str = "pairs",
               ci: bool = False) -> EvalSetup:
    """Verification on a loaded pair set (see :func:`face_setup`). ``ci``: every evaluation also gives
    ``<first metric>_lo,_hi``, a 95 % bootstrap interval over the pairs' people, then images
    (``per_sample.interval``), from the same embeddings."""
    from test_module.per_sample import embedding_measure, interval
    from test_module.verification import (
        embed_images,
        metric_fpr,
        ordered_metrics,
        pair_distances,
        verification_metrics,
    )

    wants_fidelity = metric == "fidelity"
    names = list(evaluate_names("lfw_acc" if wants_fidelity else metric))
    if not wants_fidelity:
        check_target_resolvable(names[0], int((~pairset.issame).sum()))
    ref = None
    if wants_fidelity:
        if reference is None:
            raise UserError("--metric fidelity: needs the unpruned reference model (sensitivity analysis, prune and "
                            "fine-tuning with a --teacher_path provide it)")
        ref = embed_images(reference, pairset.images, batch_size, flip)
        names = list(FIDELITY_METRICS) + names
    measure = None
    if ci:
        if names[0] not in ("lfw_acc", "fidelity") and metric_fpr(names[0]) is None:
            raise UserError(f"--ci: intervals on face pairs are for lfw_acc, tpr@fpr=X and fidelity, not {names[0]}")
        measure = embedding_measure(pairset, names[0], folds)
        names = names + [f"{names[0]}_lo", f"{names[0]}_hi"]

    def evaluate(m: nn.Module):
        emb = embed_images(m, pairset.images, batch_size, flip)
        out = verification_metrics(pair_distances(emb, pairset.pairs), pairset.issame.numpy(), folds)
        if ref is not None:
            row = OrderedDict([*fidelity(emb, ref).items(), *ordered_metrics(out, "lfw_acc").items()])
        else:
            row = ordered_metrics(out, metric)
        if measure is not None:
            row[names[-2]], row[names[-1]] = interval(measure(emb, ref))
        return row

    return EvalSetup(evaluate=evaluate, metric_names=names,
                     batches=lambda: (pairset.images[i:i + batch_size]
                                      for i in range(0, len(pairset.images), batch_size)),
                     dataset=dataset, decoded=pairset)


def fidelity_setup(folder: str, input_size: Sequence[int], reference: Optional[nn.Module], batch_size: int = 64,
                   eval_batches: Optional[int] = None, seed: int = 0, flip: bool = False, bgr: bool = False,
                   ci: bool = False) -> EvalSetup:
    """Label-free evaluation of an embedder on any face images (``image_folder:DIR``, ``DIR/<any>/<img>``, face
    preprocessing): fidelity to the reference model's embeddings only. ``ci``: also ``fidelity_lo,_hi``, a 95 %
    bootstrap interval over the subfolders (people, when they are), then the images in them."""
    from compression_tool.data import readers
    from compression_tool.data.preprocess import ImageTransform
    from test_module.per_sample import image_measure, interval
    from test_module.verification import embed_images

    if reference is None:
        raise UserError("--metric fidelity: needs the unpruned reference model")
    c, h, w = (int(v) for v in input_size)
    images, folders = readers.read_identity_dataset(folder, ImageTransform(size=(h, w), channels=c, bgr=bgr))
    if eval_batches and eval_batches * batch_size < len(images):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: eval_batches * batch_size]
        pick = pick.sort().values
        images, folders = images[pick], folders[pick]
    ref = embed_images(reference, images, batch_size, flip)
    names = list(FIDELITY_METRICS) + (["fidelity_lo", "fidelity_hi"] if ci else [])

    def evaluate(m: nn.Module):
        emb = embed_images(m, images, batch_size, flip)
        row = OrderedDict(fidelity(emb, ref))
        if ci:
            row["fidelity_lo"], row["fidelity_hi"] = interval(image_measure((emb * ref).sum(1), folders.numpy()))
        return row

    return EvalSetup(evaluate=evaluate, metric_names=names,
                     batches=lambda: (images[i:i + batch_size] for i in range(0, len(images), batch_size)),
                     dataset="image_folder")


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


def build_setup(cfg: "EvalConfig | str", kind: str, input_size: Sequence[int], model_mean=None, model_std=None,
                reference: Optional[nn.Module] = None, **kw) -> EvalSetup:
    """Pick the classifier or the face-verification evaluation for this model kind and data spec (``cfg`` may be
    a spec string with EvalConfig's fields as keywords)."""
    cfg = cfg if isinstance(cfg, EvalConfig) else EvalConfig(data=cfg, **kw)
    ds = parse_data_spec(cfg.data)
    if kind == "embedder" and cfg.metric == "fidelity" and ds.kind == "image_folder":
        return fidelity_setup(ds.path, input_size, reference, cfg.batch_size, cfg.eval_batches, cfg.seed, cfg.flip,
                              cfg.bgr, cfg.ci)
    if kind == "embedder" and not ds.is_face:
        raise UserError(f"--data {cfg.data}: this model is a face embedder; give verification data "
                        f"({', '.join(k + ':…' for k in FACE_KINDS)})")
    if ds.is_face:
        return face_setup(cfg.data, input_size, cfg.metric, cfg.batch_size, cfg.eval_batches, cfg.seed,
                          cfg.test_root, cfg.folds, cfg.flip, cfg.bgr, reference, cfg.subjects, cfg.preloaded,
                          cfg.ci)
    return classifier_setup(cfg.data, input_size, cfg.batch_size, cfg.eval_batches, cfg.seed, cfg.mean, cfg.std,
                            model_mean, model_std, cfg.preloaded)
