"""Hard pruning ("thinning"): physically remove channels group by group, and replay that on a fresh model.

The *keep-arrays* record, per group, the root channels kept; they are enough to rebuild the thinned
architecture from the unpruned constructor (see ``replay``) and then load the thinned state_dict.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import torch.nn as nn

from compression_tool.engine.groups import GroupIndex
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)


def thin(index: GroupIndex, pruned: Mapping[str, Sequence[int]]) -> Dict[str, dict]:
    """Remove root channels ``pruned[group_name]`` from every group named; returns the keep-arrays."""
    _check_names(index, pruned)
    keep: Dict[str, dict] = OrderedDict()
    for g in index.groups:
        idxs = sorted(int(i) for i in pruned.get(g.name, ()))
        if not idxs:
            continue
        if idxs[-1] >= g.channels or idxs[0] < 0 or len(idxs) >= g.channels:
            raise UserError(f"{g.name}: cannot remove channels {idxs[:5]}… of {g.channels}")
        index.pruning_group(g, idxs).prune()
        kept = [i for i in range(g.channels) if i not in set(idxs)]
        keep[g.name] = {"root": g.root_name, "channels": g.channels, "kept": kept, "pruned": idxs,
                        "layers": g.members}
        log.debug("thinned %s: %d -> %d", g.name, g.channels, len(kept))
    return keep


def _check_names(index: GroupIndex, pruned: Mapping[str, Sequence[int]]) -> None:
    """Every named group must be prunable; checked before the model is touched."""
    names = {g.name for g in index.groups}
    for name in sorted(set(pruned) - names):
        why = index.skip_reason(name)
        if why is not None and len(pruned[name]):
            raise UserError(f"{name} cannot be pruned: {why}")
    unknown = sorted(n for n in set(pruned) - names if index.skip_reason(n) is None)
    if unknown:
        raise UserError(f"keep-arrays name unknown groups: {', '.join(unknown)}")


def replay(model: nn.Module, example_inputs, keep: Mapping[str, dict]) -> nn.Module:
    """Rebuild the thinned architecture on a freshly constructed (unpruned) ``model``, in place."""
    index = GroupIndex(model, example_inputs, prune_outputs=True)
    thin(index, {name: k["pruned"] for name, k in keep.items()})
    return model


def layer_widths(model: nn.Module) -> "OrderedDict[str, int]":
    """Output channels of every conv/linear, in model order: the printed keep-array summary."""
    out: "OrderedDict[str, int]" = OrderedDict()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def keep_table(before: Mapping[str, int], after: Mapping[str, int]) -> List[str]:
    """Human-readable lines ``layer: before -> after`` for layers that changed."""
    return [f"{n}: {before[n]} -> {after[n]}" for n in before if after.get(n) != before[n]]


def teacher_channels(keep_rounds: Sequence[Mapping[str, dict]], layer: str) -> Optional[List[int]]:
    """For a model thinned by ``keep_rounds`` (a checkpoint's ``meta["keep"]``): the unpruned model's channel index of
    each output channel of ``layer`` (a member of a group), composed over the rounds; None when no round thinned it
    (it has the unpruned width)."""
    idx: Optional[List[int]] = None
    for rnd in keep_rounds:
        for g in rnd.values():
            if layer in g.get("layers", ()):
                kept = [int(k) for k in g["kept"]]
                idx = kept if idx is None else [idx[k] for k in kept]
                break
    return idx
