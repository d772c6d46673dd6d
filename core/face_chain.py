"""The face chain: sensitivity on a verification metric -> schedule for a FLOPs budget (core.budget) -> thin ->
fine-tune (with and/or without distillation) -> verify -> report.

``prune_face.sh`` runs the steps as separate commands. ``run_chain`` runs the very same commands (their CLI
``main`` functions, same flags) in one process, which saves the interpreter start-ups for the benchmark and the
test. Two small commands of this module complete the chain:

    python -m core.face_chain init --output W/init.pth --input_size 56,48     # untrained, records its input size
    python -m core.face_chain report baseline=W/base.pth pruned=W/pruned.pth \\
        --data orl:../shared/data/orl_faces --json W/report.json              # verify every checkpoint, one table

``report`` loads thinned and fine-tuned checkpoints (``core.checkpoint_io.load_model``) and measures the
metric next to MACs, parameters and CPU latency; ``python -m test_module.evaluate`` reads plain checkpoints at
the model's registered input size only.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from common.errors import UserError, cli_main
from common.io import atomic_write_json, check_writable
from core.report import interleaved_latency, params_and_macs

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
    from core.checkpoint_io import save_pruned
    from model_define import model_spec

    torch.manual_seed(seed)
    net = model_spec(model).build_for(input_size)
    return save_pruned(path, net, {"model": model, "model_kwargs": {}, "input_size": [int(v) for v in input_size],
                                   "keep": [], "init_seed": seed}, force=force)


def load_checkpoint(path: str | Path, model: Optional[str] = None, input_size: Optional[Sequence[int]] = None,
                    from_data_parallel: bool = False) -> Tuple[nn.Module, List[int]]:
    """(model, its C,H,W input): thinned checkpoints rebuild themselves; plain ones need ``model``."""
    from core.checkpoint_io import load_model

    net, meta = load_model(path, model, from_data_parallel, input_size)
    return net, [int(v) for v in (input_size or meta["input_size"])]


def verify(path: str | Path, data: str, model: Optional[str] = None, input_size: Optional[Sequence[int]] = None,
           metric: str = "lfw_acc", batch_size: int = 64, seed: int = 0, flip: bool = False,
           from_data_parallel: bool = False) -> Dict[str, float]:
    """Verification metrics of one checkpoint on ``data`` (all pairs) plus its params and MACs."""
    from core.checkpoint_io import example_input
    from core.evaluation import face_setup

    net, size = load_checkpoint(path, model, input_size, from_data_parallel)
    setup = face_setup(data, size, metric=metric, batch_size=batch_size, seed=seed, flip=flip)
    return {**setup.evaluate(net), **params_and_macs(net, example_input(size))}


def add_latency(rows: Sequence[Row], paths: Sequence[str], model: Optional[str] = None,
                input_size: Optional[Sequence[int]] = None, from_data_parallel: bool = False, rounds: int = 15,
                reps: int = 5) -> None:
    """``latency_ms`` of every row: median CPU time of one image at the current torch thread count, the models
    measured in alternation (``core.report.interleaved_latency``) so that load drifts hit all of them alike."""
    from core.checkpoint_io import example_input

    loaded = [load_checkpoint(p, model, input_size, from_data_parallel) for p in paths]
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
           **verify_kw) -> List[Row]:
    """Verify every checkpoint, then time them together; optionally write the rows to ``json_path``."""
    load_kw = dict(model=model, input_size=input_size, from_data_parallel=from_data_parallel)
    rows = [(label, verify(path, data, **load_kw, **verify_kw)) for label, path in labelled]
    add_latency(rows, [path for _, path in labelled], **load_kw)
    if json_path:
        atomic_write_json(json_path, {"data": data, "threads": torch.get_num_threads(),
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
    budgets: Dict[float, object] = field(default_factory=dict)     # reduction -> core.budget.BudgetResult
    paths: Dict[str, str] = field(default_factory=dict)


class _Timer:
    def __init__(self, result: ChainResult, name: str):
        self.result, self.name = result, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.result.seconds[self.name] = self.result.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0


def train_argv(cfg: ChainConfig, checkpoint: str, save_dir: Path, epochs: int, lr: float, weight_decay: float,
               max_iters: Optional[int], teacher: Optional[str] = None, distill: str = "cosine") -> List[str]:
    """``pruning.py --mode finetune`` / ``python -m train_module`` flags: ArcFace on s3..s30, fixed length, the
    last state saved (no checkpoint is chosen on the s31..s40 pairs that are reported)."""
    iters_per_epoch = -(-ORL_TRAIN_IMAGES // cfg.batch_size)
    argv = ["--best_model_path", checkpoint, "--data", f"identity_folders:{cfg.orl}", "--subjects", TRAIN_SUBJECTS,
            "--head", "arcface", "--s", str(cfg.s), "--m", str(cfg.m), "--epochs", str(epochs), "--lr", str(lr),
            "--weight_decay", str(weight_decay), "--batch_size", str(cfg.batch_size), "--hflip",
            "--warmup_iters", str(min(iters_per_epoch, max_iters or iters_per_epoch)),
            "--milestones", f"{0.6 * epochs:g},{0.85 * epochs:g}", "--save_dir", str(save_dir),
            "--seed", str(cfg.seed), "--force"]
    if max_iters:
        argv += ["--max_iters", str(max_iters)]
    if teacher:
        argv += ["--teacher_path", teacher, "--distill", distill, "--alpha", str(cfg.alpha)]
    return argv


def _last_checkpoint(save_dir: Path) -> str:
    found = sorted(save_dir.glob("last_step=*.pth"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"{save_dir}: the fine-tune wrote no last_step=*.pth checkpoint")
    return str(found[-1])


def _common(cfg: ChainConfig) -> List[str]:
    return ["--model", cfg.model, "--input_size", cfg.size_arg] + \
        (["--from_data_parallel"] if cfg.from_data_parallel else [])


def train_default(cfg: ChainConfig, work: Path) -> str:
    """The default embedder: ``init`` then ArcFace from scratch on s3..s30 (``pruning.py --mode finetune``)."""
    import pruning

    init = init_checkpoint(work / "init.pth", cfg.model, cfg.input_size, cfg.seed, force=True)
    save_dir = work / "baseline"
    torch.manual_seed(cfg.seed)  # the margin head is initialised from the global RNG
    pruning.main(["--mode", "finetune", *train_argv(cfg, str(init), save_dir, cfg.base_epochs, cfg.base_lr,
                                                     cfg.base_weight_decay, cfg.base_max_iters)])
    return _last_checkpoint(save_dir)


def finetune_step(cfg: ChainConfig, checkpoint: str, save_dir: Path, teacher: Optional[str], distill: str,
                  plain: bool = False) -> str:
    """``pruning.py --mode finetune`` of ``checkpoint`` (the global RNG seeded first: the margin head is initialised
    from it); returns the last-state checkpoint."""
    import pruning

    dp = ["--teacher_from_data_parallel"] if teacher and cfg.from_data_parallel else []
    if plain and cfg.from_data_parallel:
        dp.append("--from_data_parallel")
    torch.manual_seed(cfg.seed)
    pruning.main(["--mode", "finetune", "--model", cfg.model,
                  *train_argv(cfg, checkpoint, save_dir, cfg.ft_epochs, cfg.ft_lr, 5e-4, cfg.ft_max_iters, teacher,
                              distill), *dp] + (["--freeze_bn"] if cfg.freeze_bn else []))
    return _last_checkpoint(save_dir)


def run_chain(cfg: ChainConfig) -> ChainResult:
    """Every step of prune_face.sh, in one process; returns the report rows and the wall time of each step."""
    import pruning
    from core import budget

    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    res = ChainResult()
    data = f"orl:{cfg.orl}"
    # plain checkpoints need the model, input size and prefix rule; thinned ones rebuild themselves
    load_kw = dict(model=cfg.model, input_size=cfg.input_size, from_data_parallel=cfg.from_data_parallel)

    def record(label: str, path: str) -> None:
        with _Timer(res, "verify"):
            res.rows.append((label, verify(path, data, metric=cfg.metric, seed=cfg.seed, **load_kw)))
        res.paths[label] = str(path)

    with _Timer(res, "train baseline"):
        base = cfg.checkpoint or train_default(cfg, work)
    csv = work / f"{cfg.model}_{cfg.method}_{cfg.metric}.csv"
    with _Timer(res, "sensitivity"):
        pruning.main(["--mode", "sa", *_common(cfg), "--best_model_path", base, "--data", data, "--metric",
                      cfg.metric, "--method", cfg.method, "--sparsities", cfg.sparsities, "--output", str(csv),
                      "--work_space", str(work), "--seed", str(cfg.seed)] +
                     (["--eval_batches", str(cfg.eval_batches)] if cfg.eval_batches else []))
    record("baseline", base)
    if cfg.control:  # the unpruned model fine-tuned the same way: what the extra training alone gives
        with _Timer(res, "fine-tune"):
            ft = finetune_step(cfg, base, work / "finetune_0_none", None, "none", plain=bool(cfg.checkpoint))
        record("baseline, fine-tuned (control)", ft)
    for r in cfg.reductions:
        tag = f"{round(100 * r)}"
        yaml_path, pruned = work / f"{cfg.model}_flops-{tag}.yaml", work / f"{cfg.model}_flops-{tag}.pth"
        with _Timer(res, "schedule"):
            res.budgets[r] = budget.main([str(csv), "--flops_reduction", str(r), *_common(cfg), "--best_model_path",
                                          base, "--metric", cfg.metric, "--method", cfg.method, "--output",
                                          str(yaml_path), "--force"])
        with _Timer(res, "thin"):
            pruning.main(["--mode", "prune", *_common(cfg), "--best_model_path", base, "--data", data, "--metric",
                          cfg.metric, "--yaml", str(yaml_path), "--save_model_pt", "--output", str(pruned), "--force",
                          "--work_space", str(work), "--seed", str(cfg.seed)])
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


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.face_chain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="save an untrained model built for --input_size (to train with train_module)")
    i.add_argument("--output", required=True, help="checkpoint to write")
    i.add_argument("--model", default="mobilefacenet", help="registered model name (default mobilefacenet)")
    i.add_argument("--input_size", default="56,48", help="C,H,W or H,W (default 56,48)")
    i.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    i.add_argument("--force", action="store_true", help="overwrite an existing --output")
    r = sub.add_parser("report", help="verify checkpoints and print one table (metrics, MACs, params, latency)")
    r.add_argument("checkpoints", nargs="+", metavar="LABEL=CKPT", help="e.g. baseline=base.pth pruned=p.pth")
    r.add_argument("--data", required=True, help="verification data, as pruning.py --data (e.g. orl:DIR)")
    r.add_argument("--model", default=None, help="model name (needed for plain checkpoints)")
    r.add_argument("--input_size", default=None,
                   help="input for plain checkpoints (C,H,W or H,W); thinned ones carry theirs")
    r.add_argument("--from_data_parallel", action="store_true", help="plain checkpoints: strip 'module.'")
    r.add_argument("--metric", default="lfw_acc", help="metric listed first in the JSON (default lfw_acc)")
    r.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    r.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    r.add_argument("--seed", type=int, default=0, help="seed of the pair list (default 0)")
    r.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    r.add_argument("--json", default=None, help="also write the rows to this JSON file")
    r.add_argument("--force", action="store_true", help="overwrite an existing --json")
    return p


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    import model_define  # noqa: F401  (registers the zoo)
    from core.workflow import parse_input_size

    if args.command == "init":
        out = init_checkpoint(args.output, args.model, parse_input_size(args.input_size), args.seed, args.force)
        print(f"checkpoint: {out}")
        return
    if args.json:
        check_writable(args.json, args.force)  # fail before the evaluation, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    labelled = parse_labelled(args.checkpoints)
    rows = report(labelled, args.data, args.json, args.force, model=args.model,
                  input_size=parse_input_size(args.input_size) if args.input_size else None, metric=args.metric,
                  batch_size=args.batch_size, seed=args.seed, flip=args.flip,
                  from_data_parallel=args.from_data_parallel)
    print(f"{args.data}, {torch.get_num_threads()} torch thread(s); latency: one image")
    print(format_table(rows))


if __name__ == "__main__":
    main()
