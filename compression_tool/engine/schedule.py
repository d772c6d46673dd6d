"""Distiller-shaped pruning schedules: write one from per-layer sparsities, read and validate one.

Shape (a Distiller user reads it as theirs):
  version: 1
  pruners: {<name>: {class: L1RankedStructureParameterPruner, group_type: Filters,
                     desired_sparsity: 0.3, weights: [conv1.weight, …]}}     # or sparsities: {weight: s}
  extensions: {net_thinner: {class: FilterRemover, thinning_func_str: remove_filters, arch, dataset, input_size}}
  policies: [{pruner: {instance_name: <name>}, epochs: [0]}, {extension: {instance_name: net_thinner}, epochs: [0]}]
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from compression_tool.engine.criteria import CRITERIA, criterion_for_pruner_class
from compression_tool.engine.groups import GroupIndex
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_text

log = logging.getLogger(__name__)

GROUP_TYPES = ("Filters", "Channels")


@dataclass
class PrunerSpec:
    name: str
    pruner_class: str
    group_type: str
    sparsities: Dict[str, float]       # weight name (no "module.") -> fraction of channels removed


@dataclass
class Schedule:
    pruners: List[PrunerSpec]
    arch: Optional[str] = None
    dataset: Optional[str] = None
    input_size: Optional[List[int]] = None
    extra: Dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------- the seed tool's per-layer rule

LOWER_IS_BETTER = {"loss", "eer", "threshold", "lfw_std"}

Curve = List[Tuple[float, Dict[str, float]]]


def pick_level(curve: Curve, metric: str, target: float, rule: str = "closest") -> float:
    """The sparsity chosen for one layer (see module doc). ``curve`` is sorted by sparsity."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    vals = [(s, sign * m[metric]) for s, m in curve if math.isfinite(m[metric])]   # a NaN level is never chosen
    if not vals:
        return 0.0
    t = sign * target
    if rule == "strict":
        ok = [s for s, v in vals if v >= t]
        return max(ok) if ok else 0.0
    # on a tie, the level on the safe side of the target wins
    closest = min(vals, key=lambda sv: (abs(sv[1] - t), sv[1] < t))[1]
    return max(s for s, v in vals if v >= closest)


def choose_sparsities(data: Dict[str, Curve], metric: str, target: float, rule: str) -> Dict[str, float]:
    return {layer: pick_level(curve, metric, target, rule) for layer, curve in data.items()}


def baseline(data: Dict[str, Curve], metric: str) -> float:
    zeros = [m[metric] for curve in data.values() for s, m in curve if s == 0.0]
    if not zeros:
        raise UserError("the CSV has no sparsity-0 rows, so the baseline metric is unknown")
    broken = [(layer, m[metric]) for layer, curve in data.items() for s, m in curve
              if s == 0.0 and not math.isfinite(m[metric])]
    if broken:
        raise UserError(f"the unpruned (sparsity 0) {metric} of {broken[0][0]} is {broken[0][1]}: the baseline is not "
                        "a number (NaN/inf weights or a broken evaluation); re-run the sensitivity analysis")
    return max(zeros) if metric not in LOWER_IS_BETTER else min(zeros)



def pruner_class_of(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise UserError(f"unknown pruning criterion {criterion!r}; known: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[criterion].pruner_class


def build_schedule(per_weight: Mapping[str, float], criterion: str, arch: str, dataset: str,
                   input_size: Sequence[int]) -> dict:
    """Group layers with the same level into one pruner each, as Distiller schedules usually read."""
    cls = pruner_class_of(criterion)
    by_level: Dict[float, List[str]] = {}
    for w, s in per_weight.items():
        if s > 0:
            by_level.setdefault(round(float(s), 6), []).append(w)
    pruners = {f"filter_pruner_{int(round(s * 100))}": {
        "class": cls, "group_type": "Filters", "desired_sparsity": s, "weights": ws}
        for s, ws in sorted(by_level.items())}
    policies = [{"pruner": {"instance_name": n}, "epochs": [0]} for n in pruners]
    policies.append({"extension": {"instance_name": "net_thinner"}, "epochs": [0]})
    return {"version": 1, "pruners": pruners,
            "extensions": {"net_thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                           "arch": arch, "dataset": dataset, "input_size": list(input_size)}},
            "policies": policies}


def write_schedule(doc: dict, path: str | Path, header: str = "", force: bool = False) -> Path:
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(doc, sort_keys=False)
    return atomic_write_text(path, text, force=force)


def _strip(w: str) -> str:
    return w[len("module."):] if w.startswith("module.") else w


def _sparsity(value, where: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: sparsity must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= s < 1.0:
        raise UserError(f"{where}: sparsity must be in [0, 1), got {s}")
    return s


def _pruner(path: Path, name: str, spec) -> PrunerSpec:
    where = f"{path}: pruner {name!r}"
    if not isinstance(spec, dict) or "class" not in spec:
        raise UserError(f"{where}: expected a mapping with a 'class' key")
    group_type = spec.get("group_type", "Filters")
    if group_type not in GROUP_TYPES:
        raise UserError(f"{where}: group_type must be one of {GROUP_TYPES}, got {group_type!r}")
    if "sparsities" in spec:
        if not isinstance(spec["sparsities"], dict):
            raise UserError(f"{where}: 'sparsities' must map weight names to levels")
        sp = {_strip(w): _sparsity(s, f"{where}, {w}") for w, s in spec["sparsities"].items()}
    elif "desired_sparsity" in spec and isinstance(spec.get("weights"), list):
        s = _sparsity(spec["desired_sparsity"], where)
        sp = {_strip(str(w)): s for w in spec["weights"]}
    else:
        raise UserError(f"{where}: needs 'desired_sparsity' with a 'weights' list, or a 'sparsities' mapping")
    return PrunerSpec(name, str(spec["class"]), group_type, sp)


def read_schedule(path: str | Path) -> Schedule:
    p = Path(path)
    if not p.exists():
        raise UserError(f"--yaml: no such schedule file {p}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise UserError(f"{p}: malformed YAML{f' at line {where.line + 1}' if where else ''}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text (UTF-8) YAML file") from None
    return parse_schedule(doc, p)


def parse_schedule(doc: object, source: str | Path = "schedule") -> Schedule:
    """A schedule from an already parsed Distiller-shaped document (see the module doc)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pruners"), dict) or not doc["pruners"]:
        raise UserError(f"{source}: not a pruning schedule (expected a 'pruners' mapping)")
    pruners = [_pruner(Path(str(source)), n, s) for n, s in doc["pruners"].items()]
    exts = doc.get("extensions") or {}
    ext = next((e for e in exts.values() if isinstance(e, dict)), {})
    tt = exts.get("target_true") if isinstance(exts.get("target_true"), dict) else {}
    # a target-true schedule says how its checked numbers re-estimated BN: thinning follows it by default
    extra = {"bn_method": tt["bn_method"]} if tt.get("bn_method") else {}
    return Schedule(pruners, ext.get("arch"), ext.get("dataset"), ext.get("input_size"), extra)


def resolve(schedule: Schedule, index: GroupIndex, criterion_override: Optional[str] = None,
            source: str = "schedule") -> Dict[str, Tuple[float, str]]:
    """Map the schedule onto dependency groups -> {group name: (sparsity, criterion name)}.

    Several weights of one coupled group may be named with different levels; the leading weight's level
    wins, otherwise the smallest (the conservative choice), and a warning names them.
    """
    wanted: Dict[str, Dict[str, Tuple[float, str]]] = {}
    for pr in schedule.pruners:
        if pr.group_type == "Channels":
            log.info("%s: group_type Channels is thinned as the producing layers' filters", pr.name)
        crit = criterion_override or criterion_for_pruner_class(pr.pruner_class)
        for w, s in pr.sparsities.items():
            g = index.find(w, source)
            wanted.setdefault(g.name, {})[w] = (s, crit)
    out: Dict[str, Tuple[float, str]] = {}
    for gname, named in wanted.items():
        if gname in named:
            out[gname] = named[gname]
        else:
            out[gname] = min(named.values())
        levels = {v[0] for v in named.values()}
        if len(levels) > 1:
            log.warning("coupled layers %s are named with levels %s; using %.3g for the whole group",
                        ", ".join(named), sorted(levels), out[gname][0])
    return out
