"""The face chain: sensitivity on a verification metric -> schedule for a FLOPs budget -> thin -> fine-tune (with
and/or without distillation) -> verify -> report.

``prune_face.sh`` runs the steps as separate commands; ``run_chain`` composes the same applications in one process
(the benchmark and the test). ``init_checkpoint`` and ``report`` back the two commands of
``python -m compression_tool.cli.face_chain`` (init: an untrained model recording its input size; report: verify
checkpoints and print one table of metrics, MACs, parameters and CPU latency).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.apps.finetune import FinetuneJob, run_finetune
from compression_tool.apps.workflow import (
    CriterionConfig,
    ModelSource,
    PruneConfig,
    SensitivityConfig,
    load_source,
    run_prune,
    run_sensitivity,
)
from compression_tool.engine.budget import schedule_for_budget, write_budget_schedule
from compression_tool.engine.checkpoint import example_input, save_pruned
from compression_tool.engine.cost import interleaved_latency, params_and_macs
from compression_tool.engine.sensitivity import parse_sparsities
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_json
from model_define import model_spec
from test_module.setup import EvalConfig, face_setup
from train_module.finetune import FinetuneConfig

Row = Tuple[str, Dict[str, float]]
TRAIN_SUBJECTS = "s3..s30"
ORL_TRAIN_IMAGES = 280                 # 28 subjects x 10 images: one epoch, for the warm-up length
COLUMNS = (("lfw_acc", "10-fold acc %", "{:.2f}"), ("lfw_std", "± std", "{:.2f}"),
           ("tpr@fpr=1e-2", "TPR@FPR=1e-2", "{:.4f}"), ("auc", "AUC", "{:.4f}"),
           ("macs", "MMACs", "{:.2f}"), ("params", "params (M)", "{:.3f}"), ("latency_ms", "latency ms", "{:.2f}"))


# ---------------------------------------------------------------- the two commands of this module

def init_checkpoint(path: str | Path, model: str, input_size: Sequence[int], seed: int = 0,
                    force: bool = False) -> Path:
    """An untrained ``model`` built for ``input_size`` (C, H, W), saved in the thinned-checkpoint format so
    every tool rebuilds it at that size (a plain state_dict would be rebuilt at the registered size)."""
    torch.manual_seed(seed)
    net = model_spec(model).build_for(input_size)
    return save_pruned(path, net, {"model": model, "model_kwargs": {}, "input_size": [int(v) for v in input_size],
                                   "keep": [], "init_seed": seed}, force=force)


def _loaded(path: str | Path, model: Optional[str], input_size: Optional[Sequence[int]],
            from_data_parallel: bool, trust: bool = False) -> Tuple[nn.Module, List[int]]:
    """(model, its C,H,W input): thinned checkpoints rebuild themselves; plain ones need ``model``."""
    net, meta = load_source(ModelSource(str(path), model, from_data_parallel, input_size, trust))
    return net, [int(v) for v in meta["input_size"]]


def verify(path: str | Path, data: str, model: Optional[str] = None, input_size: Optional[Sequence[int]] = None,
           metric: str = "lfw_acc", batch_size: int = 64, seed: int = 0, flip: bool = False,
           from_data_parallel: bool = False, trust: bool = False, subjects: Optional[str] = None) -> Dict[str, float]:
    """Verification metrics of one checkpoint on ``data`` (all pairs; identity folders: of ``subjects``) plus its
    params and MACs."""
    net, size = _loaded(path, model, input_size, from_data_parallel, trust)
    setup = face_setup(data, size, metric=metric, batch_size=batch_size, seed=seed, flip=flip, subjects=subjects)
    return {**setup.evaluate(net), **params_and_macs(net, example_input(size))}


def add_latency(rows: Sequence[Row], paths: Sequence[str], model: Optional[str] = None,
                input_size: Optional[Sequence[int]] = None, from_data_parallel: bool = False, rounds: int = 15,
                reps: int = 5, trust: bool = False) -> None:
    """``latency_ms`` of every row: median CPU time of one image at the current torch thread count, the models
    measured in alternation (``compression_tool.engine.cost.interleaved_latency``) so that load drifts hit all of
    them alike."""
    loaded = [_loaded(p, model, input_size, from_data_parallel, trust) for p in paths]
    times = interleaved_latency([net for net, _ in loaded], example_input(loaded[0][1]), rounds, reps)
    for (_, m), ms in zip(rows, times):
        m["latency_ms"] = ms


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table: one row per checkpoint, the verification metrics then the costs."""
    head = ["stage", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in rows:
        vals = []
        for key, _, fmt in COLUMNS:
            v = m.get(key)
            v = v / 1e6 if v is not None and key in ("macs", "params") else v
            vals.append("—" if v is None else fmt.format(v))
        lines.append("| " + " | ".join([label, *vals]) + " |")
    return "\n".join(lines)


def parse_labelled(items: Sequence[str]) -> List[Tuple[str, str]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise UserError(f"report: expected LABEL=CHECKPOINT, got {item!r}")
        out.append((label, path))
    return out


def report(labelled: Sequence[Tuple[str, str]], data: str, json_path: Optional[str] = None, force: bool = False,
           model: Optional[str] = None, input_size: Optional[Sequence[int]] = None, from_data_parallel: bool = False,
           trust: bool = False, **verify_kw) -> List[Row]:
    """Verify every checkpoint, then time them together; optionally write the rows to ``json_path``."""
    load_kw = dict(model=model, input_size=input_size, from_data_parallel=from_data_parallel, trust=trust)
    rows = [(label, verify(path, data, **load_kw, **verify_kw)) for label, path in labelled]
    add_latency(rows, [path for _, path in labelled], **load_kw)
    if json_path:
        atomic_write_json(json_path, {"data": data, "subjects": verify_kw.get("subjects"),
                                      "threads": torch.get_num_threads(),
                                      "rows": [{"stage": label, **m} for label, m in rows]}, force=force)
    return rows


# ---------------------------------------------------------------- the whole chain in one process

@dataclass
class ChainConfig:
    orl: str                                      # ORL root: s3..s30 train, s31..s40 verification pairs
    work: str = "work_space/face_chain"
    checkpoint: Optional[str] = None              # None: train the default embedder first
    model: str = "mobilefacenet"
    input_size: Tuple[int, int, int] = (3, 56, 48)
    from_data_parallel: bool = False
    reductions: Sequence[float] = (0.3, 0.5)      # fractions of the MACs to remove
    method: str = "l1"
    metric: str = "lfw_acc"
    sparsities: str = "0,0.2,0.4,0.6,0.8"
    eval_batches: Optional[int] = None            # sensitivity analysis: a fixed subset of the pairs
    batch_size: int = 32
    base_epochs: int = 12                         # default embedder: ArcFace from scratch
    base_lr: float = 0.1
    base_weight_decay: float = 5e-3
    ft_epochs: int = 6
    ft_lr: float = 0.01
    ft_max_iters: Optional[int] = None            # caps fine-tuning (the test)
    base_max_iters: Optional[int] = None
    distill: Sequence[str] = ("none", "cosine")   # one fine-tune per entry: none | cosine | mse
    alpha: float = 1.0                            # weight of the distillation loss
    freeze_bn: bool = False                       # fine-tuning: keep BN statistics fixed
    control: bool = False                         # also fine-tune the unpruned model the same way
    s: float = 32.0
    m: float = 0.5
    seed: int = 0

    @property
    def size_arg(self) -> str:
        return ",".join(str(v) for v in self.input_size)


@dataclass
class ChainResult:
    rows: List[Row] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    # reduction -> compression_tool.engine.budget.BudgetResult
    budgets: Dict[float, object] = field(default_factory=dict)
    paths: Dict[str, str] = field(default_factory=dict)


class _Timer:
    def __init__(self, result: ChainResult, name: str):
        self.result, self.name = result, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.result.seconds[self.name] = self.result.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0


def train_job(cfg: ChainConfig, checkpoint: str, save_dir: Path, epochs: int, lr: float, weight_decay: float,
              max_iters: Optional[int], teacher: Optional[str] = None, distill: str = "cosine",
              plain: bool = False) -> FinetuneJob:
    """ArcFace on s3..s30, fixed length, the last state saved (no checkpoint is chosen on the s31..s40 pairs that
    are reported)."""
    iters_per_epoch = -(-ORL_TRAIN_IMAGES // cfg.batch_size)
    source = ModelSource(checkpoint, cfg.model, cfg.from_data_parallel and plain,
                         cfg.input_size if plain else None)
    train = FinetuneConfig(epochs=epochs, max_iters=max_iters, lr=lr, weight_decay=weight_decay,
                           warmup_iters=min(iters_per_epoch, max_iters or iters_per_epoch),
                           distill=distill if teacher else None, alpha=cfg.alpha, freeze_bn=cfg.freeze_bn,
                           save_dir=str(save_dir), force=True, seed=cfg.seed)
    return FinetuneJob(source=source, data=f"identity_folders:{cfg.orl}", subjects=TRAIN_SUBJECTS, hflip=True,
                       head="arcface", s=cfg.s, m=cfg.m, batch_size=cfg.batch_size,
                       teacher=ModelSource(teacher, cfg.model, cfg.from_data_parallel) if teacher else None,
                       milestones=(0.6 * epochs, 0.85 * epochs), train=train)


def _last_checkpoint(save_dir: Path) -> str:
    found = sorted(save_dir.glob("last_step=*.pth"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"{save_dir}: the fine-tune wrote no last_step=*.pth checkpoint")
    return str(found[-1])


def train_baseline(cfg: ChainConfig, work: Path) -> str:
    """The chain's own embedder when none is given: ``init`` then ArcFace from scratch on s3..s30."""
    init = init_checkpoint(work / "init.pth", cfg.model, cfg.input_size, cfg.seed, force=True)
    save_dir = work / "baseline"
    run_finetune(train_job(cfg, str(init), save_dir, cfg.base_epochs, cfg.base_lr, cfg.base_weight_decay,
                           cfg.base_max_iters))
    return _last_checkpoint(save_dir)


def finetune_step(cfg: ChainConfig, checkpoint: str, save_dir: Path, teacher: Optional[str], distill: str,
                  plain: bool = False) -> str:
    """Fine-tune ``checkpoint`` for the chain; returns the last-state checkpoint."""
    run_finetune(train_job(cfg, checkpoint, save_dir, cfg.ft_epochs, cfg.ft_lr, 5e-4, cfg.ft_max_iters, teacher,
                           distill, plain))
    return _last_checkpoint(save_dir)


def run_chain(cfg: ChainConfig) -> ChainResult:
    """Every step of prune_face.sh, in one process; returns the report rows and the wall time of each step."""
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    res = ChainResult()
    data = f"orl:{cfg.orl}"
    # plain checkpoints need the model, input size and prefix rule; thinned ones rebuild themselves
    load_kw = dict(model=cfg.model, input_size=cfg.input_size, from_data_parallel=cfg.from_data_parallel)
    eval_cfg = EvalConfig(data=data, metric=cfg.metric, seed=cfg.seed, eval_batches=cfg.eval_batches)

    def record(label: str, path: str) -> None:
        with _Timer(res, "verify"):
            res.rows.append((label, verify(path, data, metric=cfg.metric, seed=cfg.seed, **load_kw)))
        res.paths[label] = str(path)

    with _Timer(res, "train baseline"):
        base = cfg.checkpoint or train_baseline(cfg, work)
    source = ModelSource(base, cfg.model, cfg.from_data_parallel, cfg.input_size)
    csv = work / f"{cfg.model}_{cfg.method}_{cfg.metric}.csv"
    crit = CriterionConfig(cfg.method, seed=cfg.seed, cache_dir=str(work / "rank_conv"))
    with _Timer(res, "sensitivity"):
        run_sensitivity(SensitivityConfig(source, eval_cfg, crit, parse_sparsities(cfg.sparsities), str(csv),
                                          str(work)))
    record("baseline", base)
    if cfg.control:  # the unpruned model fine-tuned the same way: what the extra training alone gives
        with _Timer(res, "fine-tune"):
            ft = finetune_step(cfg, base, work / "finetune_0_none", None, "none", plain=bool(cfg.checkpoint))
        record("baseline, fine-tuned (control)", ft)
    model, meta = load_source(source)
    for r in cfg.reductions:
        tag = f"{round(100 * r)}"
        yaml_path, pruned = work / f"{cfg.model}_flops-{tag}.yaml", work / f"{cfg.model}_flops-{tag}.pth"
        with _Timer(res, "schedule"):
            res.budgets[r] = schedule_for_budget(str(csv), model, example_input(meta["input_size"]), 1.0 - r,
                                                 cfg.metric)
            write_budget_schedule(res.budgets[r], yaml_path, str(csv), cfg.method, cfg.model, "orl",
                                  meta["input_size"], force=True)
        with _Timer(res, "thin"):
            run_prune(PruneConfig(source, str(yaml_path), eval_cfg, crit, save=True, output=str(pruned),
                                  work_space=str(work), force=True))
        record(f"-{tag}% MACs, pruned", str(pruned))
        for d in cfg.distill:
            teacher = base if d != "none" else None
            with _Timer(res, "fine-tune"):
                ft = finetune_step(cfg, str(pruned), work / f"finetune_{tag}_{d}", teacher, d)
            record(f"-{tag}% MACs, fine-tuned" + (f" + {d} distill" if teacher else ""), ft)
    with _Timer(res, "latency"):
        add_latency(res.rows, [res.paths[label] for label, _ in res.rows], **load_kw)
    atomic_write_json(work / "report.json", {"data": data, "threads": torch.get_num_threads(),
                                             "rows": [{"stage": k, **v} for k, v in res.rows],
                                             "seconds": res.seconds, "paths": res.paths})
    return res
