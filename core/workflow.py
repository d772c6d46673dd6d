"""The steps behind ``pruning.py``: sensitivity analysis and schedule-driven thinning."""
from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

from common.errors import UserError
from common.io import atomic_write_json, check_writable
from core.checkpoint_io import example_input, load_model, save_pruned
from core.evaluation import EvalSetup, build_setup
from core.groups import GroupIndex
from core.report import format_report, interleaved_latency, params_and_macs
from core.schedule import read_schedule, resolve
from core.sensitivity import sweep
from core.thinning import keep_table, layer_widths, thin
from model_define import model_spec
from patches.criteria import Criterion, make_criterion

log = logging.getLogger(__name__)


def criterion_name(args: argparse.Namespace, default: Optional[str] = "l1") -> Optional[str]:
    """--fpgm / --hrank switch the criterion globally (the seed tool's flags); --method names any."""
    if args.fpgm and args.hrank:
        raise UserError("--fpgm and --hrank are exclusive; pick one (or use --method)")
    if args.fpgm or args.hrank:
        return "fpgm" if args.fpgm else "hrank"
    return args.method or default


def load_for_args(args: argparse.Namespace) -> Tuple[nn.Module, Dict]:
    if not args.best_model_path:
        raise UserError("--best_model_path: a checkpoint is required")
    input_size = parse_input_size(args.input_size) if args.input_size else None
    model, meta = load_model(args.best_model_path, args.model, args.from_data_parallel, input_size)
    if input_size:
        meta["input_size"] = list(input_size)
    return model, meta


def parse_input_size(text: str) -> List[int]:
    """'112' -> [3,112,112]; '112,96' -> [3,112,96]; '1,16,16' -> as given."""
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--input_size: expected e.g. '112', '112,96' or '3,112,96', got {text!r}") from None
    if len(vals) == 1:
        vals = [3, vals[0], vals[0]]
    elif len(vals) == 2:
        vals = [3, *vals]
    if len(vals) != 3 or min(vals) <= 0:
        raise UserError(f"--input_size: expected C,H,W with positive sizes, got {text!r}")
    return vals


def setup_for(args: argparse.Namespace, meta: Dict) -> EvalSetup:
    kind = model_spec(meta["model"]).kind
    return build_setup(args.data, kind, meta["input_size"], batch_size=args.batch_size,
                       eval_batches=args.eval_batches, seed=args.seed, metric=args.metric,
                       test_root=args.test_root_path, folds=args.folds, flip=args.flip, bgr=args.bgr,
                       mean=args.mean, std=args.std)


def prepared_criterion(name: str, model: nn.Module, index: GroupIndex, setup: EvalSetup,
                       args: argparse.Namespace, tag: str) -> Criterion:
    crit = make_criterion(name, limit=args.limit, cache_dir=str(Path(args.work_space) / "rank_conv"), tag=tag,
                          seed=args.seed)
    if crit.needs_data:
        crit.prepare(model, setup.batches(), {g.root_name: g.root for g in index.groups})
    return crit


def run_sensitivity(args: argparse.Namespace) -> Path:
    model, meta = load_for_args(args)
    setup = setup_for(args, meta)
    index = GroupIndex(model, example_input(meta["input_size"]), ignore=args.ignore)
    method = criterion_name(args)
    crit = prepared_criterion(method, model, index, setup, args, meta["model"])
    out = Path(args.output or Path(args.work_space) / "sensitivity_data" / f"{meta['model']}_{method}.csv")
    log.info("sweeping %d groups x %d levels with %s -> %s", len(index.groups), len(args.sparsities), method, out)
    sweep(model, index, crit, setup.evaluate, out, args.sparsities, setup.metric_names, use_cache=not args.no_cache)
    print(f"sensitivity CSV: {out}")
    return out


def run_prune(args: argparse.Namespace) -> Path:
    if not args.yaml:
        raise UserError("--yaml: a pruning schedule is required for --mode prune")
    schedule = read_schedule(args.yaml)
    model, meta = load_for_args(args)
    name = meta["model"]
    out = Path(args.output or Path(args.work_space) / "pruned_model" / f"{name}.pth")
    if args.save_model_pt:
        check_writable(out, args.force)  # fail before the work, not after
    x = example_input(meta["input_size"])
    setup = setup_for(args, meta)
    index = GroupIndex(model, x, ignore=args.ignore)
    plan = resolve(schedule, index, criterion_name(args, default=None), source=str(args.yaml))
    widths_before = layer_widths(model)
    original = copy.deepcopy(model)
    before = {**params_and_macs(model, x), **setup.evaluate(model)}
    pruned = {}
    criteria: Dict[str, Criterion] = {}
    for g in index.groups:
        if g.name not in plan:
            continue
        s, cname = plan[g.name]
        if cname not in criteria:
            criteria[cname] = prepared_criterion(cname, model, index, setup, args, name)
        pruned[g.name] = criteria[cname].select(g.root_name, g.root, g.n_prune(s))
    keep = thin(index, pruned)
    after = {**params_and_macs(model, x), **setup.evaluate(model)}
    # measured side by side: a busy machine slows both alike instead of skewing the ratio
    before["latency_ms"], after["latency_ms"] = interleaved_latency([original, model], x)
    widths_after = layer_widths(model)
    print("keep-arrays (layer: out channels before -> after):")
    for line in keep_table(widths_before, widths_after):
        print("  " + line)
    keep_path = Path(args.work_space) / "layers_out" / f"{name}.keep.json"
    atomic_write_json(keep_path, {"model": name, "input_size": meta["input_size"], "groups": keep,
                                  "layers": widths_after})
    print(f"keep-arrays: {keep_path}")
    print(format_report(before, after))
    meta_out = {"model": name, "model_kwargs": meta.get("model_kwargs", {}), "input_size": meta["input_size"],
                "keep": [*meta.get("keep", []), keep], "schedule": str(args.yaml), "metrics": {"before": before, "after": after}}
    if args.save_model_pt:
        save_pruned(out, model, meta_out, force=args.force)
        print(f"thinned checkpoint: {out}")
    else:
        print("(not saved: pass --save_model_pt to write the thinned checkpoint)")
    return out
