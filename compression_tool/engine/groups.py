"""Prunable channel groups from torch-pruning's dependency graph, named the Distiller way.

A group is every layer whose channels must be removed together (a conv, its BN and PReLU, the layers that
consume it, and all layers tied to it by residual adds). Each group is named by its *leading weight*: the
weight of the first conv/linear (in model definition order) whose output channels the group removes.

Two kinds of group are never offered for pruning:

* **output groups** — a group removing output channels of an *output layer*: a conv/linear whose output
  channels reach a model output through ops without channel-mixing parameters (BN, PReLU, activations,
  F.normalize, mean/pooling, flatten/view/reshape, scaling, concatenation, adds…). They are found by walking
  torch-pruning's traced graph backwards from the output node(s), stopping at conv/linear (and other
  channel-mixing layers: embedding, attention, LSTM). Tensor identity is not enough: ``F.normalize(bn(fc(x)))``
  or ``fc(x) * t`` return a tensor no layer produced. A per-group trial (does thinning change the output
  shape?) was the alternative; the walk is preferred because it costs one graph traversal instead of a model
  copy per group, and because it also protects layers whose channels reach the output through a reduction
  (``fc(x).norm(dim=1)``), where pruning keeps the shape but changes the output's meaning. Its limit is the
  other side of that: a layer reaching the output only through a parameter-free channel contraction
  (``x.sum(1)``, a matmul of two activations) is protected although its width could change; and ops that
  autograd does not record (a numpy round trip) hide what lies behind them. ``prune_outputs=True`` offers
  output groups again.
* **unresolvable groups** — a group whose thinning does not compute what masking computes (torch-pruning's
  index mapping cannot follow e.g. a channel split + concat + channel shuffle). Groups whose graph holds any op
  that can move channels (split, concat, reshape other than a flatten into a Linear, slicing on the channel
  dim, transpose/permute/indexing, unknown ops…) are *trial-pruned* on one float64 copy of the model: two
  channels are removed by masking and by thinning, and the forward pass must run, keep the output shape and
  give the same output both ways. Failing groups are listed in ``GroupIndex.skipped`` with the reason and
  logged as a warning; every other group is unaffected. Groups made only of channel-preserving ops take no
  trial, so common CNNs pay nothing.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
import torch_pruning.dependency.index_mapping as tp_index_mapping
from torch_pruning.dependency.node import Node
from torch_pruning.ops import OPTYPE

from compression_tool.io.errors import UserError
from patches.handlers import CUSTOM_PRUNERS

log = logging.getLogger(__name__)

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)

# node types whose output channels are not their input channels: the backward walk from an output stops there
CHANNEL_MIXING = (OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.LINEAR, OPTYPE.EMBED, OPTYPE.MHA, OPTYPE.LSTM)
# node types torch-pruning maps one channel to one channel (modules with their own pruner, the model output)
CHANNEL_WISE_TYPES = (OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.PRELU, OPTYPE.LN,
                      OPTYPE.GN, OPTYPE.IN, OPTYPE.CUSTOMIZED, OPTYPE.PARAMETER, OPTYPE.OUTPUT)
# autograd ops (``<Name>Backward<k>``) that keep channel c at position c: element-wise maths, pooling, resizing
POINTWISE_OPS = frozenset("""Add Sub Mul Div Neg Abs Exp Log Pow Sqrt Rsqrt Reciprocal Clone Relu Hardtanh LeakyRelu
Elu Gelu Silu Mish Sigmoid Tanh Hardswish Hardsigmoid Softplus Clamp ClampMin ClampMax Threshold NativeDropout
MaxPool1DWithIndices MaxPool2DWithIndices MaxPool3DWithIndices AvgPool1D AvgPool2D AvgPool3D AdaptiveAvgPool1D
AdaptiveAvgPool2D AdaptiveAvgPool3D AdaptiveMaxPool1D AdaptiveMaxPool2D AdaptiveMaxPool3D UpsampleNearest1D
UpsampleNearest2D UpsampleNearest3D UpsampleBilinear2D UpsampleBicubic2D""".split())
REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin"})  # channel-preserving unless they reduce dim 1


@dataclass
class PrunableGroup:
    name: str                 # leading weight, e.g. "layer1.0.conv1.weight"
    root_name: str            # module whose out-channels index the group
    root: nn.Module
    members: List[str]        # modules whose out-channels are removed (conv/linear/BN/PReLU), model order
    weights: List[str]        # conv/linear weights among the members: any of them may name the group
    channels: int
    round_to: int = 1         # kept widths are multiples of this (or the whole group): hardware-friendly widths

    def snap(self, n: int) -> int:
        """``n`` removed channels moved to the nearest count at or below it that keeps a multiple of
        ``round_to`` channels (torch-pruning's ``round_to``: the kept width is rounded *up*, never pruning more
        than asked; a group narrower than ``round_to`` stays whole)."""
        n = max(0, min(int(n), self.channels - 1))
        if self.round_to <= 1 or n == 0:
            return n
        kept = self.channels - n
        return self.channels - min(self.channels, -(-kept // self.round_to) * self.round_to)

    def n_prune(self, sparsity: float) -> int:
        """Channels removed at ``sparsity`` (Distiller: floor(s * n)); at least one channel is always kept;
        then ``snap``ped to ``round_to``."""
        return self.snap(min(int(sparsity * self.channels + 1e-9), self.channels - 1))

    def ratio_for(self, n: int) -> float:
        """A 6-digit ratio that ``n_prune`` maps back to exactly ``n`` (a count ``snap`` leaves alone)."""
        r = round(n / self.channels, 6)
        while int(r * self.channels + 1e-9) < n:
            r = round(r + 1e-6, 6)
        return r


@dataclass
class Coupled:
    """One layer of a dependency group and, per root channel, its own channel indices."""
    name: str
    module: nn.Module
    out: bool                  # the group removes this layer's output channels (else its inputs)
    blocks: List[List[int]]    # blocks[root channel] -> this layer's channels (several after a flatten)


# ------------------------------------------------------------------------------------- graph building
@contextlib.contextmanager
def tolerant_index_mapping() -> Iterator[None]:
    """torch-pruning 1.6.1 divides by an inferred channel count of 0 at some reshapes (a chain of
    split/concat/channel-shuffle blocks) and the whole graph fails to build. Inside this context such a
    reshape keeps its default (identity) index mapping instead; the groups through it are then judged by the
    trial pruning like any other group with a reshape."""
    original = tp_index_mapping.update_reshape_index_mapping

    def update(graph, node):
        try:
            original(graph, node)
        except ZeroDivisionError:
            log.debug("torch-pruning cannot map channels through %s; left unmapped", node)

    tp_index_mapping.update_reshape_index_mapping = update
    try:
        yield
    finally:
        tp_index_mapping.update_reshape_index_mapping = original


# ----------------------------------------------------------------------------------------- output layers
def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> Tuple[tp.DependencyGraph, List[torch.Tensor]]:
    """torch-pruning's dependency graph (traced in eval mode) and the model outputs of that trace."""
    outputs: List[torch.Tensor] = []

    def keep(out):
        outputs.extend(t for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor))
        return out

    was_training = model.training
    model.eval()
    try:
        with tolerant_index_mapping():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, output_transform=keep,
                                                       customized_pruners=dict(CUSTOM_PRUNERS))
    finally:
        model.train(was_training)
    return dg, outputs


def output_layers(dg: tp.DependencyGraph, outputs: Sequence[torch.Tensor]) -> List[nn.Module]:
    """Channel-mixing layers (conv/linear…) whose output channels reach a model output through ops without
    channel-mixing parameters: walk the traced graph backwards from the output nodes, stop at those layers."""
    out_fns = {t.grad_fn for t in outputs if t.grad_fn is not None}
    stack = [n for n in dg.module2node.values() if not n.outputs or n.grad_fn in out_fns]
    seen: Set[Node] = set()
    found: List[nn.Module] = []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.type in CHANNEL_MIXING:
            found.append(node.module)
        else:
            stack.extend(node.inputs)
    return found


def output_modules(model: nn.Module, example_inputs: torch.Tensor) -> List[nn.Module]:
    """The model's output layers (logits, embedding, conv classifier…), see ``output_layers``."""
    return output_layers(*build_graph(model, example_inputs))


# --------------------------------------------------------------------------------- unresolvable groups
def _op_name(node: Node) -> str:
    name = node.grad_fn.name() if hasattr(node.grad_fn, "name") else "Unknown"
    return re.sub(r"Backward\d*$", "", name)


def _reduces_channels(grad_fn) -> bool:
    dims = getattr(grad_fn, "_saved_dim", None)
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if dims is None or sizes is None:
        return True
    dims = [dims] if isinstance(dims, int) else list(dims)
    return not dims or 1 in {d % len(sizes) for d in dims}


def _is_flatten_into_linear(node: Node) -> bool:
    """``x.flatten(1)`` / ``x.view(n, -1)`` feeding Linear layers: torch-pruning maps it (channel -> block)."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if sizes is None or len(sizes) < 2 or not node.outputs:
        return False
    width = math.prod(int(s) for s in sizes[1:])
    return all(o.type == OPTYPE.LINEAR and o.module.in_features == width for o in node.outputs)


def _param_only(node: Node, memo: Dict[Node, bool]) -> bool:
    """Ops on parameters only (PReLU's weight view, a Linear weight's transpose): no activation flows through."""
    if node not in memo:
        memo[node] = False  # cycles (reused modules) count as activation paths
        memo[node] = node.type not in CHANNEL_WISE_TYPES and all(_param_only(i, memo) for i in node.inputs)
    return memo[node]


def may_move_channels(node: Node, memo: Dict[Node, bool]) -> bool:
    """True unless torch-pruning surely maps channel c of this op's input to channel c of its output."""
    if node.type in CHANNEL_WISE_TYPES or _param_only(node, memo):
        return False
    if node.type == OPTYPE.RESHAPE:
        return not _is_flatten_into_linear(node)
    if node.type == OPTYPE.SLICE:
        return getattr(node.grad_fn, "_saved_dim", 1) == 1
    if node.type == OPTYPE.ELEMENTWISE:
        op = _op_name(node)
        return _reduces_channels(node.grad_fn) if op in REDUCTIONS else op not in POINTWISE_OPS
    return True  # concat, split, unbind, expand, attention, LSTM, embedding


def _trial_channels(channels: int) -> List[int]:
    """Two channels away from the ends (a channel shuffle leaves the first and last in place)."""
    return sorted({min(1, channels - 2), min(channels // 2 + 1, channels - 2)}) if channels > 2 else [0]


def _tensors(y) -> List[torch.Tensor]:
    return [t for t in tp.utils.flatten_as_list(y) if isinstance(t, torch.Tensor)]


class _Trial:
    """One float64 copy of the model on which groups are trial-pruned in turn (a fresh copy after a failure)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        self.model, self.x = model, example_inputs
        self.index: Optional["GroupIndex"] = None

    def run(self, group: "PrunableGroup", same_shape: bool) -> Optional[str]:
        """None if thinning ``group`` works and matches masking; else why not. The copy keeps a successful trial."""
        if self.index is None:
            clone = copy.deepcopy(self.model).double().eval()
            x = self.x.double() if self.x.is_floating_point() else self.x
            self.index = GroupIndex(clone, x, prune_outputs=True, check_groups=False)
        reason = self._check(self.index, self.index._by_name.get(group.name), group, same_shape)
        if reason is not None:
            self.index = None
        return reason

    @staticmethod
    @torch.no_grad()
    def _check(index: "GroupIndex", g: Optional["PrunableGroup"], orig: "PrunableGroup",
               same_shape: bool) -> Optional[str]:
        from compression_tool.engine.masking import (  # compression_tool.engine.masking imports this module
            group_slices,
            masked,
        )
        if g is None:
            return "not found on a copy of the model"
        model, x, idxs = index.model, index.example_inputs, _trial_channels(orig.channels)
        try:
            before = _tensors(model(x))
            try:
                slices = group_slices(index, g, idxs)
            except UserError:
                slices = None  # a layer without a soft-mask rule: check that thinning runs and keeps shapes
            soft = None
            if slices is not None:
                with masked(slices):
                    soft = _tensors(model(x))
            index.pruning_group(g, idxs).prune()
            hard = _tensors(model(x))
        except Exception as exc:  # torch-pruning's IndexError, a conv's shape error…: that is the finding
            first_line = (str(exc).splitlines() or [""])[0][:120]
            return f"thinning it breaks the forward pass ({type(exc).__name__}: {first_line})"
        if same_shape and [t.shape for t in hard] != [t.shape for t in before]:
            return "thinning it changes the model output's shape"
        if soft is not None and [t.shape for t in hard] == [t.shape for t in soft]:
            scale = max([1.0] + [float(t.abs().max()) for t in before if t.numel()])
            diff = max([0.0] + [float((a - b).abs().max()) for a, b in zip(soft, hard) if a.numel()])
            if diff > 1e-6 * scale:
                return f"masked and thinned outputs differ by {diff:.3g}"
        return None


# ----------------------------------------------------------------------------------------------- index
class GroupIndex:
    """Dependency graph + prunable groups of one model instance.

    ``groups``: what may be pruned; ``skipped``: (group name, reason) for unresolvable groups;
    ``outputs``: names of the output layers (excluded unless ``prune_outputs``)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignore: Sequence[str] = (),
                 prune_outputs: bool = False, check_groups: bool = True, round_to: int = 1):
        self.model = model
        self.example_inputs = example_inputs
        self._mods: Dict[str, nn.Module] = dict(model.named_modules())
        self.module_names: Dict[nn.Module, str] = {m: n for n, m in self._mods.items()}
        self._order = {n: i for i, n in enumerate(self.module_names.values())}
        ignored = [self._module(n, "--ignore") for n in ignore]
        self.dg, outputs = build_graph(model, example_inputs)
        out_layers = output_layers(self.dg, outputs)
        self.outputs = [self.module_names[m] for m in out_layers if m in self.module_names]
        if not prune_outputs:
            ignored += out_layers  # never shrink the logits / embedding dimension unless the user asks for it
        self.skipped: List[Tuple[str, str]] = []
        self._nodes: Dict[str, Set[Node]] = {}  # group name -> the graph nodes its full group touches
        groups = self._collect(ignored)
        self.groups: List[PrunableGroup] = self._resolvable(groups, set(out_layers)) if check_groups else groups
        if round_to < 1:
            raise UserError(f"--round_to must be at least 1, got {round_to}")
        for g in self.groups:
            g.round_to = round_to
        self._by_name = {g.name: g for g in self.groups}
        self._coupled: Dict[str, List[Coupled]] = {}
        self._by_weight = {w: g for g in self.groups for w in g.weights}
        self._by_weight.update({m: g for g in self.groups for m in g.members})
        for name, why in self.skipped:
            log.warning("not pruning group %s: %s", name, why)

    def _module(self, name: str, what: str) -> nn.Module:
        if name not in self._mods:
            raise UserError(f"{what}: no layer named {name!r} in the model")
        return self._mods[name]

    def _collect(self, ignored: List[nn.Module]) -> List[PrunableGroup]:
        """Walk roots in model definition order (torch-pruning's own walk follows an id-hashed trace order,
        which can name coupled groups differently on two copies of one model)."""
        ignored_set = set(ignored) | set(self.dg.IGNORED_LAYERS_IN_TRACING)
        visited: set = set()
        groups = []
        for name, m in self._mods.items():
            if not isinstance(m, ROOT_TYPES) or m in visited or m in ignored_set or m not in self.dg.module2node:
                continue
            pruner = self.dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:  # one channel first: a group torch-pruning cannot map fails as fast (a full one can take seconds)
                self.pruning_group_of(m, [0])
                g = self.pruning_group_of(m, range(pruner.get_out_channels(m)))
            except Exception as exc:  # torch-pruning cannot map indices through some op
                visited.add(m)
                self.skipped.append((f"{name}.weight", f"the dependency graph cannot build its group "
                                                      f"({type(exc).__name__}: {exc})"))
                continue
            outs = [d.target.module for d, _ in g if self.dg.is_out_channel_pruning_fn(d.handler)]
            visited.update(outs)
            if any(o in ignored_set for o in outs):
                continue
            members = sorted({self.module_names[o] for o in outs if o in self.module_names},
                             key=self._order.__getitem__)
            roots = [n for n in members if isinstance(self._mods[n], ROOT_TYPES)]
            self._nodes[f"{roots[0]}.weight"] = {d.target for d, _ in g}
            groups.append(PrunableGroup(name=f"{roots[0]}.weight", root_name=roots[0], root=self._mods[roots[0]],
                                        members=members, weights=[f"{n}.weight" for n in roots],
                                        channels=pruner.get_out_channels(m)))
        return groups

    def _resolvable(self, groups: List[PrunableGroup], out_layers: Set[nn.Module]) -> List[PrunableGroup]:
        """Drop (into ``skipped``) the groups whose trial pruning fails; only groups with ops that may move
        channels are tried, all on one copy."""
        memo: Dict[Node, bool] = {}
        trial = _Trial(self.model, self.example_inputs)
        keep = []
        for g in groups:
            reason = None
            if g.channels > 1 and any(may_move_channels(n, memo) for n in self._nodes[g.name]):
                same_shape = not any(self._mods[m] in out_layers for m in g.members)
                reason = trial.run(g, same_shape)
            if reason is None:
                keep.append(g)
            else:
                self.skipped.append((g.name, reason))
        return keep

    def _mod(self, name: str) -> nn.Module:
        return self._mods[name]

    def find(self, name: str, source: str = "schedule") -> PrunableGroup:
        """Group by any member weight or module name (a leading ``module.`` is ignored)."""
        key = name[len("module."):] if name.startswith("module.") else name
        g = self._by_weight.get(key) or self._by_weight.get(key.rsplit(".weight", 1)[0])
        if g is None:
            why = self.skip_reason(key)
            if why is not None:
                raise UserError(f"{source}: {name!r} cannot be pruned: {why}")
            raise UserError(f"{source}: {name!r} is not a prunable layer of this model "
                            f"(prunable: {', '.join(x.name for x in self.groups[:8])}"
                            f"{', …' if len(self.groups) > 8 else ''})")
        return g

    def skip_reason(self, name: str) -> Optional[str]:
        """Why the group named ``name`` (leading weight or its module) was skipped; None if it was not."""
        for skipped, why in self.skipped:
            if name in (skipped, skipped.rsplit(".weight", 1)[0]):
                return why
        return None

    def pruning_group(self, group: PrunableGroup, idxs: Iterable[int]) -> "tp.dependency.Group":
        return self.pruning_group_of(group.root, idxs)

    def pruning_group_of(self, root: nn.Module, idxs: Iterable[int]) -> "tp.dependency.Group":
        """torch-pruning's group removing output channels ``idxs`` of ``root`` (and everything coupled)."""
        pruner = self.dg.get_pruner_of_module(root)
        with tolerant_index_mapping():  # get_pruning_group recomputes the index mappings
            return self.dg.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in idxs))

    def coupled(self, group: PrunableGroup) -> List[Coupled]:
        """Every named layer ``group`` touches, with the root-channel -> layer-channel map (cached: the structure
        does not change until the model is thinned, and then a new index is built)."""
        if group.name not in self._coupled:
            layers = []
            for dep, idxs in self.pruning_group(group, range(group.channels)):
                module = dep.target.module
                name = self.module_names.get(module)
                flat = [int(getattr(i, "idx", i)) for i in idxs]
                if name is None or not flat or len(flat) % group.channels:
                    continue  # torch-pruning's internal ops (add, reshape…) or a layer we cannot map
                k = len(flat) // group.channels
                layers.append(Coupled(name, module, self.dg.is_out_channel_pruning_fn(dep.handler),
                                      [flat[c * k:(c + 1) * k] for c in range(group.channels)]))
            self._coupled[group.name] = layers
        return self._coupled[group.name]

    def describe(self) -> List[Tuple[str, int, List[str]]]:
        return [(g.name, g.channels, g.members) for g in self.groups]


# ---------------------------------------------------------------- structural look-ups for criteria

# modules that map channel c to channel c (so the chain root -> BN -> activation keeps the root's channels)
CHANNELWISE = (nn.modules.batchnorm._BatchNorm, nn.PReLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU,
               nn.SELU, nn.CELU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid,
               nn.Softplus, nn.Identity, nn.Dropout)


def stream_roots(model: nn.Module, example_inputs: torch.Tensor) -> List[str]:
    """Roots of the groups several convs write into: residual streams (e.g. coupled through a ResNet's zero-pad
    shortcut). Leaving them out (``ignore``) prunes only the convs inside the blocks."""
    return [g.root_name for g in GroupIndex(model, example_inputs).groups if len(g.weights) > 1]


def _param_dtype(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(device=p.device, dtype=p.dtype) if x.is_floating_point() else x.to(p.device)


def coupled_layers(model: nn.Module, example: torch.Tensor, root_names: Sequence[str]
                   ) -> Dict[str, List[Coupled]]:
    """For each root, every named layer its group touches, with the root-channel -> layer-channel map."""
    index = GroupIndex(model, example[:1], prune_outputs=True)
    out: Dict[str, List[Coupled]] = {}
    for root_name in root_names:
        g = index.find(root_name, source="criterion")
        if g.root_name != root_name:
            raise UserError(f"criterion: {root_name!r} is not the leading layer of its group ({g.root_name})")
        out[root_name] = index.coupled(g)
    return out


def activation_sites(model: nn.Module, example: torch.Tensor, roots: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """For each root, the last module of the chain root -> (BN) -> (activation) that consumes its output.

    Traced on one forward pass: a module continues the chain when it is channel-wise (BN, PReLU, ReLU…),
    its first input *is* the previous output tensor, and it runs once per forward (a shared activation module
    would mix several layers' channels). Without such a module the root itself is the site."""
    calls: List[Tuple[nn.Module, object, object]] = []
    counts: Dict[nn.Module, int] = {}

    def record(mod, inp, out):
        calls.append((mod, inp[0] if inp else None, out))  # references keep tensors (and their ids) alive
        counts[mod] = counts.get(mod, 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_param_dtype(model, example[:1]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    sites: Dict[str, nn.Module] = {}
    for name, root in roots.items():
        pos = next((i for i, c in enumerate(calls) if c[0] is root), None)
        site = root
        if pos is not None:
            t = calls[pos][2]
            for mod, inp, out in calls[pos + 1:]:
                if inp is t and isinstance(mod, CHANNELWISE) and counts[mod] == 1:
                    site, t = mod, out
        sites[name] = site
    return sites


