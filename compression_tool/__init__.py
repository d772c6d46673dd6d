"""compression_tool: make trained CNNs N times cheaper without losing the accuracy that matters.

Layers (each imports only from the ones below it; `.importlinter` checks it):
  cli     argument parsing and printing (pruning.py & co. are shims onto it)
  apps    the workflows: sensitivity -> schedule -> prune -> report, face chain, pipelines, quantization
  engine  groups, masking, thinning, criteria, sensitivity sweep, schedules, cost model, search, quantizers
  data    the data-spec parser, readers, preprocessing, normalisation
  io      errors, atomic writes, checkpoint reading

The typed Python API (``sensitivity``, ``make_schedule``, ``apply_schedule``, ``evaluate``, ``finetune``,
``load``) lives in ``compression_tool.apps.api`` and is re-exported here lazily, so importing a low layer
(``compression_tool.io``) never imports the workflows.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
API = ("load", "evaluate", "sensitivity", "make_schedule", "apply_schedule", "finetune", "DataSpec")


def __getattr__(name: str) -> Any:
    if name in API:
        from compression_tool.apps import api
        return getattr(api, name)
    raise AttributeError(f"module 'compression_tool' has no attribute {name!r}")
