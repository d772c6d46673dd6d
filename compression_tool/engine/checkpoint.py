"""Checkpoints of zoo models: the one way to load a model, and thinned checkpoints that rebuild themselves.

A thinned (pruned) checkpoint is a plain state_dict plus metadata that is enough to rebuild the model:

  {"state_dict": …, "meta": {"format": FORMAT, "model": name, "model_kwargs": {…}, "input_size": [C,H,W],
                             "keep": [round1, round2, …], "schedule": …, "metrics": {…}}}
  where each round is {group: {"kept": […], "pruned": […], …}}: a model pruned twice replays both rounds.

``load_model`` reads that, the sparse format of ``compression_tool.io.sparse_checkpoint`` and any plain checkpoint
(weights only unless the user trusts the file, see ``compression_tool.io.checkpoint.torch_load``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.engine.thinning import replay
from compression_tool.io.checkpoint import load_weights, torch_load, weights_in
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_torch_save
from compression_tool.io.sparse_checkpoint import decode_sparse, is_sparse_checkpoint
from model_define import model_spec

FORMAT = "compression_tool/pruned-v1"


def save_pruned(path: str | Path, model: nn.Module, meta: Dict[str, Any], force: bool = False) -> Path:
    """Write a thinned checkpoint; its meta also records the torch thread count its numbers were measured with."""
    meta = {"format": FORMAT, **meta}
    meta.setdefault("threads", torch.get_num_threads())
    return atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path, force=force)


def example_input(input_size: Sequence[int], batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *[int(v) for v in input_size])


def is_pruned_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and obj["meta"].get("format") == FORMAT


def load_model(path: str | Path, model_name: Optional[str] = None, from_data_parallel: bool = False,
               input_size: Optional[Sequence[int]] = None, trust: bool = False, **model_kwargs
               ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a thinned checkpoint (rebuilt at its pruned width) or, given ``model_name``, a plain or sparse one.

    Returns ``(model in eval mode, meta)``; ``meta`` always has ``model``, ``model_kwargs``, ``input_size``.
    """
    p = Path(path)
    obj = torch_load(p, trust)
    if is_pruned_checkpoint(obj):
        meta = obj["meta"]
        if model_name and model_name != meta["model"]:
            raise UserError(f"{p}: checkpoint holds model {meta['model']!r}, not --model {model_name!r}")
        if input_size is not None and list(input_size) != list(meta["input_size"]):
            raise UserError(f"{p}: a thinned checkpoint for input {meta['input_size']}, not --input_size "
                            f"{list(input_size)}")
        model = model_spec(meta["model"]).build_for(meta["input_size"], **meta.get("model_kwargs", {}))
        for rnd in meta.get("keep", []):
            replay(model, example_input(meta["input_size"]), rnd)
        load_weights(model, obj["state_dict"], str(p))
        return model.eval(), meta
    sd, extra = decode_sparse(obj, str(p)) if is_sparse_checkpoint(obj) else weights_in(obj, str(p))
    named = extra.get("model") or extra.get("arch")   # our sparse and default-model checkpoints name their model
    model_name = model_name or (named if isinstance(named, str) else None)
    if not model_name:
        raise UserError(f"{p}: a plain checkpoint; say which architecture it holds with --model")
    spec = model_spec(model_name)
    model = spec.build_for(input_size, **model_kwargs)
    load_weights(model, sd, str(p), from_data_parallel=from_data_parallel)
    meta = {"model": model_name, "model_kwargs": dict(model_kwargs),
            "input_size": list(input_size or spec.input_size), "source_meta": _plain(extra)}
    return model.eval(), meta


def _plain(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
