"""Fine-tuning application: load a (thinned) model, its data and teacher, train, keep the best checkpoint."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from compression_tool.apps.workflow import ModelSource, eval_setup, load_source
from compression_tool.data.augment import RandomAugment
from compression_tool.data.spec import parse_data_spec, train_tensors
from compression_tool.engine.checkpoint import FORMAT, load_model
from compression_tool.engine.device import resolve_device
from compression_tool.engine.thinning import teacher_channels
from compression_tool.io.errors import UserError
from model_define import model_spec
from test_module.setup import EvalConfig, build_setup
from train_module.features import expand_layers, find_module, output_leaf
from train_module.finetune import EvalFn, FinetuneConfig, FinetuneResult, config_dict, finetune
from train_module.heads import make_head

log = logging.getLogger(__name__)


@dataclass
class FinetuneJob:
    """Everything ``python -m train_module`` / ``pruning.py --mode finetune`` asks for, typed."""
    source: ModelSource
    data: str = "digits"                            # training data spec (classifier kinds, or face identity folders)
    subjects: Optional[str] = None                  # identity folders to train on (orl: s3..s30 by default)
    eval: Optional[EvalConfig] = None               # None: the default for the data (digits, orl), else no selection
    fit: str = "pad"
    hflip: bool = False
    head: Optional[str] = None                      # embedders: arcface (default), cosface, none
    s: Optional[float] = None
    m: Optional[float] = None
    teacher: Optional[ModelSource] = None
    batch_size: int = 64
    milestones: Sequence[float] = ()                # epochs at which the LR drops (train.milestones is set from it)
    train: FinetuneConfig = field(default_factory=FinetuneConfig)   # distill/alpha/lr/epochs… live here
    resume: Optional[str] = None
    unlabeled: Union[None, str, Sequence[str]] = None   # label-free distillation: images only, one or more specs
    augment: bool = False                           # random rotation/scale/shift + brightness/contrast per image
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None


def milestone_iters(epochs: Sequence[float], iters_per_epoch: int) -> Tuple[int, ...]:
    """Milestones in epochs -> iteration counts."""
    return tuple(int(round(float(e) * iters_per_epoch)) for e in epochs)


class RandomHFlip(Dataset):
    """Wrap a tensor dataset: flip each image horizontally with probability 1/2 (global torch RNG)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, *rest = self.base[i]
        if torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[-1])
        return (x, *rest)


def default_eval_spec(spec: str) -> Optional[str]:
    kind = spec.partition(":")[0]
    return spec if kind in ("digits", "orl") else None


def output_size(model: nn.Module, input_size: Sequence[int]) -> int:
    """Width of the model's output (embedding size of an embedder) for one dummy input."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *[int(v) for v in input_size]))
    model.train(was)
    return int(out.flatten(1).shape[1])


def checkpoint_meta(meta: Dict[str, Any], cfg: FinetuneConfig, data: str) -> Dict[str, Any]:
    """The loaded model's meta (name, widths, keep-arrays, schedule) in the thinned format, so that
    ``compression_tool.engine.checkpoint.load_model`` rebuilds fine-tuned checkpoints too."""
    carried = {k: v for k, v in meta.items() if k not in ("metrics", "train_state", "step", "best_metric",
                                                            "best_value", "finetune", "source_meta")}
    return {**carried, "format": FORMAT, "keep": meta.get("keep", []),
            "finetune": {**config_dict(cfg), "data": data}, "threads": torch.get_num_threads()}


def build_loader(job: FinetuneJob, input_size: Sequence[int], model_mean=None, model_std=None
                 ) -> Tuple[DataLoader, int]:
    """Shuffled (seeded) training loader and the number of classes / identities in it."""
    if job.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {job.batch_size}")
    if job.unlabeled:
        x = unlabeled_images(job.unlabeled, input_size, job.fit, job.subjects)
        y = torch.zeros(len(x), dtype=torch.long)   # never used: a label-free fine-tune has no head
        dataset: Dataset = TensorDataset(x)
    else:
        x, y = train_tensors(job.data, input_size, job.train.seed, job.subjects, job.fit, job.mean, job.std,
                             model_mean, model_std)
        dataset = TensorDataset(x, y)
    if job.augment:
        dataset = RandomAugment(dataset)
    if job.hflip:
        dataset = RandomHFlip(dataset)
    loader = DataLoader(dataset, batch_size=job.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(job.train.seed))
    return loader, int(y.max()) + 1


def build_head(job: FinetuneJob, kind: str, name: str, model: nn.Module, input_size: Sequence[int],
               num_classes: int) -> Optional[nn.Module]:
    if kind == "classifier":
        if job.head not in (None, "none"):
            raise UserError(f"--head {job.head}: {name} is a classifier (plain cross-entropy); "
                            "heads are for embedders")
        return None
    if job.head == "none":
        return None
    return make_head(job.head or "arcface", output_size(model, input_size), num_classes, s=job.s, m=job.m)


def build_eval_fn(job: FinetuneJob, kind: str, input_size: Sequence[int], model_mean=None, model_std=None,
                  reference: Optional[nn.Module] = None, model_name: str = "") -> Optional[EvalFn]:
    cfg = job.eval
    if cfg is None and not job.unlabeled:
        spec = default_eval_spec(job.data)
        cfg = EvalConfig(data=spec, batch_size=job.batch_size, seed=job.train.seed) if spec else None
    if cfg is None:
        log.warning("no --eval_data: no best-checkpoint selection; the last state is saved")
        return None
    if cfg.split:  # target-true splits: the best checkpoint is chosen on the check part only
        return eval_setup(cfg, {"model": model_name, "input_size": list(input_size)}, reference).evaluate
    return build_setup(cfg, kind, input_size, model_mean=model_mean, model_std=model_std,
                       reference=reference).evaluate


def unlabeled_images(specs: Union[str, Sequence[str]], input_size: Sequence[int], fit: str = "pad",
                     subjects: Optional[str] = None) -> torch.Tensor:
    """Images of one or more folders (``image_folder:DIR``, ``identity_folders:DIR``, ``orl:DIR``:
    ``DIR/<any>/<img>``), face-preprocessed and concatenated; identities, if any, are ignored. ``subjects``
    selects the identity folders of ``orl:`` / ``identity_folders:`` specs; an ``image_folder:`` is read whole
    (so ``--unlabeled orl:ORL image_folder:OTHER --subjects s31..s40`` mixes ten identities with other images)."""
    from compression_tool.data import readers
    from compression_tool.data.preprocess import ImageTransform

    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise UserError("--unlabeled: give at least one folder of images")
    c, h, w = (int(v) for v in input_size)
    transform = ImageTransform(size=(h, w), channels=c, fit=fit)
    parts = []
    for spec in specs:
        ds = parse_data_spec(spec, "--unlabeled")
        if ds.kind not in ("image_folder", "identity_folders", "orl"):
            raise UserError(f"--unlabeled {spec}: expected a folder of images (image_folder:DIR, "
                            "identity_folders:DIR, orl:DIR)")
        chosen = None if ds.kind == "image_folder" else readers.parse_subjects(subjects)
        parts.append(readers.read_identity_dataset(ds.path, transform, chosen)[0])
        log.info("%d unlabeled images from %s", len(parts[-1]), ds.path)
    return torch.cat(parts)


def feature_channel_map(meta: Dict[str, Any], student: nn.Module, teacher: nn.Module, layers: Sequence[str]
                        ) -> Dict[str, List[int]]:
    """For each ``--feature_distill`` layer the student (thinned per ``meta["keep"]``) has fewer channels at: the
    teacher channel each of its channels was. A container layer (``conv1``, ``blocks.4``) is looked up by its last
    leaf module; a layer of unchanged width needs no entry."""
    out: Dict[str, List[int]] = {}
    for name in layers:
        find_module(student, name, "model")
        find_module(teacher, name, "teacher")
        idx = teacher_channels(meta.get("keep", []), name)
        if idx is None:
            idx = teacher_channels(meta.get("keep", []), output_leaf(student, name))
        if idx is not None:
            out[name] = idx
    return out


def run_finetune(job: FinetuneJob) -> FinetuneResult:
    """Fine-tune ``job.source``; checkpoints keep the thinned format, so every tool reloads them."""
    if (job.teacher is None) != (job.train.distill is None):
        raise UserError("distillation needs both --teacher_path and --distill cosine|mse|kd")
    if job.unlabeled and (job.teacher is None or job.head not in (None, "none")):
        raise UserError("--unlabeled: label-free fine-tuning distills the teacher: give --teacher_path and "
                        "--distill, and no --head")
    if job.unlabeled:
        job.head = "none"
    parse_data_spec(job.data)
    resolve_device(job.train.device)                # a bad --device before the data is read
    model, meta = load_source(job.source)
    name, input_size = meta["model"], meta["input_size"]
    spec = model_spec(name)
    teacher = None
    if job.teacher is not None:
        teacher, _ = load_model(job.teacher.path, name, job.teacher.from_data_parallel, input_size,
                                trust=job.teacher.trust, **meta.get("model_kwargs", {}))
    loader, num_classes = build_loader(job, input_size, spec.mean, spec.std)
    if job.eval is not None and job.eval.metric == "fidelity" and teacher is None:
        raise UserError("--metric fidelity: the reference embeddings come from --teacher_path; give one")
    torch.manual_seed(job.train.seed)  # the margin head's initialisation follows the seed too
    head = build_head(job, spec.kind, name, model, input_size, num_classes)
    cfg = job.train
    cfg.milestones = milestone_iters(job.milestones, len(loader))
    cfg.save_dir = cfg.save_dir or f"work_space/finetune/{name}"
    channels = feature_channel_map(meta, model, teacher, expand_layers(model, cfg.feature_layers)) \
        if cfg.feature_layers and teacher is not None else None
    return finetune(model, loader, cfg, task=spec.kind, head=head, teacher=teacher,
                    eval_fn=build_eval_fn(job, spec.kind, input_size, spec.mean, spec.std, teacher, name),
                    meta=checkpoint_meta(meta, cfg, job.data), resume=job.resume,
                    trust_resume=job.source.trust, feature_channels=channels)
