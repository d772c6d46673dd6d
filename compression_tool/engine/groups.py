"""Prunable channel groups from torch-pruning's dependency graph, named the Distiller way.

A group is every layer whose channels must be removed together (a conv, its BN and PReLU, the layers that
consume it, and all layers tied to it by residual adds). Each group is named by its *leading weight*: the
weight of the first conv/linear (in model definition order) whose output channels the group removes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

from compression_tool.io.errors import UserError
from patches.handlers import CUSTOM_PRUNERS

log = logging.getLogger(__name__)

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass
class PrunableGroup:
    name: str                 # leading weight, e.g. "layer1.0.conv1.weight"
    root_name: str            # module whose out-channels index the group
    root: nn.Module
    members: List[str]        # modules whose out-channels are removed (conv/linear/BN/PReLU), model order
    weights: List[str]        # conv/linear weights among the members: any of them may name the group
    channels: int

    def n_prune(self, sparsity: float) -> int:
        """Channels removed at ``sparsity`` (Distiller: floor(s * n)); at least one channel is always kept."""
        return min(int(sparsity * self.channels + 1e-9), self.channels - 1)


@dataclass
class Coupled:
    """One layer of a dependency group and, per root channel, its own channel indices."""
    name: str
    module: nn.Module
    out: bool                  # the group removes this layer's output channels (else its inputs)
    blocks: List[List[int]]    # blocks[root channel] -> this layer's channels (several after a flatten)


def output_modules(model: nn.Module, example_inputs: torch.Tensor) -> List[nn.Module]:
    """Modules whose output tensor *is* (or is a view of) the model output: logits / embedding layers."""
    outs: Dict[nn.Module, object] = {}  # keep the tensors alive: a freed one's address can be reused by the output
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.__setitem__(mod, o))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            y = model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    targets = {_storage(t) for t in (y if isinstance(y, (tuple, list)) else [y])}
    return [m for m, o in outs.items() if _storage(o) is not None and _storage(o) in targets]


def _storage(t) -> Optional[int]:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None


class GroupIndex:
    """Dependency graph + prunable groups of one model instance."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignore: Sequence[str] = (),
                 prune_outputs: bool = False):
        self.model = model
        self.example_inputs = example_inputs
        self._mods: Dict[str, nn.Module] = dict(model.named_modules())
        self.module_names: Dict[nn.Module, str] = {m: n for n, m in self._mods.items()}
        self._order = {n: i for i, n in enumerate(self.module_names.values())}
        ignored = [self._module(n, "--ignore") for n in ignore]
        if not prune_outputs:
            # never shrink the logits / embedding dimension unless the user asks for it
            ignored += output_modules(model, example_inputs)
        was_training = model.training
        model.eval()
        self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                        customized_pruners=dict(CUSTOM_PRUNERS))
        model.train(was_training)
        self.groups: List[PrunableGroup] = self._collect(ignored)
        self._coupled: Dict[str, List[Coupled]] = {}
        self._by_weight = {w: g for g in self.groups for w in g.weights}
        self._by_weight.update({m: g for g in self.groups for m in g.members})

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
            g = self.dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            outs = [d.target.module for d, _ in g if self.dg.is_out_channel_pruning_fn(d.handler)]
            visited.update(outs)
            if any(o in ignored_set for o in outs):
                continue
            members = sorted({self.module_names[o] for o in outs if o in self.module_names},
                             key=self._order.__getitem__)
            roots = [n for n in members if isinstance(self._mods[n], ROOT_TYPES)]
            groups.append(PrunableGroup(name=f"{roots[0]}.weight", root_name=roots[0], root=self._mods[roots[0]],
                                        members=members, weights=[f"{n}.weight" for n in roots],
                                        channels=pruner.get_out_channels(m)))
        return groups

    def _mod(self, name: str) -> nn.Module:
        return self._mods[name]

    def find(self, name: str, source: str = "schedule") -> PrunableGroup:
        """Group by any member weight or module name (a leading ``module.`` is ignored)."""
        key = name[len("module."):] if name.startswith("module.") else name
        g = self._by_weight.get(key) or self._by_weight.get(key.rsplit(".weight", 1)[0])
        if g is None:
            raise UserError(f"{source}: {name!r} is not a prunable layer of this model "
                            f"(prunable: {', '.join(x.name for x in self.groups[:8])}"
                            f"{', …' if len(self.groups) > 8 else ''})")
        return g

    def pruning_group(self, group: PrunableGroup, idxs: Iterable[int]) -> "tp.dependency.Group":
        pruner = self.dg.get_pruner_of_module(group.root)
        return self.dg.get_pruning_group(group.root, pruner.prune_out_channels, sorted(int(i) for i in idxs))

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


def _param_dtype(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    return x.to(p.dtype) if p is not None and x.is_floating_point() else x


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


