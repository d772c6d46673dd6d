"""Application around ``compression_tool.engine.target_true``: checkpoint + data spec + sensitivity CSV ->
target-true schedule YAML plus a JSON schedule report next to it. Used by ``auto_make_yaml.py --mode target_true``
and by ``pruning.py --split`` (sensitivity on the SA part) / ``--bn_recalib`` (AdaBN after thinning).

Data: classifier test sets (``digits``, ``image_folder:DIR``, ``mnist:DIR``, ``cifar10:DIR``, …) are split by
image (``compression_tool.data.splits``); face verification data (``orl:``, ``identity_folders:``, ``lfw:``, …) by
identity or by fold (``compression_tool.data.face_splits``), judged on ``lfw_acc``, ``tpr@fpr=X`` or the label-free
``fidelity`` (``test_module.per_sample``). BN statistics are re-estimated on training-side images: the digits
training split for ``digits``; for data that brings only a test set, the SA part's images (never the check or
report images).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.data.face_splits import split_pairsets
from compression_tool.data.pairs import PairSet
from compression_tool.data.spec import LabelledSubset, classifier_tensors, parse_data_spec, seeded_subset
from compression_tool.data.splits import SplitSpec, confirm_halves, split_tensors
from compression_tool.engine.bn_stats import reestimate_bn
from compression_tool.engine.checkpoint import example_input, load_model
from compression_tool.engine.cost import interleaved_latency
from compression_tool.engine.criteria import make_criterion
from compression_tool.engine.groups import GroupIndex
from compression_tool.engine.schedule import build_schedule, write_schedule
from compression_tool.engine.sensitivity import load_csv
from compression_tool.engine.target_true import (
    Evaluator,
    TargetTrueConfig,
    TargetTrueResult,
    classifier_evaluator,
    target_true_schedule,
)
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_json, check_writable
from model_define import model_spec
from test_module.per_sample import adverse_value, pair_evaluator
from test_module.setup import EvalConfig, EvalSetup, classifier_setup, pair_setup
from test_module.verification import metric_fpr

log = logging.getLogger(__name__)

DEFAULT_SPLIT = SplitSpec((0.34, 0.33, 0.33), 0)
FACE_METRICS = "lfw_acc, tpr@fpr=X or fidelity"


@dataclass
class FaceOptions:
    """How face verification data is read and scored (as ``EvalConfig``'s face fields)."""
    subjects: Optional[str] = None      # identity folders: the identities to split (orl: s31..s40)
    test_root: Optional[str] = None     # image root of pairs:/lfw: lists
    folds: int = 10
    flip: bool = False
    bgr: bool = False
    bootstrap_unit: str = "identity"    # what the check bound resamples: identity (cluster) | image (per_sample)
    relearn_thresholds: bool = False    # lfw_acc: re-learn the folds' thresholds on every draw (tpr@fpr always does)

    @classmethod
    def of(cls, cfg: EvalConfig) -> "FaceOptions":
        return cls(cfg.subjects, cfg.test_root, cfg.folds, cfg.flip, cfg.bgr)


@dataclass
class LatencySettings:
    """Where and how latency is measured (``--latency_runtime``, ``--latency_threads``, ``--latency_batch``,
    ``--latency_dir``): per-layer tables cached per machine, a model's latency predicted from them."""
    runtime: str = "torch"
    threads: int = 1
    batch: int = 1
    directory: str = "work_space/latency"

    def model_for(self, model: nn.Module, input_size: Sequence[int]):
        """An ``engine.latency.LatencyModel`` of ``model`` (measures the unpruned model and a probe now)."""
        from compression_tool.engine.latency import LatencyModel, LatencyTable

        table = LatencyTable(self.runtime, self.threads, self.batch, self.directory)
        return LatencyModel(model, example_input(input_size), table)


@dataclass
class TargetTrueJob:
    checkpoint: str
    csv: str
    data: str = "digits"
    model_name: Optional[str] = None
    target: Optional[float] = None
    drop: Optional[float] = None
    method: str = "l1"
    split: SplitSpec = DEFAULT_SPLIT
    metric: Optional[str] = None
    resource: str = "macs"
    bn_recalib: int = 8
    bn_method: str = "adabn"    # how BN statistics are re-estimated after thinning (engine.bn_stats.BN_METHODS)
    batch_size: int = 64
    confidence: float = 0.95
    max_evals: int = 60
    from_data_parallel: bool = False
    input_size: Optional[List[int]] = None
    ignore: Sequence[str] = field(default_factory=list)
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    data_seed: int = 0          # the seed of the data spec itself (digits' train/test split, face pairs)
    output: Optional[str] = None
    force: bool = False
    work_space: str = "work_space"
    multiple_testing: str = "simultaneous"
    guard_steps: int = 16       # lighter nested schedules measured for a back-off guard (TargetTrueConfig)
    trust: bool = False
    face: FaceOptions = field(default_factory=FaceOptions)
    confirm: float = 0.0        # fraction of the check split held back to confirm the winner (0: off)
    search_confidence: Optional[float] = None   # with confirm: the search's own level (None: confidence)
    reanalyse: bool = False     # NNI-style: greedy moves ordered by re-measuring them on the composed model (SA part)
    latency: Optional[LatencySettings] = None   # resource 'latency' predicts candidates' latency with these


def split_data(spec: str, input_size: Sequence[int], split: SplitSpec, data_seed: int = 0, mean=None, std=None,
               model_mean=None, model_std=None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{sa, check, report: (x, y)} from a classifier data spec's test set."""
    if parse_data_spec(spec).is_face:
        raise UserError(f"--data {spec}: face verification data is split into pair sets (face_parts), not images")
    x, y = classifier_tensors(spec, input_size, "test", data_seed, mean, std, model_mean, model_std)
    return split_tensors(x, y, split)


def face_parts(spec: str, input_size: Sequence[int], split: SplitSpec, data_seed: int = 0,
               face: Optional[FaceOptions] = None, confirm: float = 0.0):
    """{sa, check, report: PairSet}, identity-disjoint (``compression_tool.data.face_splits``); with ``confirm``
    the check identities (folds) are split once more and a ``confirm`` part is added."""
    f = face or FaceOptions()
    return split_pairsets(spec, input_size, split, data_seed, f.test_root, f.bgr, f.subjects, f.folds, confirm)


def sa_images(spec: str, input_size: Sequence[int], split: SplitSpec, data_seed: int = 0, mean=None, std=None,
              model_mean=None, model_std=None, face: Optional[FaceOptions] = None) -> torch.Tensor:
    """The SA part's input images (criteria statistics; BN calibration when the data has no training side)."""
    if parse_data_spec(spec).is_face:
        return face_parts(spec, input_size, split, data_seed, face)["sa"].images
    return split_data(spec, input_size, split, data_seed, mean, std, model_mean, model_std)["sa"][0]


def calibration_batches(spec: str, input_size: Sequence[int], sa_x: Optional[torch.Tensor], n_batches: int,
                        batch_size: int = 64, data_seed: int = 0) -> List[torch.Tensor]:
    """Input batches for BN re-estimation, from the training side (see the module doc); seeded shuffle."""
    if n_batches <= 0:
        return []
    if spec == "digits":
        from compression_tool.data.digits import digits_split
        c, h, _ = input_size
        x = digits_split(image_size=h, channels=c, seed=data_seed)[0][0]
    elif sa_x is None:
        raise UserError("BN re-estimation: no training-side images")
    else:
        x = sa_x
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(data_seed))
    x = x[perm]
    return [x[i:i + batch_size] for i in range(0, min(len(x), n_batches * batch_size), batch_size)]


def split_setup(cfg: EvalConfig, input_size: Sequence[int], model_mean=None, model_std=None,
                reference: Optional[nn.Module] = None) -> EvalSetup:
    """An ``EvalSetup`` on one part (``cfg.split_part``) of ``cfg.split``: ``pruning.py --mode sa --split``
    measures the SA part; ``eval_batches`` keeps a seeded random subset of the SA part (never images of the other
    parts). Classifiers: top1, top5, loss; face data: the verification metrics (``cfg.metric`` first)."""
    from compression_tool.data.splits import parse_split

    split = parse_split(cfg.split, cfg.split_seed)
    eval_batches = cfg.eval_batches if cfg.split_part == "sa" else None
    if parse_data_spec(cfg.data).is_face:
        pairset = face_parts(cfg.data, input_size, split, cfg.seed, FaceOptions.of(cfg))[cfg.split_part]
        if eval_batches:
            pairset = pairset.subset(eval_batches * cfg.batch_size, seed=cfg.seed)
        return pair_setup(pairset, cfg.metric, cfg.batch_size, cfg.folds, cfg.flip, reference,
                          cfg.data.split(":")[0], cfg.ci)
    xs, ys = split_data(cfg.data, input_size, split, cfg.seed, cfg.mean, cfg.std, model_mean,
                        model_std)[cfg.split_part]
    pick = seeded_subset(len(ys), eval_batches * cfg.batch_size if eval_batches else None, cfg.seed)
    if pick is not None:
        xs, ys = xs[pick], ys[pick]
    return classifier_setup(cfg.data, input_size, cfg.batch_size, preloaded=LabelledSubset(xs, ys, None))


def held_back(check: Tuple[torch.Tensor, torch.Tensor], confirm: float, seed: int):
    """(search part, confirm part) of a classifier's check data ``(x, y)``, split by image. (Face data is split by
    identity or fold instead: ``face_parts(..., confirm=F)``.)"""
    x, y = check
    keep, held = confirm_halves(len(y), confirm, seed)
    return (x[keep], y[keep]), (x[held], y[held])


FEW_IDENTITIES = 30   # below this many people, a bootstrap over them understates how much other people can differ


def warn_few_identities(check: PairSet) -> None:
    """One warning when the check pairs hold fewer than ``FEW_IDENTITIES`` people: the bound is about them."""
    ids = check.identities()
    people = 0 if ids is None else len(set(ids.tolist()))
    if 0 < people < FEW_IDENTITIES:
        log.warning("target-true: the check split holds %d identities; a bound over so few people is optimistic — "
                    "other people (the report split's, deployment's) can differ by several points. Use at least %d "
                    "check identities for a promise that carries to new faces", people, FEW_IDENTITIES)


class SplitEvaluators(NamedTuple):
    check: Evaluator
    report: Evaluator
    sa_images: torch.Tensor
    confirm: Optional[Evaluator]         # with job.confirm
    sa: Optional[Evaluator]              # the SA part, with job.reanalyse


def split_evaluators(job: TargetTrueJob, model: nn.Module, input_size: Sequence[int], metric: str,
                     model_mean=None, model_std=None) -> SplitEvaluators:
    """The evaluators of the job's split parts (and the SA images); ``model`` is the unpruned reference."""
    is_face = parse_data_spec(job.data).is_face
    if job.face.relearn_thresholds and not (is_face and metric == "lfw_acc"):
        raise UserError(f"--relearn_thresholds re-learns lfw_acc's fold thresholds on face data, not {metric} on "
                        f"{job.data} (a tpr@fpr bound always re-sets its threshold)")
    if is_face:
        if metric not in ("lfw_acc", "fidelity") and metric_fpr(metric) is None:
            raise UserError(f"--metric {metric}: target-true schedules on face data measure {FACE_METRICS}")
        parts = face_parts(job.data, input_size, job.split, job.data_seed, job.face, job.confirm)
        warn_few_identities(parts["check"])

        def ev(ps):
            return pair_evaluator(ps, metric, job.face.folds, job.face.flip, model, job.batch_size,
                                  job.face.bootstrap_unit, job.face.relearn_thresholds)
        sa = parts["sa"].images
    else:
        if metric != "top1":
            raise UserError(f"--metric {metric}: target-true schedules on classifier data measure top1")
        parts = split_data(job.data, input_size, job.split, job.data_seed, job.mean, job.std, model_mean, model_std)

        def ev(xy):
            return classifier_evaluator(*xy)
        sa = parts["sa"][0]
        if job.confirm:
            parts["check"], parts["confirm"] = held_back(parts["check"], job.confirm, job.split.seed)
    confirm = parts.get("confirm")
    return SplitEvaluators(ev(parts["check"]), ev(parts["report"]), sa, ev(confirm) if confirm is not None else None,
                           ev(parts["sa"]) if job.reanalyse else None)


def run_target_true(job: TargetTrueJob) -> Tuple[TargetTrueResult, Path, Path]:
    """Search, write the YAML (Distiller shape + a ``target_true`` extension) and the JSON report; print both."""
    model, meta = load_model(job.checkpoint, job.model_name, job.from_data_parallel, job.input_size, trust=job.trust)
    spec = model_spec(meta["model"])
    input_size = list(job.input_size or meta["input_size"])
    arch = meta["model"]
    tag = f"drop{job.drop:g}" if job.drop is not None else f"{job.target:g}"
    out = Path(job.output or Path("yaml_file") / f"{arch}_{tag}.yaml")
    report_path = out.with_suffix(".report.json")
    check_writable(out, job.force)
    check_writable(report_path, job.force)
    metrics, table = load_csv(job.csv)
    metric = job.metric or metrics[0]
    x = example_input(input_size)
    evs = split_evaluators(job, model, input_size, metric, spec.mean, spec.std)
    xs = evs.sa_images
    calib = calibration_batches(job.data, input_size, xs, job.bn_recalib, job.batch_size, job.data_seed)
    crit = make_criterion(job.method, limit=5, cache_dir=str(Path(job.work_space) / "rank_conv"), tag=arch,
                          seed=job.data_seed)
    if crit.needs_data:
        index = GroupIndex(model, x, ignore=job.ignore)
        crit.prepare(model, [xs[i:i + job.batch_size] for i in range(0, len(xs), job.batch_size)],
                     {g.root_name: g.root for g in index.groups})
    cfg = TargetTrueConfig(target=job.target, drop=job.drop, metric=metric, resource=job.resource,
                           bn_recalib_batches=job.bn_recalib, confidence=job.confidence, seed=job.split.seed,
                           max_evals=job.max_evals, multiple_testing=job.multiple_testing,
                           guard_steps=job.guard_steps,
                           adverse=adverse_value(metric), search_confidence=job.search_confidence,
                           reanalyse=job.reanalyse, bn_method=job.bn_method)
    latency = job.latency.model_for(model, input_size) if job.latency is not None else None
    if job.resource == "latency" and latency is None:
        latency = LatencySettings().model_for(model, input_size)
    result = target_true_schedule(model, x, crit, table, evs.check, evs.report, calib, cfg, ignore=job.ignore,
                                  latency=latency, confirm_eval=evs.confirm, sa_eval=evs.sa)
    # measured, side by side at batch 1 on the CPU (the per-layer latency model, when given, predicted the search's)
    measured = interleaved_latency([model, result.model], x) if result.model is not None else None
    doc = build_schedule(result.sparsities, job.method, arch, job.data.split(":")[0], input_size)
    doc["extensions"]["target_true"] = {
        "mode": result.mode, "threshold": result.threshold, "metric": metric, "confidence": job.confidence,
        "multiple_testing": job.multiple_testing, "guard_steps": job.guard_steps, "confirm": job.confirm or None,
        "search_confidence": job.search_confidence if job.confirm else None, "reanalyse": job.reanalyse,
        "split": job.split.describe(), "data": job.data, "bn_recalib_batches": job.bn_recalib,
        "bn_method": job.bn_method,
        "bootstrap_unit": job.face.bootstrap_unit if parse_data_spec(job.data).is_face else "image",
        "relearn_thresholds": (bool(job.face.relearn_thresholds) if metric == "lfw_acc"
                               else metric_fpr(metric) is not None),
        "adabn": result.adabn,           # whether the checked numbers include BN re-estimation (prune the same way)
        "check": {"n": result.check_n, "unpruned": round(result.check_baseline, 4), "pruned": round(result.check, 4),
                  "bound": round(result.check_bound, 4)},
        "report": {"n": result.report_n, "unpruned": round(result.report_baseline, 4),
                   "pruned": round(result.report, 4), "bound": round(result.report_bound, 4)},
        "macs": [result.base_macs, result.macs], "params": [result.base_params, result.params],
        "latency_ms_batch1": [round(v, 4) for v in measured] if measured else None}
    goal = f"drop <= {job.drop:g}" if job.drop is not None else f"{metric} >= {job.target:g}"
    header = (f"generated by auto_make_yaml.py --mode target_true from {job.csv}\n"
              f"target-true: {goal} on the composed, thinned model ("
              + (f"with BN re-estimated ({job.bn_method}) on {job.bn_recalib} batches; thin it with pruning.py "
                 f"--mode prune --bn_recalib {job.bn_recalib} --bn_method {job.bn_method}" if result.adabn
                 else "without BN re-estimation; thin it without --bn_recalib")
              + f"); split sa/check/report "
              f"{job.split.sizes} seed {job.split.seed}\n"
              f"check {result.check:.2f} (unpruned {result.check_baseline:.2f}), report {result.report:.2f} "
              f"(unpruned {result.report_baseline:.2f}); "
              f"MACs {100 * (1 - result.macs / result.base_macs):.1f}% removed")
    if not result.per_layer:
        log.warning("target-true: no layer can be pruned within the target on the check split; the schedule is empty")
    write_schedule(doc, out, header, force=job.force)
    atomic_write_json(report_path, {"schedule": str(out), "csv": job.csv, "checkpoint": job.checkpoint,
                                    "split": job.split.describe(), "data": job.data,
                                    "measured_latency_ms_batch1": list(measured) if measured else None,
                                    **result.to_dict()}, force=job.force)
    return result, out, report_path


def bn_reestimate(model: nn.Module, cfg: EvalConfig, input_size: Sequence[int], n_batches: int,
                  method: str = "adabn", reference: Optional[nn.Module] = None,
                  keep: Optional[Mapping[str, dict]] = None) -> int:
    """BN statistics after thinning (``pruning.py --mode prune --bn_recalib N --bn_method M``), re-estimated on the
    training side of ``cfg.data`` (the SA part of ``cfg.split``, or of the default split, when the data has no
    training side): AdaBN, or ``paired`` against the unthinned ``reference`` thinned by ``keep``
    (``engine.bn_stats``); returns the batches (adabn) or images (paired) used."""
    from compression_tool.data.splits import parse_split

    split = parse_split(cfg.split, cfg.split_seed) if cfg.split else DEFAULT_SPLIT
    xs = None if cfg.data == "digits" else sa_images(cfg.data, input_size, split, cfg.seed, cfg.mean, cfg.std,
                                                     face=FaceOptions.of(cfg))
    used = reestimate_bn(method, reference, model, keep or {},
                         calibration_batches(cfg.data, input_size, xs, n_batches, cfg.batch_size, cfg.seed))
    log.info("BN statistics re-estimated (%s) on %d %s", method, used, "batches" if method == "adabn" else "images")
    return used
