"""The workflow behind ``pruning.py``: sensitivity analysis and schedule-driven thinning, on typed configs."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from compression_tool.data.spec import parse_input_size
from compression_tool.engine.checkpoint import example_input, load_model, save_pruned
from compression_tool.engine.cost import interleaved_latency, params_and_macs
from compression_tool.engine.criteria import Criterion, make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel, LatencyTable, layer_lines
from compression_tool.engine.report import format_report
from compression_tool.engine.schedule import read_schedule, resolve
from compression_tool.engine.sensitivity import default_sparsities, sweep
from compression_tool.engine.thinning import keep_table, layer_widths, thin
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_json, check_writable
from model_define import model_spec
from test_module.setup import EvalConfig, EvalSetup, build_setup

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """Where the model comes from: a checkpoint, and for a plain one the architecture that holds it."""
    path: str
    model: Optional[str] = None                     # registry name; thinned checkpoints name their own
    from_data_parallel: bool = False
    input_size: Union[str, Sequence[int], None] = None   # C,H,W (H,W takes the model's channels)
    trust: bool = False                             # full unpickling (--trust_checkpoint): only for your own files


@dataclass
class CriterionConfig:
    name: str = "l1"
    limit: int = 5                                  # batches that data-driven criteria (hrank, apoz…) look at
    seed: int = 0
    cache_dir: Optional[str] = "work_space/rank_conv"


@dataclass
class SensitivityConfig:
    source: ModelSource
    eval: EvalConfig = field(default_factory=EvalConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    sparsities: List[float] = field(default_factory=default_sparsities)
    output: Optional[str] = None                    # default work_space/sensitivity_data/<model>_<criterion>.csv
    work_space: str = "work_space"
    ignore: Sequence[str] = ()
    use_cache: bool = True


@dataclass
class PruneConfig:
    source: ModelSource
    schedule: str
    eval: EvalConfig = field(default_factory=EvalConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    override_criterion: bool = False                # True: criterion.name replaces the schedule's pruner classes
    ignore: Sequence[str] = ()
    round_to: int = 1                               # kept widths rounded up to multiples of this
    latency_runtime: Optional[str] = None           # "torch" | "ort": per-layer latency table in the report
    latency_threads: int = 1
    latency_batch: int = 1
    latency_dir: str = "work_space/latency"
    save: bool = False
    output: Optional[str] = None                    # default work_space/pruned_model/<model>.pth
    work_space: str = "work_space"
    force: bool = False


@dataclass
class PruneResult:
    model: nn.Module
    meta: Dict[str, Any]
    keep: Dict[str, dict]
    before: Dict[str, float]
    after: Dict[str, float]
    keep_lines: List[str]
    checkpoint: Optional[Path] = None
    keep_path: Optional[Path] = None
    latency_lines: List[str] = field(default_factory=list)

    def report(self) -> str:
        return format_report(self.before, self.after)


def input_size_of(source: ModelSource) -> Optional[Tuple[int, int, int]]:
    """``source.input_size`` as (C, H, W); an H,W form takes the channels of the named model (else 3)."""
    size = source.input_size
    if size is None or not isinstance(size, str):
        return tuple(int(v) for v in size) if size is not None else None
    channels = model_spec(source.model).input_size[0] if source.model else 3
    return parse_input_size(size, channels)


def load_source(source: ModelSource) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model (eval mode) and its meta (``model``, ``input_size``, keep-arrays of earlier rounds…)."""
    if not source.path:
        raise UserError("--best_model_path: a checkpoint is required")
    size = input_size_of(source)
    model, meta = load_model(source.path, source.model, source.from_data_parallel, size, trust=source.trust)
    if size:
        meta["input_size"] = list(size)
    return model, meta


def eval_setup(cfg: EvalConfig, meta: Dict[str, Any], reference: Optional[nn.Module] = None) -> EvalSetup:
    """The evaluation for this model: its kind picks the metrics, its registry entry the normalisation;
    ``reference`` (the unpruned model) backs the label-free ``fidelity`` metric of embedders."""
    spec = model_spec(meta["model"])
    return build_setup(cfg, spec.kind, meta["input_size"], model_mean=spec.mean, model_std=spec.std,
                       reference=reference)


def prepared_criterion(cfg: CriterionConfig, model: nn.Module, index: GroupIndex, setup: EvalSetup, tag: str,
                       name: Optional[str] = None) -> Criterion:
    """Criterion ``name`` (default ``cfg.name``) with its data statistics collected when it needs them."""
    crit = make_criterion(name or cfg.name, limit=cfg.limit, cache_dir=cfg.cache_dir, tag=tag, seed=cfg.seed)
    if crit.needs_data:
        crit.prepare(model, setup.batches(), {g.root_name: g.root for g in index.groups})
    return crit


def run_sensitivity(cfg: SensitivityConfig) -> Path:
    """Sweep every prunable group over ``cfg.sparsities``; appends to (and resumes) the CSV; returns its path."""
    model, meta = load_source(cfg.source)
    setup = eval_setup(cfg.eval, meta, reference=model)    # fidelity: reference embeddings are taken now
    index = GroupIndex(model, example_input(meta["input_size"]), ignore=cfg.ignore)
    crit = prepared_criterion(cfg.criterion, model, index, setup, meta["model"])
    out = Path(cfg.output or Path(cfg.work_space) / "sensitivity_data" / f"{meta['model']}_{cfg.criterion.name}.csv")
    log.info("sweeping %d groups x %d levels with %s -> %s", len(index.groups), len(cfg.sparsities),
             cfg.criterion.name, out)
    sweep(model, index, crit, setup.evaluate, out, cfg.sparsities, setup.metric_names, use_cache=cfg.use_cache)
    return out


def layer_latency_lines(cfg: PruneConfig, original: nn.Module, model: nn.Module, x: torch.Tensor) -> List[str]:
    """Per-layer latency before/after on the runtime the model ships on (``engine.latency``), or nothing."""
    if not cfg.latency_runtime:
        return []
    table = LatencyTable(cfg.latency_runtime, cfg.latency_threads, cfg.latency_batch, cfg.latency_dir)
    lm = LatencyModel(original, x, table)
    after = lm.per_layer(model)
    return ([f"per-layer latency on {cfg.latency_runtime}, {cfg.latency_threads} thread(s), batch "
             f"{cfg.latency_batch} (each layer timed alone; table {table.path}, {table.measured} shapes newly "
             f"timed); unpruned model measured {lm.base:.3f} ms:"]
            + layer_lines(lm.base_layers, after, lm.scale, offset=lm.offset))


def run_prune(cfg: PruneConfig) -> PruneResult:
    """Apply a schedule: select channels per group with its criteria, thin, measure before/after, maybe save."""
    schedule = read_schedule(cfg.schedule)
    model, meta = load_source(cfg.source)
    name = meta["model"]
    out = Path(cfg.output or Path(cfg.work_space) / "pruned_model" / f"{name}.pth")
    keep_path = out.with_suffix(".keep.json")
    if cfg.save:  # fail before the work, not after
        check_writable(out, cfg.force)
        check_writable(keep_path, cfg.force)
    x = example_input(meta["input_size"])
    setup = eval_setup(cfg.eval, meta, reference=model)    # before thinning: the unpruned reference
    index = GroupIndex(model, x, ignore=cfg.ignore, round_to=cfg.round_to)
    plan = resolve(schedule, index, cfg.criterion.name if cfg.override_criterion else None, source=str(cfg.schedule))
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
            criteria[cname] = prepared_criterion(cfg.criterion, model, index, setup, name, cname)
        pruned[g.name] = criteria[cname].select(g.root_name, g.root, g.n_prune(s))
    keep = thin(index, pruned)
    latency_lines = layer_latency_lines(cfg, original, model, x)
    after = {**params_and_macs(model, x), **setup.evaluate(model)}
    # measured side by side: a busy machine slows both alike instead of skewing the ratio
    before["latency_ms"], after["latency_ms"] = interleaved_latency([original, model], x)
    result = PruneResult(model, meta, keep, before, after, keep_table(widths_before, layer_widths(model)),
                         latency_lines=latency_lines)
    result.meta = {"model": name, "model_kwargs": meta.get("model_kwargs", {}), "input_size": meta["input_size"],
                   "keep": [*meta.get("keep", []), keep], "schedule": str(cfg.schedule),
                   "metrics": {"before": before, "after": after}}
    if cfg.save:
        result.checkpoint = save_pruned(out, model, result.meta, force=cfg.force)
        result.keep_path = atomic_write_json(keep_path, {"model": name, "input_size": meta["input_size"],
                                                         "checkpoint": out.name, "groups": keep,
                                                         "layers": layer_widths(model)}, force=True)
    return result
