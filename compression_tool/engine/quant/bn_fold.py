"""BatchNorm folding ("merge BN"): fold every conv/linear + BN pair into the conv/linear, exactly.

Two orders are handled, found on the model's torch.fx graph (so only true data-flow pairs are folded):

- conv/linear -> BN (the BN's only input is the conv, the conv's only user is the BN): always exact.
  ``W' = W * s``, ``b' = b * s + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``.
- BN -> conv/linear (BN-first blocks, e.g. ResNet-IR's ``BN -> conv3x3``; the BN's only user is the conv,
  possibly through Dropout/Flatten): ``conv(s * x + t) = conv_{W * s}(x) + sum(W * t)``. This is exact only
  when the conv sees no zero padding: with zero padding the original pads the *normalised* input with 0,
  while the folded conv pads the *raw* input with 0, i.e. the normalised value ``t``; border outputs differ.
  So a BN-first pair is folded only when the conv has no padding, pads by replicate/reflect/circular (which
  commute with a per-channel affine map), or the BN's shift ``t`` is exactly zero. Otherwise the BN is left
  in place and the report says why.

Folded BNs are replaced by ``nn.Identity`` so the model's own forward still runs; the model is copied.
"""
from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FOLDABLE = _CONV + (nn.Linear,)
_TRANSPARENT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


@dataclass
class FoldReport:
    """What was folded (``(layer, bn, order)``, order ``conv-bn`` or ``bn-conv``) and BNs left, with reasons."""
    folded: List[Tuple[str, str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        out = [f"folded {bn} into {layer} ({order})" for layer, bn, order in self.folded]
        out += [f"left {bn}: {why}" for bn, why in self.skipped]
        return out


def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(s, t)`` with ``bn(x) == s * x + t`` in eval mode."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    s = gamma / std
    return s, beta - bn.running_mean * s


def _bias(layer: nn.Module) -> torch.Tensor:
    out = layer.out_channels if isinstance(layer, _CONV) else layer.out_features
    return layer.bias.detach() if layer.bias is not None else torch.zeros(out, dtype=layer.weight.dtype)


def _set_params(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    layer.weight = nn.Parameter(weight.detach().clone())
    layer.bias = nn.Parameter(bias.detach().clone())


@torch.no_grad()
def fold_bn_after(layer: nn.Module, bn: nn.Module) -> None:
    """In place: ``layer`` becomes ``bn(layer(x))``."""
    s, t = bn_scale_shift(bn)
    w = layer.weight * s.view(-1, *([1] * (layer.weight.dim() - 1)))
    _set_params(layer, w, _bias(layer) * s + t)


def _per_weight_input_channel(layer: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """Expand a per-input-channel vector to the shape of ``layer.weight`` (groups and flatten aware)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        if layer.in_features % v.numel():
            raise ValueError(f"in_features {layer.in_features} is not a multiple of {v.numel()} BN channels")
        return v.repeat_interleave(layer.in_features // v.numel()).view(1, -1).expand_as(w)
    g, cout, cin_g = layer.groups, w.shape[0], w.shape[1]
    per_out = v.view(g, 1, cin_g).expand(g, cout // g, cin_g).reshape(cout, cin_g)
    return per_out.view(cout, cin_g, *([1] * (w.dim() - 2))).expand_as(w)


@torch.no_grad()
def fold_bn_before(bn: nn.Module, layer: nn.Module) -> None:
    """In place: ``layer`` becomes ``layer(bn(x))``. Exact only without zero padding (see module doc)."""
    s, t = bn_scale_shift(bn)
    w = layer.weight
    b = _bias(layer) + (w * _per_weight_input_channel(layer, t)).flatten(1).sum(1)
    _set_params(layer, w * _per_weight_input_channel(layer, s), b)


def zero_padding_breaks_fold(bn: nn.Module, layer: nn.Module) -> bool:
    """True when folding ``bn`` into the following ``layer`` would change border outputs (zero padding)."""
    if not isinstance(layer, _CONV) or layer.padding_mode != "zeros":
        return False
    pad = layer.padding
    if pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in pad)):
        return False
    return bool((bn_scale_shift(bn)[1] != 0).any())


# ---------------------------------------------------------------- graph matching

def _is_flatten(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """A flatten that keeps the batch axis: nn.Flatten(1), torch.flatten(x, 1), x.flatten(1), x.view(n, -1)."""
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    if node.op == "call_function" and node.target is torch.flatten:
        return start == 1 and len(node.args) <= 2
    if node.op == "call_method" and node.target == "flatten":
        return start == 1 and len(node.args) <= 2
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) == 2 else ()
        if not isinstance(shape, (tuple, list)) or len(shape) != 2 or shape[1] != -1:
            return False
        first = shape[0]
        return (isinstance(first, fx.Node) and first.op == "call_method" and first.target == "size"
                and first.args[1:] == (0,)) or (isinstance(first, fx.Node) and first.target is operator.getitem)
    return False


def _transparent(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module" and isinstance(modules[node.target], _TRANSPARENT_MODULES):
        return True
    return _is_flatten(node, modules)


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module_of(node: Optional[fx.Node], modules: Dict[str, nn.Module], kinds: tuple) -> Optional[str]:
    if node is not None and node.op == "call_module" and isinstance(modules[node.target], kinds):
        return str(node.target)
    return None


def _consumer_through_transparent(node: fx.Node, modules: Dict[str, nn.Module]) -> Tuple[Optional[fx.Node], bool]:
    """Follow single-user Dropout/Identity/Flatten nodes; returns (consumer, passed_a_flatten)."""
    user, flattened = _only_user(node), False
    while user is not None and _transparent(user, modules):
        flattened = flattened or _is_flatten(user, modules)
        user = _only_user(user)
    return user, flattened


def _call_counts(graph: fx.Graph) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def find_pairs(model: nn.Module) -> Tuple[List[Tuple[str, str, str]], List[Tuple[str, str]]]:
    """Candidate fold pairs ``(layer, bn, order)`` and BNs that cannot be folded ``(bn, reason)``."""
    graph = fx.Tracer().trace(model)
    modules = dict(model.named_modules())
    calls = _call_counts(graph)
    pairs: List[Tuple[str, str, str]] = []
    skipped: List[Tuple[str, str]] = []
    used: set = set()
    bn_nodes = [n for n in graph.nodes if _module_of(n, modules, _BN)]
    for bn_node in bn_nodes:                     # conv -> BN first: always exact
        bn_name = str(bn_node.target)
        src = bn_node.args[0] if bn_node.args else None
        layer = _module_of(src if isinstance(src, fx.Node) else None, modules, _FOLDABLE)
        if layer and calls[layer] == 1 and calls[bn_name] == 1 and _only_user(src) is bn_node and layer not in used:
            pairs.append((layer, bn_name, "conv-bn"))
            used.add(layer)
    folded_bns = {p[1] for p in pairs}
    for bn_node in bn_nodes:                     # then BN -> conv where exact
        bn_name = str(bn_node.target)
        if bn_name in folded_bns:
            continue
        consumer, flattened = _consumer_through_transparent(bn_node, modules)
        layer = _module_of(consumer, modules, _FOLDABLE)
        reason = _bn_first_problem(bn_name, layer, flattened, calls, modules)
        if reason:
            skipped.append((bn_name, reason))
        else:
            pairs.append((layer, bn_name, "bn-conv"))
    return pairs, skipped


def _bn_first_problem(bn_name: str, layer: Optional[str], flattened: bool, calls: Dict[str, int],
                      modules: Dict[str, nn.Module]) -> Optional[str]:
    bn = modules[bn_name]
    if calls[bn_name] != 1:
        return "module is called more than once"
    if layer is None:
        return "no conv/linear before it with a single user, nor a single conv/linear after it"
    if calls[layer] != 1:
        return f"{layer} is called more than once"
    m = modules[layer]
    if isinstance(m, nn.Linear):
        if not flattened and m.in_features != bn.num_features:
            return f"{layer} has {m.in_features} inputs, BN has {bn.num_features} channels"
        if m.in_features % bn.num_features:
            return f"{layer} inputs are not a multiple of the BN channels"
        return None
    if flattened:
        return f"a flatten separates it from {layer}"
    if m.in_channels != bn.num_features:
        return f"{layer} has {m.in_channels} input channels, BN has {bn.num_features}"
    if zero_padding_breaks_fold(bn, m):
        return f"followed by {layer} with zero padding {tuple(m.padding)}: folding would change border outputs"
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def fold_bn(model: nn.Module) -> Tuple[nn.Module, FoldReport]:
    """A copy of ``model`` (eval mode) with every exactly-foldable BN folded; plus what was and wasn't folded."""
    folded = copy.deepcopy(model).eval()
    report = FoldReport()
    try:
        pairs, report.skipped = find_pairs(folded)
    except Exception as exc:  # noqa: BLE001 - user models may not be fx-traceable; folding is then a no-op
        log.warning("BN folding skipped: the model cannot be traced by torch.fx (%s)", exc)
        report.skipped.append(("*", f"model not traceable by torch.fx: {exc}"))
        return folded, report
    modules = dict(folded.named_modules())
    for layer, bn, order in pairs:
        if order == "conv-bn":
            fold_bn_after(modules[layer], modules[bn])
        else:
            fold_bn_before(modules[bn], modules[layer])
        _replace(folded, bn, nn.Identity())
        report.folded.append((layer, bn, order))
    log.info("BN folding: %d folded, %d left", len(report.folded), len(report.skipped))
    return folded, report


@torch.no_grad()
def max_output_diff(a: nn.Module, b: nn.Module, inputs: Iterable[torch.Tensor]) -> float:
    """Largest absolute output difference of two models (eval mode) over ``inputs``."""
    a.eval(), b.eval()
    return max(float((a(x) - b(x)).abs().max()) for x in inputs)


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())
