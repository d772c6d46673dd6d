"""Reading foreign/plain checkpoints and loading them into zoo models with one-line, actionable errors."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("state_dict", "net_state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
SHOWN_KEYS = 3
OPTIONAL_SUFFIX = "num_batches_tracked"   # absent from pre-1.0 checkpoints; BatchNorm fills it in on load


TRUST_FLAG = "--trust_checkpoint"
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def torch_load(path: str | Path, trust: bool = False, what: str = "checkpoint") -> Any:
    """The project's one checkpoint reader. By default it reads weights only (tensors, numbers, strings and plain
    containers), so no code stored in the file can run; a file that needs full unpickling is refused in one line
    naming the opt-in. ``trust=True`` is that opt-in (``--trust_checkpoint``): only for files you made yourself."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file")
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if not trust and found:
            raise UserError(f"{p}: this {what} holds Python objects beyond weights ({found.group(1)}); loading "
                            f"them can run code, so it was refused. If you made the file yourself, pass "
                            f"{TRUST_FLAG}") from None
        raise UserError(f"{p}: not a PyTorch {what} ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - zip/pickle errors of many kinds all mean "not a torch checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{p}: not a PyTorch {what} ({type(exc).__name__}{': ' + first[:120] if first else ''})") \
            from None


def weights_in(obj: Any, source: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, meta) from a loaded checkpoint object.

    Accepts a bare state_dict, a whole ``nn.Module`` (only loadable with trust), or a dict wrapping the weights under
    one of ``state_dict``/``net_state_dict``/``model_state_dict``/``model``; meta holds the other top-level entries.
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), {}
    if _is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                return dict(inner), {k: v for k, v in obj.items() if k != key}
        raise UserError(f"{source}: no weights found; expected a state_dict or a dict with one of "
                        f"{', '.join(STATE_DICT_KEYS)} (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    raise UserError(f"{source}: holds a {type(obj).__name__}, not a state_dict or a dict of weights")


def read_checkpoint(path: str | Path, trust: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, meta) from a checkpoint file (see ``weights_in``)."""
    return weights_in(torch_load(path, trust), str(path))


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = DATA_PARALLEL_PREFIX
                 ) -> Dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it (e.g. DataParallel's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _first(keys: List[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def key_mismatch_message(model_keys: List[str], ckpt_keys: List[str], source: str, from_data_parallel: bool) -> str:
    """One line naming the file, the counts and the first missing/unexpected keys (empty if they match)."""
    expected, given = set(model_keys), set(ckpt_keys)
    missing = [k for k in model_keys if k not in given and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in ckpt_keys if k not in expected]
    if not missing and not unexpected:
        return ""
    parts = [f"{source}: checkpoint keys do not match the model ({len(given)} in file, {len(expected)} expected"]
    if missing:
        parts.append(f"; {len(missing)} missing: {_first(missing)}")
    if unexpected:
        parts.append(f"; {len(unexpected)} unexpected: {_first(unexpected)}")
    parts.append(")")
    if not from_data_parallel and ckpt_keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in ckpt_keys):
        parts.append(f"; the keys start with '{DATA_PARALLEL_PREFIX}': pass --from_data_parallel")
    return "".join(parts)


def shape_mismatch_message(model_sd: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                           source: str) -> str:
    """One line naming the first tensor whose shape differs (empty if all shapes agree)."""
    bad = [k for k, v in state_dict.items() if k in model_sd and tuple(model_sd[k].shape) != tuple(v.shape)]
    if not bad:
        return ""
    k = bad[0]
    return (f"{source}: {len(bad)} tensor(s) have the wrong shape, first {k}: checkpoint "
            f"{tuple(state_dict[k].shape)} vs model {tuple(model_sd[k].shape)} "
            "(wrong --model, model options or input size?)")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                 from_data_parallel: bool = False) -> nn.Module:
    """Load ``state_dict`` into ``model`` with strict keys and shapes; UserError (one line) otherwise."""
    sd = strip_prefix(state_dict) if from_data_parallel else dict(state_dict)
    model_sd = model.state_dict()
    msg = key_mismatch_message(list(model_sd), list(sd), source, from_data_parallel) \
        or shape_mismatch_message(model_sd, sd, source)
    if msg:
        raise UserError(msg)
    model.load_state_dict(sd, strict=True)
    log.info("loaded %d tensors from %s", len(sd), source)
    return model
