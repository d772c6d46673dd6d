"""The target-true search's configuration, its trials and its result (``TargetTrueResult``, serialised to the
report JSON)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional

import torch.nn as nn

from compression_tool.engine.bn_stats import BN_METHODS
from compression_tool.io.errors import UserError

RESOURCES = ("macs", "params", "latency")
MULTIPLE_TESTING = ("none", "bonferroni", "posthoc", "simultaneous")


@dataclass
class TargetTrueConfig:
    target: Optional[float] = None       # absolute metric the pruned model must keep (e.g. top-1 96.0)
    drop: Optional[float] = None         # or: at most this many points below the unpruned model
    metric: str = "top1"                 # CSV column that orders the moves
    resource: str = "macs"               # what the reduction is measured in: macs | params | latency (predicted)
    bn_recalib_batches: int = 8          # AdaBN batches per candidate (0 = keep the running statistics)
    bn_mode: str = "auto"                # auto: per candidate the better of as-is / AdaBN on check; always; never
    bn_method: str = "adabn"             # how BN statistics are re-estimated: adabn | paired (engine.bn_stats)
    confidence: float = 0.95             # one-sided level of the check bound
    n_boot: int = 2000
    seed: int = 0
    max_evals: int = 60                  # composed-model evaluations on the check split (bisection + greedy)
    pseudo_sample: bool = True           # add one adverse pseudo-sample to the check bound (small-split guard)
    adverse: float = 100.0               # its value in the drop mode: one lost image (metric in percent)
    greedy: bool = True
    layer_report: bool = True            # also measure the composed model layer by layer (check and report)
    multiple_testing: str = "simultaneous"   # none | bonferroni | posthoc | simultaneous (decision_confidence,
                                             # adjusted_level, ComposedChecker.family_level)
    confirm_tries: int = 16              # with a confirm split: points of the search's chain tested there (at most)
    guard_steps: int = 16                # back-off guards: lighter nested schedules measured on check (at most)
    search_confidence: Optional[float] = None   # with a confirm split: the search's level (None: decision_confidence)
    reanalyse: bool = False              # greedy rounds re-measure every layer's next level on the composed model
                                         # (on the SA split, NNI-style) to order the moves; needs sa_eval

    def decision_confidence(self) -> float:
        """The per-candidate level: ``confidence``, or Bonferroni over the ``max_evals`` candidates the search may
        test (``multiple_testing='bonferroni'``: guards the winner's curse of picking a lucky pass, at a cost)."""
        if self.multiple_testing == "bonferroni":
            return 1.0 - (1.0 - self.confidence) / self.max_evals
        return self.confidence

    def adjusted_level(self, tested: int) -> float:
        """``multiple_testing='posthoc'``: the level at which the search's pick is re-decided once it is over —
        Bonferroni over the ``tested`` composed models it actually measured (the search itself ran at
        ``confidence`` and could explore; the pick then backs off along its chain until it passes this)."""
        return 1.0 - (1.0 - self.confidence) / max(1, tested)

    def search_level(self, confirming: bool) -> float:
        """The level of the search's check decisions. With a confirm split the search only proposes a chain that
        the confirm split then tests at ``confidence``, so it may propose further (``search_confidence``)."""
        if confirming and self.search_confidence is not None:
            return self.search_confidence
        return self.decision_confidence()

    def pseudo_value(self) -> Optional[float]:
        """The adverse pseudo-sample every check bound adds (``pseudo_sample``): one lost image in the drop mode
        (``adverse``), one failure (0) in the target mode; None when off."""
        if not self.pseudo_sample:
            return None
        return self.adverse if self.drop is not None else 0.0

    def validate(self) -> None:
        if (self.target is None) == (self.drop is None):
            raise UserError("target-true: give exactly one of a target metric or a drop budget")
        val = self.target if self.target is not None else self.drop
        if val is None or not math.isfinite(float(val)):
            raise UserError(f"target-true: the {'target' if self.target is not None else 'drop'} must be a finite "
                            f"number, got {val}")
        if self.drop is not None and self.drop < 0:
            raise UserError(f"target-true: the drop budget must be >= 0 points, got {self.drop}")
        if self.resource not in RESOURCES:
            raise UserError(f"target-true: unknown resource {self.resource!r}; expected one of {RESOURCES}")
        if not 0.5 <= self.confidence < 1.0:
            raise UserError(f"target-true: confidence must be in [0.5, 1), got {self.confidence}")
        if self.search_confidence is not None and not 0.5 <= self.search_confidence < 1.0:
            raise UserError(f"target-true: the search confidence must be in [0.5, 1), got {self.search_confidence}")
        if self.guard_steps < 0:
            raise UserError(f"target-true: guard_steps must be >= 0, got {self.guard_steps}")
        if self.confirm_tries < 1:
            raise UserError(f"target-true: confirm_tries must be >= 1, got {self.confirm_tries}")
        if self.multiple_testing not in MULTIPLE_TESTING:
            raise UserError(f"target-true: multiple_testing must be one of {MULTIPLE_TESTING}, got "
                            f"{self.multiple_testing!r}")
        if self.bn_mode not in ("auto", "always", "never"):
            raise UserError(f"target-true: bn_mode must be auto, always or never, got {self.bn_mode!r}")
        if self.bn_method not in BN_METHODS:
            raise UserError(f"target-true: bn_method must be one of {', '.join(BN_METHODS)}, got {self.bn_method!r}")
        if self.bn_recalib_batches < 0 or self.max_evals < 1:
            raise UserError("target-true: bn_recalib_batches must be >= 0 and max_evals >= 1")


@dataclass
class Trial:
    """One composed candidate measured on the check split."""
    step: str                            # "baseline" | "bisect" | "greedy" | "guard" | "confirm"
    sparsities: Dict[str, float]
    check: float
    bound: float                         # the check bound the decision used (lower metric / upper drop)
    passed: bool
    macs: float
    params: float
    latency: Optional[float] = None      # predicted ms (engine.latency), when a latency model is given


@dataclass
class TargetTrueResult:
    sparsities: Dict[str, float]         # per-layer level (CSV weight names; 0 = not pruned)
    metric: str
    mode: str                            # "drop" | "target"
    threshold: float                     # the drop or target value
    resolvable: bool                     # False: the unpruned model cannot pass on the check split
    check_baseline: float
    check: float
    check_bound: float
    report_baseline: Optional[float]
    report: Optional[float]
    report_bound: Optional[float]        # lower bound of the report metric / upper bound of the report drop
    macs: float
    params: float
    base_macs: float
    base_params: float
    resource: str
    adabn: bool                          # whether the final schedule's numbers include BN re-estimation
    check_n: int
    report_n: Optional[int]
    evals: int
    seconds: float
    per_layer: List[Dict[str, object]] = field(default_factory=list)
    trace: List[Trial] = field(default_factory=list)
    latency: Optional[float] = None      # predicted ms of the schedule / the unpruned model (latency model given)
    base_latency: Optional[float] = None
    model: Optional[nn.Module] = field(default=None, repr=False)   # the thinned (AdaBN'd) model; not serialised
    confirm: Optional[Dict[str, object]] = None   # confirm split: {n, unpruned, chain, tries, tested, passed,
                                                  # value, bound} (the last two: the link kept)
    level: float = 0.95                  # the one-sided level of check_bound (after any multiplicity adjustment)
    sa_evals: int = 0                    # composed models measured on the SA split (reanalyse)
    search_pick: Optional[Dict[str, object]] = None   # the search's own pick before a guard / confirm changed it
    adjusted: Optional[Dict[str, object]] = None      # unguarded searches: the pick's check bound at the
                                                      # simultaneous level over the candidates {level, bound, passed}
    bn_method: str = "adabn"             # how BN statistics were re-estimated when ``adabn`` (engine.bn_stats)
    guards: Optional[Dict[str, Dict[str, object]]] = None   # the pick each back-off guard gives on this search
                                                            # {posthoc|simultaneous: {level, sparsities, adabn,
                                                            # reduction}}

    @property
    def reduction(self) -> float:
        return 1.0 - getattr(self, self.resource) / getattr(self, f"base_{self.resource}")

    def promised(self) -> bool:
        """Whether the report split holds the promise within 0.5 point."""
        if self.report is None or self.report_baseline is None:
            return False
        if self.mode == "drop":
            return self.report_baseline - self.report <= self.threshold + 0.5
        return self.report >= self.threshold - 0.5

    def to_dict(self) -> Dict[str, object]:
        d = asdict(replace(self, model=None))       # asdict would deep-copy the model
        d.pop("model")
        d["reduction"] = self.reduction
        d["promised_within_0.5"] = self.promised()
        return d
