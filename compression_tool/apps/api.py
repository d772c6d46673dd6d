"""The typed Python API: the workflow of the command lines, on models and data you hold in Python.

    import compression_tool as ct
    model, meta = ct.load("work_space/checkpoints/digits_net.pth")
    size = meta["input_size"]
    table = ct.sensitivity(model, "digits", size, criterion="fpgm")    # pandas DataFrame, Distiller's columns
    schedule = ct.make_schedule(table, target=97.0, arch="digits_net", input_size=size)
    thinned, keep = ct.apply_schedule(model, schedule, input_size=size)
    print(ct.evaluate(thinned, "digits", size))
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
import torch.nn as nn

from compression_tool.apps.finetune import FinetuneJob, run_finetune
from compression_tool.apps.workflow import ModelSource, load_source
from compression_tool.data.spec import DataSpec, parse_data_spec  # noqa: F401  (DataSpec: part of the API)
from compression_tool.engine.checkpoint import example_input
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.schedule import (
    LOWER_IS_BETTER,
    baseline,
    build_schedule,
    choose_sparsities,
    parse_schedule,
    read_schedule,
    resolve,
)
from compression_tool.engine.sensitivity import default_sparsities, load_csv, sweep
from compression_tool.engine.strategies import ChannelPruner
from compression_tool.io.errors import UserError
from test_module.setup import EvalConfig, EvalSetup, build_setup

Size = Sequence[int]


def load(path: str, model: Optional[str] = None, input_size: Optional[Size] = None, from_data_parallel: bool = False,
         trust: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model from a checkpoint (thinned ones rebuild themselves) and its meta (``model``, ``input_size``…)."""
    return load_source(ModelSource(path, model, from_data_parallel, input_size, trust))


def _setup(data: Union[str, EvalConfig], input_size: Size, kind: Optional[str], **eval_kw) -> EvalSetup:
    cfg = data if isinstance(data, EvalConfig) else EvalConfig(data=str(data), **eval_kw)
    if kind is None:
        kind = "embedder" if parse_data_spec(cfg.data).is_face else "classifier"
    return build_setup(cfg, kind, tuple(input_size))


def evaluate(model: nn.Module, data: Union[str, EvalConfig], input_size: Size, kind: Optional[str] = None,
             **eval_kw) -> Dict[str, float]:
    """Metrics of ``model`` (input ``input_size`` = C, H, W) on a data spec: top1/top5/loss for classifier data,
    verification metrics for face pairs. ``eval_kw`` are EvalConfig's fields (eval_batches, seed, metric…)."""
    setup = _setup(data, input_size, kind, **eval_kw)
    return dict(setup.evaluate(model))


def sensitivity(model: nn.Module, data: Union[str, EvalConfig], input_size: Size, criterion: str = "l1",
                levels: Optional[Sequence[float]] = None, kind: Optional[str] = None, ignore: Sequence[str] = (),
                csv: Optional[str] = None, **eval_kw) -> pd.DataFrame:
    """Every prunable group x ``levels`` -> a DataFrame with Distiller's columns (parameter, sparsity, metrics…).
    With ``csv`` the rows are also kept (and resumed) there, as ``pruning.py --mode sa`` does."""
    setup = _setup(data, input_size, kind, **eval_kw)
    index = GroupIndex(model, example_input(input_size), ignore=ignore)
    crit = make_criterion(criterion)
    if crit.needs_data:
        crit.prepare(model, setup.batches(), {g.root_name: g.root for g in index.groups})
    levels = list(levels) if levels is not None else default_sparsities()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(csv) if csv else Path(tmp) / "sensitivity.csv"
        sweep(model, index, crit, setup.evaluate, path, levels, setup.metric_names,
              meta=_sweep_meta(model, data, input_size, criterion, levels, ignore, eval_kw))
        return pd.read_csv(path)


def _sweep_meta(model: nn.Module, data: Union[str, EvalConfig], input_size: Size, criterion: str,
                levels: Sequence[float], ignore: Sequence[str], eval_kw: Dict[str, Any]) -> Dict[str, Any]:
    """The CSV sidecar of an in-memory model: a hash of its weights stands for the checkpoint's."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return {"format": "compression_tool/sensitivity-v1", "weights_sha256": h.hexdigest(),
            "data": dataclasses.asdict(data) if isinstance(data, EvalConfig) else str(data),
            "input_size": [int(v) for v in input_size], "criterion": criterion,
            "sparsities": [round(float(s), 6) for s in levels], "ignore": sorted(ignore),
            "eval": {k: v for k, v in sorted(eval_kw.items())}, "threads": torch.get_num_threads()}


def make_schedule(table: Union[pd.DataFrame, str], target: float, arch: str, input_size: Size,
                  criterion: str = "l1", metric: Optional[str] = None, rule: str = "closest",
                  dataset: str = "data") -> Dict[str, Any]:
    """A Distiller-shaped schedule (dict, ready for ``yaml.safe_dump``) from a sensitivity table and a target,
    with the seed tool's per-layer rule."""
    with tempfile.TemporaryDirectory() as tmp:
        path = table if isinstance(table, str) else str(Path(tmp) / "t.csv")
        if not isinstance(table, str):
            table.to_csv(path, index=False)
        metrics, data = load_csv(path)
    metric = metric or metrics[0]
    base = baseline(data, metric)
    if (target > base) if metric not in LOWER_IS_BETTER else (target < base):
        raise UserError(f"target {target} is better than the unpruned baseline {base:.4g} of {metric}")
    return build_schedule(choose_sparsities(data, metric, target, rule), criterion, arch, dataset, input_size)


def apply_schedule(model: nn.Module, schedule: Union[Dict[str, Any], str], input_size: Size,
                   criterion: Optional[str] = None, ignore: Sequence[str] = (), inplace: bool = False
                   ) -> Tuple[nn.Module, Dict[str, dict]]:
    """Thin ``model`` (a copy unless ``inplace``) as ``schedule`` says -> (thinned model, keep-arrays).
    Data-driven criteria need the command line (or ``sensitivity``'s evaluation data); weight criteria run here."""
    sched = read_schedule(schedule) if isinstance(schedule, (str, Path)) else parse_schedule(schedule)
    net = model if inplace else copy.deepcopy(model)
    pruner = ChannelPruner(net, example_input(input_size), criterion or "l1", ignore=ignore)
    plan = resolve(sched, pruner.index, criterion)
    crits = {name: make_criterion(name) for name in {c for _, c in plan.values()}}
    for c in crits.values():
        if c.needs_data:
            raise UserError(f"apply_schedule: criterion {c.name!r} needs data; use pruning.py --mode prune")
    pruner.assign({g: crits[c] for g, (_, c) in plan.items()})
    return net, pruner.hard_select(pruner.select_counts({g.name: g.n_prune(plan[g.name][0])
                                                         for g in pruner.index.groups if g.name in plan}))


def finetune(job: FinetuneJob):
    """Fine-tune as ``python -m train_module`` does (``FinetuneJob`` holds its settings)."""
    return run_finetune(job)
