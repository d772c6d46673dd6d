"""The classic three-step channel-pruning pipeline behind ``run.py``: 1 train the base model, 2 prune (thin)
it, 3 fine-tune (refine) the pruned model. Any subset of steps runs; a later step reuses what an earlier run
saved under ``work_space/output/<model>/<data>/model_base|model_prune|model_refine/model.pth``.

Every step appends per-epoch lines (top-1, top-k, loss, train and eval throughput) to
``work_space/log/<model>_<data>_<step>.log``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compression_tool.data.normalise import default_stats, normalise
from compression_tool.engine.checkpoint import example_input, load_model, save_pruned
from compression_tool.engine.cost import measure
from compression_tool.engine.criteria import Criterion, make_criterion
from compression_tool.engine.criteria.stats import bn_sparsity
from compression_tool.engine.criteria.weight import DEFAULT_REDUCTION
from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.engine.report import format_report
from compression_tool.engine.strategies import global_counts
from compression_tool.engine.thinning import thin
from compression_tool.io.errors import UserError
from compression_tool.io.files import check_writable
from model_define import list_models, model_spec

log = logging.getLogger(__name__)

DATA_TYPES = ("digits", "mnist", "cifar10", "cifar100", "json")
MODEL_ALIASES = {"lenet": "lenet5", "vgg16": "vgg16_bn", "vgg": "vgg16_bn"}
STAGES = {1: "model_base", 2: "model_prune", 3: "model_refine"}
GLOBAL_SCOPE_CRITERIA = ("bn",)   # scores comparable across layers: one global threshold, as in slimming
BN_CRITERIA = ("bn", "bn_similarity")   # rank channels by BatchNorm parameters: need a model with affine BNs


# ---------------------------------------------------------------------------- data

@dataclass
class PipelineData:
    train: TensorDataset
    test: TensorDataset
    input_size: Tuple[int, int, int]
    num_classes: int


def resolve_model(name: str) -> str:
    """Registry name for ``--model`` (the platform's short names such as ``lenet`` are accepted)."""
    name = MODEL_ALIASES.get(name, name)
    spec = model_spec(name)                          # UserError listing the known models; notes other tools' names
    name = spec.name
    if spec.kind != "classifier":
        raise UserError(f"--model {name}: run.py trains classifiers; {name} is a {spec.kind} "
                        f"(classifiers: {', '.join(m for m in list_models() if model_spec(m).kind == 'classifier')})")
    return name


def default_data_path(data_type: str) -> Path:
    return Path("data") / data_type


CUSTOM_DATA_ROOT = Path("myData")     # the OneFlow platform's folder for --data_type=<name> JSON datasets


def resolve_dataset(data_type: str, data_path: Optional[str]) -> Tuple[str, str, Optional[str]]:
    """(reader kind, dataset name for output folders and logs, data path) for ``--data_type``.

    A name that is not a built-in kind is a JSON dataset under ``myData/<name>/`` (train.json, test.json), as the
    OneFlow platform documents it; ``json`` datasets are named after their folder (``json_<folder>`` when the folder
    is called like a built-in kind), so two datasets never share outputs."""
    if data_type in DATA_TYPES:
        if data_type == "json" and data_path:        # named after its folder, as --data_type NAME would be
            name = Path(data_path).resolve().name or "json"
            return "json", name if name == "json" or name not in DATA_TYPES else f"json_{name}", data_path
        return data_type, data_type, data_path
    path = Path(data_path) if data_path else CUSTOM_DATA_ROOT / data_type
    if not data_type or not all(c.isalnum() or c in "-_." for c in data_type) \
            or (not data_path and not (path / "train.json").is_file()):
        raise UserError(f"--data_type: unknown {data_type!r}; known: {', '.join(DATA_TYPES)}, or the name of a JSON "
                        f"dataset with train.json and test.json under {CUSTOM_DATA_ROOT}/<name>/ (or --data_path)")
    return "json", data_type, str(path)


def _read_split(data_type: str, path: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    from compression_tool.data import readers

    if data_type == "mnist":
        x, y = readers.read_mnist(path, split)
    elif data_type in ("cifar10", "cifar100"):
        x, y = readers.read_cifar(path, split, classes=10 if data_type == "cifar10" else 100)
    else:
        x, y = readers.read_json_data(path, split)
    x = x.float()
    mean, std = default_stats(data_type, x.shape[1])
    if mean is not None and len(mean) not in (1, x.shape[1]):
        mean, std = mean[:1], std[:1]
    return normalise(x, mean, std), y.long()


def load_data(data_type: str, data_path: Optional[str], model_input: Sequence[int], seed: int = 0) -> PipelineData:
    """Train and test tensors for ``--data_type``; digits follow the model's input size, the rest set it."""
    if data_type not in DATA_TYPES:
        raise UserError(f"--data_type: unknown {data_type!r}; known: {', '.join(DATA_TYPES)}")
    if data_type == "digits":
        from compression_tool.data.digits import DIGITS_CLASSES, digits_split

        c, h, w = model_input
        size = h if h == w else 16
        (xtr, ytr), (xte, yte) = digits_split(image_size=size, channels=c, seed=seed)
        return PipelineData(TensorDataset(xtr, ytr), TensorDataset(xte, yte), (c, size, size), DIGITS_CLASSES)
    path = Path(data_path) if data_path else default_data_path(data_type)
    xtr, ytr = _read_split(data_type, path, "train")
    xte, yte = _read_split(data_type, path, "test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UserError(f"{path}: train images are {tuple(xtr.shape[1:])} but test images {tuple(xte.shape[1:])}")
    classes = {"cifar100": 100, "mnist": 10, "cifar10": 10}.get(data_type) or int(max(ytr.max(), yte.max())) + 1
    return PipelineData(TensorDataset(xtr, ytr), TensorDataset(xte, yte), tuple(xtr.shape[1:]), classes)


# ---------------------------------------------------------------------------- per-epoch log

class EpochLog:
    """Appends ``key=value`` lines to a log file; measures train and eval throughput between evaluations."""

    def __init__(self, path: Path, n_train: int, n_test: int, header: str):
        self.path, self.n_train, self.n_test = path, n_train, n_test
        path.parent.mkdir(parents=True, exist_ok=True)
        self.epoch = 0
        self.mark = time.perf_counter()
        self.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {header}")

    def write(self, line: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        log.info("%s", line)

    def record(self, metrics: Mapping[str, float], eval_seconds: float, train_seconds: Optional[float]) -> None:
        self.epoch += 1
        parts = [f"epoch={self.epoch}"] + [f"{k}={v:.4f}" for k, v in metrics.items()]
        if train_seconds:
            parts.append(f"train_img_per_s={self.n_train / train_seconds:.1f}")
        parts.append(f"eval_img_per_s={self.n_test / max(eval_seconds, 1e-9):.1f}")
        self.write(" ".join(parts))

    def evaluator(self, evaluate):
        """Wrap ``evaluate(model)`` for the fine-tune loop: the time since the last call is one epoch of training."""
        def fn(model: nn.Module):
            train_seconds = time.perf_counter() - self.mark
            t0 = time.perf_counter()
            metrics = evaluate(model)
            self.record(metrics, time.perf_counter() - t0, train_seconds)
            self.mark = time.perf_counter()
            return metrics
        return fn


# ---------------------------------------------------------------------------- pruning decisions

def layer_counts(groups: Sequence[PrunableGroup], percent: float) -> List[int]:
    """Every group loses ``percent`` of its channels."""
    return [g.n_prune(percent) for g in groups]


def has_bn(index: GroupIndex, g: PrunableGroup) -> bool:
    mods = dict(index.model.named_modules())
    return any(isinstance(mods[m], nn.modules.batchnorm._BatchNorm) for m in g.members)


def plan_pruning(index: GroupIndex, crit: Criterion, percent: float, scope: str) -> Dict[str, List[int]]:
    """{group: root channels to remove} for ``percent`` per layer or under one global threshold.

    With a BN criterion the global threshold covers the groups that have a BN (as network slimming does):
    gammas are comparable across layers, a BN-less layer's fallback score is not, so those layers stay whole.
    """
    groups = index.groups
    if scope == "global":
        if crit.name in GLOBAL_SCOPE_CRITERIA:
            skipped = [g.name for g in groups if not has_bn(index, g)]
            if skipped:
                log.info("global %s threshold: layers without BN are not pruned: %s", crit.name, ", ".join(skipped))
            groups = [g for g in groups if g.name not in skipped]
            if not groups:
                raise UserError(f"--prune_method {crit.name} --scope global: the model has no BatchNorm layers; "
                                "use --scope layer or another criterion")
        counts = global_counts([g.channels for g in groups], [crit(index, g) for g in groups],
                               percent, max_ratio=1.0, normalise=not crit.comparable_across_layers)
    else:
        counts = layer_counts(groups, percent)
    return {g.name: crit.select(index, g, n) for g, n in zip(groups, counts) if n > 0}


# ---------------------------------------------------------------------------- the pipeline

@dataclass
class PipelineConfig:
    model: str
    data_type: str = "digits"
    data_path: Optional[str] = None
    prune_method: str = "l1"
    percent: float = 0.5
    scope: str = "auto"                 # layer | global | auto (global for bn)
    steps: str = "123"
    epochs: int = 10
    refine_epochs: int = 5
    lr: float = 0.05
    refine_lr: float = 0.01
    sr: float = 0.0                     # BN-gamma L1 sparsity during step 1 (network slimming)
    batch_size: int = 64
    topk: int = 5
    limit: int = 5                      # batches for data-driven criteria
    reduction: str = DEFAULT_REDUCTION  # l1 / l2 / fpgm: first | mean | sum | max over the coupled group
    seed: int = 0
    work_space: str = "work_space"
    force: bool = False
    progress: bool = True
    ignore: List[str] = field(default_factory=list)
    trust: bool = False                 # full unpickling of saved checkpoints (--trust_checkpoint)


@dataclass
class StepResult:
    step: int
    path: Path
    metrics: Dict[str, float]
    summary: str


def parse_steps(text: str) -> List[int]:
    steps = sorted({int(c) for c in text if c.isdigit()}) if text and set(text) <= set("123") else []
    if not steps:
        raise UserError("--step: expected digits from 1 (train base), 2 (prune), 3 (fine-tune), e.g. 123; "
                        f"got {text!r}")
    return steps


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        if not 0.0 <= cfg.percent < 1.0:
            raise UserError(f"--percent: the fraction of channels to prune must be in [0, 1), got {cfg.percent}")
        if cfg.scope not in ("auto", "layer", "global"):
            raise UserError(f"--scope: expected auto, layer or global, got {cfg.scope!r}")
        self.cfg = cfg
        self.model_name = resolve_model(cfg.model)
        self.steps = parse_steps(cfg.steps)
        self.data_kind, self.dataset, data_path = resolve_dataset(cfg.data_type, cfg.data_path)
        self.out_dir = Path(cfg.work_space) / "output" / self.model_name / self.dataset
        self.log_dir = Path(cfg.work_space) / "log"
        spec = model_spec(self.model_name)
        self.data = load_data(self.data_kind, data_path, spec.input_size, cfg.seed)
        self._check_method(spec)
        g = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = DataLoader(self.data.train, batch_size=cfg.batch_size, shuffle=True, generator=g)
        self.test_loader = DataLoader(self.data.test, batch_size=max(cfg.batch_size, 256), shuffle=False)

    def _check_method(self, spec) -> None:
        """--prune_method and its fit with the model, before step 1 spends its epochs training."""
        from compression_tool.engine.criteria import CRITERIA

        cfg = self.cfg
        if cfg.prune_method not in CRITERIA:
            raise UserError(f"--prune_method: unknown pruning criterion {cfg.prune_method!r}; known: "
                            f"{', '.join(sorted(CRITERIA))}")
        for flag, v in (("--lr", cfg.lr), ("--refine_lr", cfg.refine_lr)):
            if not math.isfinite(v) or v <= 0:
                raise UserError(f"{flag} must be a positive number, got {v}")
        if not math.isfinite(cfg.sr) or cfg.sr < 0:
            raise UserError(f"--sr must be a number >= 0, got {cfg.sr}")
        try:
            probe = spec.build_for(self.data.input_size, num_classes=self.data.num_classes).eval()
            with torch.no_grad():
                probe(torch.zeros(1, *self.data.input_size))
        except RuntimeError as exc:
            size = "x".join(map(str, self.data.input_size))
            raise UserError(f"--model {self.model_name} cannot take this data's {size} images"
                            f" ({str(exc).splitlines()[0]}); pick a model for that input size") from None
        if cfg.prune_method in BN_CRITERIA or cfg.sr > 0:
            if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in probe.modules()):
                what = f"--prune_method {cfg.prune_method}" if cfg.prune_method in BN_CRITERIA else f"--sr {cfg.sr}"
                raise UserError(f"{what}: {self.model_name} has no BatchNorm layers, so there are no BN gammas to "
                                "use; pick another criterion (l1, fpgm, …) or a model with BN")

    def checkpoint(self, step: int) -> Path:
        return self.out_dir / STAGES[step] / "model.pth"

    def log_path(self, step: int) -> Path:
        return self.log_dir / f"{self.model_name}_{self.dataset}_{STAGES[step].split('_')[1]}.log"

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        from test_module.classification import evaluate_classifier
        return dict(evaluate_classifier(model, self.test_loader, topk=tuple(sorted({1, self.cfg.topk}))))

    def load(self, step: int) -> Tuple[nn.Module, Dict]:
        path = self.checkpoint(step)
        if not path.exists():
            raise UserError(f"step {step + 1} needs {path} from step {step} ({STAGES[step]}); run --step {step} first")
        return load_model(path, trust=self.cfg.trust)

    def run(self) -> Dict[int, StepResult]:
        """Run the chosen steps in order; {step: result}."""
        for step in self.steps:                       # fail before any work, not after
            check_writable(self.checkpoint(step), self.cfg.force)
        return {step: {1: self.train_base, 2: self.prune, 3: self.refine}[step]() for step in self.steps}

    def _meta(self, model: nn.Module, keep: List[Dict], stage: str, metrics: Mapping[str, float]) -> Dict:
        return {"model": self.model_name, "model_kwargs": {"num_classes": self.data.num_classes},
                "input_size": list(self.data.input_size), "keep": keep, "stage": stage,
                "data_type": self.data_kind, "dataset": self.dataset, "metrics": dict(metrics)}

    def _train(self, model: nn.Module, epochs: int, lr: float, step: int, sr: float = 0.0) -> Dict[str, float]:
        from train_module.finetune import FinetuneConfig, finetune_classifier

        iters = epochs * len(self.train_loader)
        cfg = FinetuneConfig(epochs=epochs, lr=lr, weight_decay=5e-4, milestones=(int(iters * 0.5), int(iters * 0.75)),
                             seed=self.cfg.seed, progress=self.cfg.progress)
        elog = EpochLog(self.log_path(step), len(self.data.train), len(self.data.test),
                        f"step {step} ({STAGES[step]}): {self.model_name} on {self.dataset}, {epochs} epochs, "
                        f"lr {lr}" + (f", sr {sr}" if sr else ""))
        flag = "--lr" if step == 1 else "--refine_lr"
        diverged = UserError(f"step {step}: the loss became NaN/inf (training diverged) at {flag} {lr:g}; "
                             f"lower {flag} (e.g. {flag} {lr / 10:g})")
        logged = elog.evaluator(self.evaluate)

        def eval_fn(m: nn.Module) -> Dict[str, float]:
            metrics = logged(m)
            if not math.isfinite(metrics.get("loss", 0.0)) or \
                    not all(bool(torch.isfinite(p).all()) for p in m.parameters()):
                raise diverged
            return metrics

        with bn_sparsity(model, sr):
            try:
                result = finetune_classifier(model, self.train_loader, cfg, eval_fn=eval_fn)
            except UserError as exc:
                if exc is diverged or str(exc).startswith("the loss became"):
                    raise diverged from None
                raise
        return dict(result.evals[-1][1]) if result.evals else self.evaluate(model)

    def train_base(self) -> StepResult:
        torch.manual_seed(self.cfg.seed)
        model = model_spec(self.model_name).build_for(self.data.input_size, num_classes=self.data.num_classes)
        metrics = self._train(model, self.cfg.epochs, self.cfg.lr, 1, self.cfg.sr)
        path = save_pruned(self.checkpoint(1), model, self._meta(model, [], "base", metrics), force=self.cfg.force)
        return StepResult(1, path, metrics, f"step 1 (train base): top1 {metrics['top1']:.2f}% -> {path}")

    def criterion(self, model: nn.Module, index: GroupIndex) -> Tuple[Criterion, str]:
        cfg = self.cfg
        crit = make_criterion(cfg.prune_method, limit=cfg.limit, cache_dir=str(Path(cfg.work_space) / "rank_conv"),
                              reduction=cfg.reduction,
                              tag=self.model_name, seed=cfg.seed)
        if crit.needs_data:
            crit.prepare(model, (x for x, _ in self.train_loader), {g.root_name: g.root for g in index.groups})
        scope = cfg.scope if cfg.scope != "auto" else ("global" if cfg.prune_method in GLOBAL_SCOPE_CRITERIA
                                                       else "layer")
        return crit, scope

    def prune(self) -> StepResult:
        model, meta = self.load(1)
        x = example_input(meta["input_size"])
        index = GroupIndex(model, x, ignore=self.cfg.ignore)
        crit, scope = self.criterion(model, index)
        before = measure(model, x, self.evaluate(model))
        keep = thin(index, plan_pruning(index, crit, self.cfg.percent, scope))
        after = measure(model, x, self.evaluate(model))
        report = format_report(before, after)
        elog = EpochLog(self.log_path(2), len(self.data.train), len(self.data.test),
                        f"step 2 (model_prune): {self.cfg.prune_method} {scope} percent {self.cfg.percent}")
        for line in report.splitlines():
            elog.write(line)
        path = save_pruned(self.checkpoint(2), model,
                           self._meta(model, [*meta.get("keep", []), keep], "prune", after), force=self.cfg.force)
        return StepResult(2, path, after, f"step 2 (prune {self.cfg.prune_method}, {scope} {self.cfg.percent:g}): "
                          f"top1 {before['top1']:.2f}% -> {after['top1']:.2f}%, "
                          f"MACs x{after['macs'] / before['macs']:.3f} -> {path}")

    def refine(self) -> StepResult:
        model, meta = self.load(2)
        metrics = self._train(model, self.cfg.refine_epochs, self.cfg.refine_lr, 3)
        path = save_pruned(self.checkpoint(3), model, {**meta, "stage": "refine", "metrics": metrics},
                           force=self.cfg.force)
        return StepResult(3, path, metrics, f"step 3 (fine-tune): top1 {metrics['top1']:.2f}% -> {path}")
