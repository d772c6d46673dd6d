"""Budget schedules chosen by a short fine-tune (``auto_make_yaml.py --flops F --select finetune_proxy``).

One MACs budget, several candidate schedules, the one that fine-tunes best wins:

1. **Candidates**: for every criterion (``criteria``) a sensitivity analysis on the SA part
   (``engine.sensitivity.sweep``, levels 0..0.9), then the budget schedule of ``auto_make_yaml.py --flops``
   (``engine.budget.schedule_for_budget``) for every ordering of the moves (``orderings``: by SA ``top1``, by SA
   ``loss`` — the finer signal on a small SA part) and every scope (``all`` groups, or ``inner``: not the groups
   several convs write into, e.g. a ResNet's residual streams, ``engine.groups.stream_roots``). Each candidate is
   thinned and its BN statistics re-estimated on calibration batches (AdaBN,
   ``engine.target_true.ComposedChecker``).
2. **Selection** (``select``): ``finetune_proxy`` gives every candidate a ``proxy_epochs`` run of the fine-tune
   recipe (``ProxyRecipe``: ``train_module.finetune.step_decay_config``, random crop + flip) on the training side
   minus the selection part and scores its top-1 on the selection part; ``adabn`` scores the thinned + AdaBN
   candidate there as is (EagleEye-style). The best score wins (the first candidate on a tie). The winner's
   *pruned* weights (not the proxy's) are what the caller fine-tunes for real.

Data (``ProxyData.from_parts``): the ``sa``/``check``/``report`` parts of ``--split``; the training side is SA +
check; the selection part is a seeded subset of the check part, the proxy runs train on the rest of the training
side; calibration batches are seeded draws from the training side; the report part is never used to choose.
``benchmarks/fastnas_resnet20.py`` (arms ``ours_selected`` / ``ours_ftproxy``) runs the same functions.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from compression_tool.data.augment import CropFlip
from compression_tool.data.spec import parse_data_spec
from compression_tool.data.splits import SplitSpec
from compression_tool.engine.budget import BudgetResult, schedule_for_budget
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.cost import params_and_macs
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex, stream_roots
from compression_tool.engine.schedule import build_schedule, write_schedule
from compression_tool.engine.sensitivity import sweep
from compression_tool.engine.target_true import ComposedChecker, TargetTrueConfig, classifier_evaluator
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_json, check_writable
from model_define import model_spec
from test_module.classification import evaluate_classifier
from train_module.finetune import finetune_classifier, step_decay_config

log = logging.getLogger(__name__)

LEVELS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
SA_METRICS = ("top1", "top5", "loss")
SCOPES = ("all", "inner")
SELECTORS = ("finetune_proxy", "adabn")
AUGMENTS = ("crop_flip", "crop", "none")
Tensors = Tuple[torch.Tensor, torch.Tensor]
Scorer = Callable[[str, nn.Module], float]     # (candidate name, thinned + AdaBN model) -> score, higher is better


@dataclass
class ProxyRecipe:
    """The fine-tune recipe of the proxy runs (and of the benchmark's final fine-tune): SGD, momentum 0.9, weight
    decay 5e-4, LR / 10 at 50 % and 75 % of the iterations, shuffled batches seeded by ``seed``."""
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0
    augment: str = "crop_flip"        # crop_flip | crop | none (random crop of the zero-padded image, h-flip)
    pad: int = 4                      # crop padding in pixels (CIFAR: 4)
    distill: Optional[str] = None     # logit distillation from the unpruned model: mse | cosine | kd
    alpha: float = 1.0

    def loader(self, x: torch.Tensor, y: torch.Tensor) -> DataLoader:
        ds = (CropFlip(x, y, self.pad, flip=self.augment == "crop_flip") if self.augment != "none"
              else TensorDataset(x, y))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def finetune(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                 teacher: Optional[nn.Module] = None) -> None:
        """``epochs`` of the recipe over ``(x, y)``, in place (no progress bar, no files)."""
        loader = self.loader(x, y)
        cfg = step_decay_config(epochs, len(loader), self.lr, self.seed)
        cfg.progress = False
        if teacher is not None and self.distill:
            cfg.distill, cfg.alpha = self.distill, self.alpha
        finetune_classifier(model, loader, cfg, teacher=teacher if cfg.distill else None)


@dataclass
class ProxySelectConfig:
    keep: float = 0.5                               # fraction of the unpruned MACs to keep
    criteria: Sequence[str] = ("l1", "fpgm")
    orderings: Sequence[str] = ("top1", "loss")     # SA column that orders the budget moves
    scopes: Sequence[str] = SCOPES
    select: str = "finetune_proxy"                  # finetune_proxy | adabn
    proxy_epochs: int = 1
    recipe: ProxyRecipe = field(default_factory=ProxyRecipe)
    levels: Sequence[float] = LEVELS                # SA sparsity grid
    ignore: Sequence[str] = ()                      # never pruned, in every scope
    round_to: int = 1
    sa_batch_size: int = 250
    work_dir: str = "work_space/proxy_select"       # the SA CSVs (rewritten on every run)

    def validate(self) -> None:
        if not 0.0 < self.keep < 1.0:
            raise UserError(f"--flops: expected the fraction of the MACs to keep, in (0, 1), got {self.keep}")
        if not self.criteria:
            raise UserError("--criteria: give at least one criterion, e.g. l1,fpgm")
        for c in self.criteria:
            make_criterion(c)                       # an unknown name: one line listing the known ones
        bad = [o for o in self.orderings if o not in SA_METRICS]
        if bad or not self.orderings:
            raise UserError(f"--orderings: expected some of {', '.join(SA_METRICS)}, got {','.join(self.orderings)}")
        bad = [s for s in self.scopes if s not in SCOPES]
        if bad or not self.scopes:
            raise UserError(f"--scopes: expected some of {', '.join(SCOPES)}, got {','.join(self.scopes)}")
        if self.select not in SELECTORS:
            raise UserError(f"--select: expected one of {', '.join(SELECTORS)}, got {self.select!r}")
        if self.select == "finetune_proxy" and self.proxy_epochs < 1:
            raise UserError(f"--proxy_epochs: expected at least 1, got {self.proxy_epochs}")
        r = self.recipe
        if not (r.lr > 0 and r.lr < float("inf")):
            raise UserError(f"--lr: expected a positive number, got {r.lr}")
        if r.batch_size < 1:
            raise UserError(f"--batch_size: expected at least 1, got {r.batch_size}")
        if r.augment not in AUGMENTS:
            raise UserError(f"--augment: expected one of {', '.join(AUGMENTS)}, got {r.augment!r}")


@dataclass
class ProxyData:
    """The tensors the selection uses, all from the training side of the split."""
    sa: Tensors                      # sensitivity analysis (and data-driven criteria's statistics)
    proxy_train: Tensors             # proxy fine-tunes: the training side minus the selection part
    select: Tensors                  # where candidates are scored
    train: Tensors                   # the whole training side (SA + check): the real fine-tune's data
    calib: List[torch.Tensor]        # AdaBN batches

    @classmethod
    def from_parts(cls, parts: Mapping[str, Tensors], select: Union[int, float], seed: int, calib_batches: int,
                   calib_batch_size: int = 64) -> "ProxyData":
        """``select``: a count of check-part images, or a fraction in (0, 1) of them; seeded by ``seed``. Calibration
        cycles through a seeded (``seed + 1``) permutation of the training side."""
        check = parts["check"]
        n = len(check[1])
        k = int(round(select * n)) if isinstance(select, float) and select < 1 else int(select)
        if not 1 <= k < n:
            raise UserError(f"--select_part {select:g}: the {n}-image check part must keep at least one image on "
                            "each side (selection and proxy training)")
        if calib_batches < 1:
            raise UserError("candidate selection re-estimates BN statistics: --bn_recalib must be at least 1")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        sel = tuple(t[perm[:k]] for t in check)
        proxy_train = tuple(torch.cat([a, c[perm[k:]]]) for a, c in zip(parts["sa"], check))
        train = tuple(torch.cat([a, c]) for a, c in zip(parts["sa"], check))
        perm = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed + 1))
        b = calib_batch_size
        calib = [train[0][perm[(i * b) % len(perm):][:b]] for i in range(calib_batches)]
        return cls(tuple(parts["sa"]), proxy_train, sel, train, calib)


@dataclass
class Candidate:
    name: str                        # criterion/ordering/scope
    criterion: str
    ordering: str
    scope: str
    model: nn.Module                 # thinned + AdaBN
    budget: BudgetResult
    scores: Dict[str, float] = field(default_factory=dict)   # selector -> score on the selection part

    @property
    def schedule(self) -> Dict[str, float]:
        return {k: v for k, v in self.budget.sparsities.items() if v > 0}

    def row(self) -> Dict:
        b = self.budget
        return {"name": self.name, "criterion": self.criterion, "ordering": self.ordering, "scope": self.scope,
                "scores": dict(self.scores), "macs": b.macs, "params": b.params, "macs_kept": b.macs_kept,
                "params_kept": b.params / b.base_params, "moves": b.moves, "total_moves": b.total_moves,
                "schedule": self.schedule}


@dataclass
class ProxySelection:
    candidates: List[Candidate]
    select: str
    chosen: str
    seconds: Dict[str, float]

    @property
    def winner(self) -> Candidate:
        return next(c for c in self.candidates if c.name == self.chosen)


def budget_candidates(model: nn.Module, x0: torch.Tensor, data: ProxyData, cfg: ProxySelectConfig
                      ) -> List[Candidate]:
    """Every ``criterion/ordering/scope`` budget schedule, thinned + AdaBN (SA on ``data.sa``)."""
    sa_x, sa_y = data.sa
    sa_loader = DataLoader(TensorDataset(sa_x, sa_y), batch_size=cfg.sa_batch_size)
    streams = stream_roots(model, x0) if "inner" in cfg.scopes else []
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out: List[Candidate] = []
    for name in cfg.criteria:
        crit = make_criterion(name)
        if crit.needs_data:   # taylor, thinet, hrank…: statistics from the SA part (with labels)
            crit.prepare(model, [(sa_x[i:i + 100], sa_y[i:i + 100]) for i in range(0, len(sa_y), 100)],
                         {g.root_name: g.root for g in GroupIndex(model, x0, ignore=cfg.ignore).groups})
        csv = work / f"{name}_sa.csv"
        t = time.perf_counter()
        sweep(model, GroupIndex(model, x0, ignore=cfg.ignore), crit, lambda m: evaluate_classifier(m, sa_loader),
              csv, list(cfg.levels), list(SA_METRICS), force=True)
        log.info("SA %s: %.0f s", name, time.perf_counter() - t)
        inner_csv = csv.with_name(csv.stem + "_inner.csv")
        if "inner" in cfg.scopes:
            lines = csv.read_text().splitlines(keepends=True)
            inner_csv.write_text("".join(ln for ln in lines
                                         if ln.split(",")[0] not in {f"{r}.weight" for r in streams}))
        for scope in cfg.scopes:
            ignore = [*cfg.ignore, *(streams if scope == "inner" else [])]
            chk = ComposedChecker(model, x0, crit, classifier_evaluator(*data.sa), data.calib,
                                  TargetTrueConfig(drop=0.0, bn_recalib_batches=len(data.calib), bn_mode="always"),
                                  ignore=ignore)
            for ordering in cfg.orderings:
                budget = schedule_for_budget(str(inner_csv if scope == "inner" else csv), model, x0, cfg.keep,
                                             metric=ordering, ignore=ignore, round_to=cfg.round_to)
                out.append(Candidate(f"{name}/{ordering}/{scope}", name, ordering, scope,
                                     chk.build(budget.sparsities, adabn=True), budget))
    return out


def proxy_scorer(data: ProxyData, cfg: ProxySelectConfig, teacher: Optional[nn.Module] = None) -> Scorer:
    """``finetune_proxy``: top-1 on the selection part after a ``proxy_epochs`` run of the recipe on a copy."""
    evaluate = classifier_evaluator(*data.select)

    def score(name: str, m: nn.Module) -> float:
        m = copy.deepcopy(m)
        cfg.recipe.finetune(m, *data.proxy_train, cfg.proxy_epochs, teacher)
        return evaluate(m).value
    return score


def adabn_scorer(data: ProxyData) -> Scorer:
    """``adabn``: top-1 of the thinned + AdaBN candidate on the selection part, as is."""
    evaluate = classifier_evaluator(*data.select)
    return lambda name, m: evaluate(m).value


def select_candidate(candidates: List[Candidate], select: str, scorer: Scorer) -> ProxySelection:
    """Score every candidate (``scores[select]``) and keep the best (the first one on a tie)."""
    if not candidates:
        raise UserError("candidate selection: no candidate schedules")
    t = time.perf_counter()
    for c in tqdm(candidates, desc=f"select ({select})", unit="candidate", leave=False):
        c.scores[select] = float(scorer(c.name, c.model))
        log.info("candidate %-20s %s %.2f, MACs kept %.3f", c.name, select, c.scores[select], c.budget.macs_kept)
    best = max(candidates, key=lambda c: c.scores[select])
    return ProxySelection(candidates, select, best.name, {"select": time.perf_counter() - t})


def proxy_select(model: nn.Module, x0: torch.Tensor, data: ProxyData, cfg: ProxySelectConfig,
                 teacher: Optional[nn.Module] = None, scorer: Optional[Scorer] = None,
                 candidates: Optional[List[Candidate]] = None) -> ProxySelection:
    """Candidates (unless given) + selection by ``cfg.select`` (or by ``scorer``, e.g. a test's)."""
    cfg.validate()
    t = time.perf_counter()
    if candidates is None:
        candidates = budget_candidates(model, x0, data, cfg)
    t_cands = time.perf_counter() - t
    if scorer is None:
        scorer = proxy_scorer(data, cfg, teacher) if cfg.select == "finetune_proxy" else adabn_scorer(data)
    result = select_candidate(candidates, cfg.select, scorer)
    result.seconds["candidates"] = t_cands
    return result


# ------------------------------------------------------------------------------------------------ the CLI's job

@dataclass
class ProxySelectJob:
    """``auto_make_yaml.py --flops F --select …``: checkpoint + classifier data spec -> winner's YAML + report."""
    checkpoint: str
    data: str
    config: ProxySelectConfig
    model_name: Optional[str] = None
    split: SplitSpec = SplitSpec((0.34, 0.33, 0.33), 0)
    select_part: Union[int, float] = 0.25       # of the check part: a fraction in (0, 1) or a count
    bn_recalib: int = 8                          # calibration batches of ``calib_batch_size``
    calib_batch_size: int = 64
    from_data_parallel: bool = False
    input_size: Optional[List[int]] = None
    trust: bool = False
    data_seed: int = 0
    dataset: Optional[str] = None                # recorded in the YAML (default: the data spec's kind)
    output: Optional[str] = None
    force: bool = False


def default_output(arch: str, keep: float, select: str) -> Path:
    return Path("yaml_file") / f"{arch}_flops-{round(100 * keep)}_{select}.yaml"


def run_proxy_select(job: ProxySelectJob, scorer: Optional[Scorer] = None) -> Tuple[ProxySelection, Path, Path]:
    """Load, split, select; write the winner's Distiller-style YAML and the JSON report (atomically, refusing to
    overwrite without ``force``). ``scorer`` replaces the selector's scoring (tests)."""
    from compression_tool.apps.target_true import split_data

    cfg = job.config
    cfg.validate()
    if parse_data_spec(job.data).is_face:
        raise UserError(f"--select: candidate selection fine-tunes a classifier; {job.data} is face verification "
                        "data (use --mode target_true)")
    model, meta = load_model(job.checkpoint, job.model_name, job.from_data_parallel, job.input_size, trust=job.trust)
    arch = meta["model"]
    input_size = list(job.input_size or meta["input_size"])
    out = Path(job.output or default_output(arch, cfg.keep, cfg.select))
    report_path = out.with_suffix(".report.json")
    check_writable(out, job.force)
    check_writable(report_path, job.force)
    spec = model_spec(arch)
    parts = split_data(job.data, input_size, job.split, job.data_seed, model_mean=spec.mean, model_std=spec.std)
    data = ProxyData.from_parts(parts, job.select_part, job.split.seed, job.bn_recalib, job.calib_batch_size)
    x0 = example_input(input_size)
    teacher = copy.deepcopy(model).eval() if cfg.recipe.distill else None
    result = proxy_select(model, x0, data, cfg, teacher=teacher, scorer=scorer)
    win = result.winner
    report_eval = classifier_evaluator(*parts["report"])
    unpruned, pruned = report_eval(model).value, report_eval(win.model).value
    base = params_and_macs(model, x0)
    dataset = job.dataset or job.data.split(":")[0]
    doc = build_schedule(win.budget.sparsities, win.criterion, arch, dataset, input_size)
    doc["extensions"]["proxy_select"] = {
        "select": cfg.select, "chosen": win.name, "score": round(win.scores[cfg.select], 4),
        "proxy_epochs": cfg.proxy_epochs if cfg.select == "finetune_proxy" else None,
        "split": job.split.describe(), "data": job.data, "bn_recalib_batches": job.bn_recalib,
        "macs": [base["macs"], win.budget.macs], "params": [base["params"], win.budget.params]}
    how = (f"top-1 on the {len(data.select[1])}-image selection part after a {cfg.proxy_epochs}-epoch proxy "
           f"fine-tune on {len(data.proxy_train[1])} images" if cfg.select == "finetune_proxy"
           else f"top-1 of the thinned + AdaBN model on the {len(data.select[1])}-image selection part")
    header = (f"generated by auto_make_yaml.py --flops {cfg.keep:g} --select {cfg.select}\n"
              f"winner {win.name} of {len(result.candidates)} budget candidates by {how}: "
              f"{win.scores[cfg.select]:.2f}\n"
              f"MACs {100 * win.budget.macs_kept:.1f}% kept; thinned + AdaBN on {job.bn_recalib} batches (thin it "
              f"with pruning.py --mode prune --bn_recalib {job.bn_recalib}), then fine-tune; report part top-1 before "
              f"fine-tuning {pruned:.2f} (unpruned {unpruned:.2f}); split sa/check/report {job.split.sizes} seed "
              f"{job.split.seed}")
    write_schedule(doc, out, header, force=job.force)
    atomic_write_json(report_path, {
        "schedule": str(out), "checkpoint": job.checkpoint, "model": arch, "data": job.data,
        "split": job.split.describe(), "select": cfg.select, "chosen": win.name,
        "sizes": {"sa": len(data.sa[1]), "selection": len(data.select[1]), "proxy_train": len(data.proxy_train[1]),
                  "report": len(parts["report"][1]), "calibration_batches": len(data.calib),
                  "calibration_batch_size": job.calib_batch_size},
        "config": {**asdict(cfg), "criteria": list(cfg.criteria), "orderings": list(cfg.orderings),
                   "scopes": list(cfg.scopes), "levels": list(cfg.levels), "ignore": list(cfg.ignore)},
        "unpruned": {"macs": base["macs"], "params": base["params"], "report_top1": unpruned},
        "winner_report_top1_pruned": pruned,
        "candidates": [c.row() for c in result.candidates],
        "seconds": result.seconds}, force=job.force)
    return result, out, report_path
