"""Thinned checkpoints: a plain state_dict plus metadata that is enough to rebuild the model.

  {"state_dict": …, "meta": {"format": FORMAT, "model": name, "model_kwargs": {…}, "input_size": [C,H,W],
                             "keep": [round1, round2, …], "schedule": …, "metrics": {…}}}
  where each round is {group: {"kept": […], "pruned": […], …}}: a model pruned twice replays both rounds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from common.errors import UserError
from common.io import atomic_torch_save
from core.thinning import replay
from model_define import model_spec

FORMAT = "compression_tool/pruned-v1"


def save_pruned(path: str | Path, model: nn.Module, meta: Dict[str, Any], force: bool = False) -> Path:
    return atomic_torch_save({"state_dict": model.state_dict(), "meta": {"format": FORMAT, **meta}}, path,
                             force=force)


def example_input(input_size: Sequence[int]) -> torch.Tensor:
    return torch.randn(1, *[int(v) for v in input_size])


def is_pruned_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and obj["meta"].get("format") == FORMAT


def _torch_load(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors carry no useful message for a user
        raise UserError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from None


def load_model(path: str | Path, model_name: Optional[str] = None, from_data_parallel: bool = False,
               input_size: Optional[Sequence[int]] = None, **model_kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a thinned checkpoint (rebuilt at its pruned width) or, given ``model_name``, a plain one.

    Returns ``(model in eval mode, meta)``; ``meta`` always has ``model``, ``model_kwargs``, ``input_size``.
    """
    p = Path(path)
    obj = _torch_load(p)
    if is_pruned_checkpoint(obj):
        meta = obj["meta"]
        if model_name and model_name != meta["model"]:
            raise UserError(f"{p}: checkpoint holds model {meta['model']!r}, not --model {model_name!r}")
        model = model_spec(meta["model"]).build_for(meta["input_size"], **meta.get("model_kwargs", {}))
        for rnd in meta.get("keep", []):
            replay(model, example_input(meta["input_size"]), rnd)
        _load_strict(model, obj["state_dict"], p)
        return model.eval(), meta
    if not model_name:
        raise UserError(f"{p}: a plain checkpoint; say which architecture it holds with --model")
    from common.checkpoint import load_weights, read_checkpoint  # plain/foreign checkpoints

    spec = model_spec(model_name)
    model = spec.build_for(input_size, **model_kwargs)
    sd, extra = read_checkpoint(p)
    load_weights(model, sd, str(p), from_data_parallel=from_data_parallel)
    meta = {"model": model_name, "model_kwargs": dict(model_kwargs),
            "input_size": list(input_size or spec.input_size), "source_meta": _plain(extra)}
    return model.eval(), meta


def _load_strict(model: nn.Module, sd: Dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: weights do not fit the rebuilt model: {first[1].strip() if len(first) > 1 else first[0]}") from None


def _plain(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
