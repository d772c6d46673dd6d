"""Target-true schedules: the largest MACs (or params) reduction whose *thinned, composed* model meets the target.

A per-layer rule (``auto_make_yaml.py``: each layer alone stays above the target) does not bound the composed
model, because the layers' losses add up. Here every candidate schedule is applied to a deep copy of the model
(thinned with the criterion, BN statistics re-estimated on calibration batches from the training side — AdaBN)
and measured on a CHECK split that is disjoint from the sensitivity subset; the final schedule is then measured
once on a REPORT split, disjoint from both.

Search (the sensitivity CSV gives the order, ``compression_tool.engine.budget``'s moves):
1. bisection on the prefix of ``ordered_moves`` (least sensitive moves first): the longest prefix that passes;
2. greedy rounds: each layer's next level, least sensitive first, is tried on top of the schedule and kept
   when the composed model still passes; a move that fails is not retried (it was the damaging one).

The check decision accounts for measurement noise. With a ``drop`` (points below the unpruned model), the
per-sample difference unpruned − pruned on the check images is bootstrapped (paired: only the images whose
outcome changes add variance) and its one-sided upper bound at ``confidence`` must be <= ``drop``. With an
absolute ``target`` the one-sided lower bound of the pruned model's check metric must be >= ``target``.
When the unpruned model itself cannot pass (a target finer than the check split can resolve), the result is the
empty schedule and ``resolvable`` is False.

The search keeps one of the many candidates that passed, so its margin is optimistic (the winner's curse). By
default (``multiple_testing='simultaneous'``) the pick is re-decided at the level at which every candidate measured
holds together, backing off along the nested schedules of the search's moves; lighter ones than the search tried
are measured for that (``guard_steps``).

Modules: ``bounds`` (measurements and their bootstrap bounds), ``config`` (configuration, trials, result),
``checker`` (composed candidates, cached), ``search`` (bisection + greedy), ``guards`` (the nested schedules, the
back-off guards and the confirm test), ``report`` (the printed report).
"""
from compression_tool.engine.target_true.bounds import (
    Evaluator,
    FoldThresholds,
    Measurement,
    Thresholded,
    bootstrap_mean_bound,
    bootstrap_means,
    classifier_evaluator,
    correct_per_sample,
    measurement_rows,
    samples_to_vouch,
    simultaneous_level,
)
from compression_tool.engine.target_true.checker import ComposedChecker, composed_metric, promise_bound
from compression_tool.engine.target_true.config import (
    MULTIPLE_TESTING,
    RESOURCES,
    TargetTrueConfig,
    TargetTrueResult,
    Trial,
)
from compression_tool.engine.target_true.guards import (
    back_off,
    back_off_guards,
    chain_points,
    confirm_sequence,
    guard_steps,
    nested_schedules,
)
from compression_tool.engine.target_true.report import format_result
from compression_tool.engine.target_true.search import sign_of, target_true_schedule

__all__ = ["Measurement", "Thresholded", "FoldThresholds", "measurement_rows", "Evaluator", "TargetTrueConfig",
           "TargetTrueResult", "Trial", "classifier_evaluator",
           "correct_per_sample", "bootstrap_mean_bound", "bootstrap_means", "simultaneous_level", "samples_to_vouch",
           "ComposedChecker", "composed_metric", "promise_bound", "target_true_schedule", "format_result", "sign_of",
           "MULTIPLE_TESTING", "RESOURCES", "chain_points", "nested_schedules", "guard_steps", "back_off",
           "back_off_guards", "confirm_sequence"]
