"""The workflow behind ``pruning.py``: sensitivity analysis and schedule-driven thinning, on typed configs."""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from compression_tool.data.pairs import PairSet
from compression_tool.data.spec import parse_data_spec, parse_input_size
from compression_tool.engine.checkpoint import example_input, load_model, save_pruned
from compression_tool.engine.cost import interleaved_latency, params_and_macs
from compression_tool.engine.criteria import Criterion, make_criterion
from compression_tool.engine.criteria.weight import DEFAULT_REDUCTION
from compression_tool.engine.device import check_amp, resolve_device, to_model_device, with_amp
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.latency import LatencyModel, LatencyTable, layer_lines
from compression_tool.engine.report import format_report
from compression_tool.engine.schedule import read_schedule, resolve
from compression_tool.engine.sensitivity import check_resume, default_sparsities, sweep
from compression_tool.engine.sensitivity_ci import with_ci
from compression_tool.engine.strategies import ChannelPruner
from compression_tool.engine.thinning import keep_table, layer_widths
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
    reduction: str = DEFAULT_REDUCTION              # l1 / l2 / fpgm: first | mean | sum | max over the group


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
    force: bool = False                             # start the CSV afresh instead of resuming it
    ci: bool = False                                # Wilson confidence-interval columns after Distiller's
    workers: int = 1                                # > 1: one worker per group task (apps.sensitivity_pool)
    pool: str = "process"                           # workers' backend: process (local) | ray (optional extra)
    ray_address: Optional[str] = None               # --pool ray: join this cluster (else RAY_ADDRESS, else local)


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
    bn_recalib: int = 0                             # AdaBN after thinning: batches of training-side images
    bn_method: Optional[str] = None                 # adabn | paired (engine.bn_stats); None: the schedule's, else adabn


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
    check_amp(cfg.device, cfg.amp)
    if cfg.split:  # target-true splits: sa measures the SA part, search the check part, prune the report part
        from compression_tool.apps.target_true import split_setup

        setup = split_setup(cfg, meta["input_size"], spec.mean, spec.std, reference)
    else:
        setup = build_setup(cfg, spec.kind, meta["input_size"], model_mean=spec.mean, model_std=spec.std,
                            reference=reference)
    setup.evaluate = with_amp(setup.evaluate, resolve_device(cfg.device), cfg.amp)
    return setup


def configured_criterion(cfg: CriterionConfig, tag: str, name: Optional[str] = None) -> Criterion:
    """Criterion ``name`` (default ``cfg.name``) with ``cfg``'s settings; statistics not yet collected."""
    return make_criterion(name or cfg.name, limit=cfg.limit, cache_dir=cfg.cache_dir, tag=tag, seed=cfg.seed,
                          reduction=cfg.reduction)


def prepared_criterion(cfg: CriterionConfig, model: nn.Module, index: GroupIndex, setup: EvalSetup, tag: str,
                       name: Optional[str] = None) -> Criterion:
    """Criterion ``name`` (default ``cfg.name``) with its data statistics collected when it needs them."""
    crit = configured_criterion(cfg, tag, name)
    if crit.needs_data:
        crit.prepare(model, setup.batches(), {g.root_name: g.root for g in index.groups})
    return crit


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse, in one line, a model whose weights or buffers hold NaN/inf: every number measured on it is noise."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{source}: {name} holds {bad} NaN/inf value(s); refusing to measure or prune it")


def check_classes(model: nn.Module, setup: EvalSetup, meta: Dict[str, Any], data: str) -> None:
    """Classifier data with more classes than the model has outputs: one line now, not an IndexError mid-sweep."""
    if setup.num_classes is None:
        return
    with torch.no_grad():
        out = model.eval()(to_model_device(model, example_input(meta["input_size"])))
    if out.dim() == 2 and setup.num_classes > out.shape[1]:
        raise UserError(f"--data {data}: labels go up to class {setup.num_classes - 1} ({setup.num_classes} classes) "
                        f"but {meta['model']} has {out.shape[1]} outputs; wrong data or model?")


def check_schedule_fits(schedule: Any, meta: Dict[str, Any], source: str) -> None:
    """A schedule records the arch and input size it was made for; applying it to another model is refused (the
    user may insist with --force: Distiller schedules often carry a stale arch)."""
    if schedule.arch and schedule.arch != meta["model"]:
        raise UserError(f"{source}: written for arch {schedule.arch!r}, the model is {meta['model']!r}; pass --force "
                        "to apply it anyway")
    want, have = schedule.input_size, [int(v) for v in meta["input_size"]]
    if want:
        try:
            want = [int(v) for v in want]
        except (TypeError, ValueError):
            raise UserError(f"{source}: input_size {want!r} is not a list of whole numbers") from None
        if want != have[-len(want):]:
            raise UserError(f"{source}: written for input_size {want}, the model takes {have}; pass --force to "
                            "apply it anyway")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_id(spec: Optional[str]) -> Optional[str]:
    if not spec:
        return spec
    ds = parse_data_spec(spec)
    return f"{ds.kind}:{Path(ds.path).resolve()}" if ds.path else ds.kind


def sensitivity_meta(cfg: SensitivityConfig, meta: Dict[str, Any]) -> Dict[str, Any]:
    """What the CSV's numbers depend on (its sidecar): a resume must match every field."""
    e, c = cfg.eval, cfg.criterion
    return {"format": "compression_tool/sensitivity-v1", "model": meta["model"],
            "input_size": list(meta["input_size"]), "checkpoint_sha256": _sha256(cfg.source.path),
            "data": _data_id(e.data), "test_root": str(Path(e.test_root).resolve()) if e.test_root else None,
            "mean": list(e.mean) if e.mean else None, "std": list(e.std) if e.std else None,
            "seed": e.seed, "eval_batches": e.eval_batches, "batch_size": e.batch_size, "metric": e.metric,
            "folds": e.folds, "flip": e.flip, "bgr": e.bgr, "subjects": e.subjects, "criterion": c.name,
            "criterion_limit": c.limit, "criterion_seed": c.seed, "ignore": sorted(cfg.ignore),
            "sparsities": [round(s, 6) for s in cfg.sparsities], "threads": torch.get_num_threads(),
            "split": [e.split, e.split_seed, e.split_part] if e.split else None, "ci": cfg.ci,
            **({"device": resolve_device(e.device).type} if resolve_device(e.device).type != "cpu" else {})}


@dataclass
class SweepParts:
    """What a sweep measures with (the same in the main process and in every ``--workers`` worker)."""
    index: GroupIndex
    criterion: Criterion
    names: List[str]
    evaluate: Callable[[nn.Module], Dict[str, float]]
    setup: EvalSetup


def sweep_parts(cfg: SensitivityConfig, model: nn.Module, meta: Dict[str, Any], device: torch.device) -> SweepParts:
    """The groups, the prepared criterion, the metric names, ``evaluate`` and the evaluation setup of a sweep."""
    # fidelity: reference embeddings are taken now; face pairs compute their own intervals (--ci)
    setup = eval_setup(replace(cfg.eval, ci=cfg.ci), meta, reference=model)
    check_classes(model, setup, meta, cfg.eval.data)
    index = GroupIndex(model, example_input(meta["input_size"]).to(device), ignore=cfg.ignore)
    crit = prepared_criterion(cfg.criterion, model, index, setup, meta["model"])
    names, evaluate = setup.metric_names, setup.evaluate
    if cfg.ci and not isinstance(setup.decoded, PairSet):
        names, evaluate = with_ci(names, evaluate, sum(len(b) for b in setup.batches()))
    if cfg.ci and not any(n.endswith("_lo") for n in names):
        log.warning("--ci: no interval for %s on this data (classifier top1/top5, face-pair lfw_acc, tpr@fpr=X and "
                    "fidelity have one)", names[0])
    return SweepParts(index, crit, names, evaluate, setup)


def shared_eval(cfg: EvalConfig, setup: EvalSetup) -> EvalConfig:
    """``cfg`` carrying the evaluation data this process decoded, moved to shared memory: ``--workers`` start from
    it instead of reading and decoding the data again (a split evaluation is rebuilt by each worker)."""
    data = setup.decoded
    if data is None or cfg.split:
        return cfg
    for value in vars(data).values():
        if isinstance(value, torch.Tensor):
            value.share_memory_()
    return replace(cfg, preloaded=data)


def run_sensitivity(cfg: SensitivityConfig) -> Path:
    """Sweep every prunable group over ``cfg.sparsities``; appends to (and resumes) the CSV; returns its path."""
    device = resolve_device(cfg.eval.device)
    model, meta = load_source(cfg.source)
    check_finite(model, cfg.source.path)
    model.to(device)
    out = Path(cfg.output or Path(cfg.work_space) / "sensitivity_data" / f"{meta['model']}_{cfg.criterion.name}.csv")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a CSV file path")
    run_meta = sensitivity_meta(cfg, meta)
    check_resume(out, run_meta, cfg.force)          # a CSV we may not touch is refused before the data is read
    check_writable(out, force=True)                 # and an unwritable place before the sweep, not after it
    parts = sweep_parts(cfg, model, meta, device)
    log.info("sweeping %d groups x %d levels with %s -> %s", len(parts.index.groups), len(cfg.sparsities),
             cfg.criterion.name, out)
    pool = None
    if cfg.workers > 1:
        from compression_tool.apps.sensitivity_pool import group_pool

        pool = group_pool(replace(cfg, eval=shared_eval(cfg.eval, parts.setup)), cfg.workers, cfg.pool)
    sweep(model, parts.index, parts.criterion, parts.evaluate, out, cfg.sparsities, parts.names,
          use_cache=cfg.use_cache, meta=run_meta, force=cfg.force, pool=pool)
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
    device = resolve_device(cfg.eval.device)     # a bad --device is the first thing refused
    schedule = read_schedule(cfg.schedule)
    model, meta = load_source(cfg.source)
    check_finite(model, cfg.source.path)
    model.to(device)
    name = meta["model"]
    if not cfg.force:
        check_schedule_fits(schedule, meta, str(cfg.schedule))
    out = Path(cfg.output or Path(cfg.work_space) / "pruned_model" / f"{name}.pth")
    keep_path = out.with_suffix(".keep.json")
    if cfg.save:  # fail before the work, not after
        check_writable(out, cfg.force)
        check_writable(keep_path, cfg.force)
    x = example_input(meta["input_size"]).to(device)
    setup = eval_setup(cfg.eval, meta, reference=model)    # before thinning: the unpruned reference
    check_classes(model, setup, meta, cfg.eval.data)
    # one pruner path: ChannelPruner selects (each group with its schedule's criterion) and thins
    pruner = ChannelPruner(model, x, configured_criterion(cfg.criterion, name), ignore=cfg.ignore,
                           batches=setup.batches, round_to=cfg.round_to)
    index = pruner.index
    plan = resolve(schedule, index, cfg.criterion.name if cfg.override_criterion else None, source=str(cfg.schedule))
    criteria: Dict[str, Criterion] = {c: configured_criterion(cfg.criterion, name, c) for _, c in plan.values()}
    pruner.assign({g: criteria[c] for g, (_, c) in plan.items()})
    widths_before = layer_widths(model)
    original = copy.deepcopy(model)
    before = {**params_and_macs(model, x), **setup.evaluate(model)}
    keep = pruner.hard_select(pruner.select_counts({g.name: g.n_prune(plan[g.name][0])
                                                    for g in index.groups if g.name in plan}))
    if cfg.bn_recalib:  # AdaBN: re-estimate BN statistics on training-side images, as the schedule was checked
        from compression_tool.apps.target_true import bn_reestimate

        method = cfg.bn_method or str(schedule.extra.get("bn_method", "adabn"))
        bn_reestimate(model, cfg.eval, meta["input_size"], cfg.bn_recalib, method, original, keep)
    latency_lines = layer_latency_lines(cfg, original, model, x)
    after = {**params_and_macs(model, x), **setup.evaluate(model)}
    # measured side by side: a busy machine slows both alike instead of skewing the ratio (on the CPU, whatever
    # --device measured the metrics on; the saved checkpoint holds CPU tensors)
    model, original, x = model.cpu(), original.cpu(), x.cpu()
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
