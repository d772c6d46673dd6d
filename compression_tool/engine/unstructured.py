"""Unstructured (element-wise) magnitude pruning with PaddleSlim's ``UnstructuredPruner`` API shape.

    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.55, optimizer=opt)   # or mode="threshold"
    for x, y in loader:
        loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()                       # new threshold (ratio mode) and masks, applied to the weights
    pruner.update_params()                  # before evaluating / saving (harmless when already applied)
    UnstructuredPruner.total_sparse(model)  # zeros / all parameters

Masks are kept through training by four independent guards, so a masked weight stays exactly 0.0:
1. a gradient hook on every pruned parameter zeroes the gradient of masked entries;
2. the optimizer's state (momentum buffers, Adam moments: every state tensor shaped like the parameter) is
   zeroed at masked entries whenever the masks change, so momentum cannot move them and weight decay,
   proportional to a weight that is 0, adds nothing;
3. with the optimizer attached, an optimizer step post-hook re-applies the masks after every ``opt.step()``,
   even if the user never calls ``step()``/``update_params()``;
4. a forward pre-hook re-applies the masks before each forward of a module owning pruned weights, so no
   forward pass ever sees a revived weight (``enforce_on_forward=False`` turns this one off).

Normalisation-layer parameters, biases and other 1-D parameters (e.g. PReLU slopes) are skipped by default;
``skip_params_func(model) -> names`` (parameter names, or layer names: all of that layer's parameters) replaces that
choice; ``prune_params_type="conv1x1_only"`` prunes only the weights of 1x1 convolutions, as in PaddleSlim.
``UnstructuredPruner.summarize_weights(model, ratio)`` gives the magnitude below which ``ratio`` of the prunable
weights lie (a threshold for ``mode="threshold"``). ``GMPUnstructuredPruner`` ramps the ratio with the
cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune".
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

MODES = ("threshold", "ratio")
PRUNE_PARAMS_TYPES = (None, "conv1x1_only")
NORM_LAYERS: Tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                                 nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm) + \
    ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
SkipFunc = Callable[[nn.Module], Iterable[str]]


def default_skip_params(model: nn.Module) -> Set[str]:
    """Names of the parameters of normalisation layers, of every ``bias`` and of every other 1-D parameter."""
    skip: Set[str] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or pname == "bias" or p.dim() <= 1:
                skip.add(f"{mname}.{pname}" if mname else pname)
    return skip


def conv1x1_weights(model: nn.Module) -> Set[str]:
    """Names of the weights of 1x1 (point-wise) convolutions: what PaddleSlim's ``conv1x1_only`` prunes."""
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and all(k == 1 for k in m.kernel_size)}


def expand_skip_names(model: nn.Module, names: Iterable[str]) -> Set[str]:
    """Parameter names; a layer (module) name stands for all of that layer's own parameters."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    out: Set[str] = set()
    for n in names:
        n = str(n)
        if n not in params and n in modules:
            out |= {f"{n}.{p}" if n else p for p, _ in modules[n].named_parameters(recurse=False)}
        else:
            out.add(n)
    return out


def zero_fraction(tensors: Iterable[torch.Tensor]) -> float:
    """Zero entries / all entries over ``tensors`` (0.0 when there are none)."""
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    return 1.0 - sum(int(t.count_nonzero()) for t in tensors) / total if total else 0.0


def weight_sparsity(model: nn.Module) -> float:
    """Zero fraction over the parameters the default pruner masks (i.e. not in ``default_skip_params``)."""
    skip = default_skip_params(model)
    return zero_fraction(p for n, p in model.named_parameters() if n not in skip)


def bottom_k_keep(scores: torch.Tensor, ratio: float) -> Tuple[torch.Tensor, float]:
    """Keep-mask removing exactly ``round(ratio * n)`` lowest scores (ties by position), and the smallest kept
    score (the threshold that mask corresponds to; 0.0 when nothing is removed, inf when everything is)."""
    n = scores.numel()
    k = min(n, int(round(ratio * n)))
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool), 0.0
    thr = scores.kthvalue(k).values
    prune = scores < thr
    need = k - int(prune.sum())
    if need > 0:
        prune[(scores == thr).nonzero().flatten()[:need]] = True
    keep = ~prune
    return keep, float(scores[keep].min()) if k < n else float("inf")


def _validate(mode: str, threshold: float, ratio: float) -> None:
    if mode not in MODES:
        raise UserError(f"unknown pruning mode {mode!r}; expected one of: {', '.join(MODES)}")
    if not threshold >= 0:
        raise UserError(f"threshold must be >= 0, got {threshold}")
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"ratio must be in [0, 1], got {ratio}")


class UnstructuredPruner:
    """Element-wise magnitude masks on every non-skipped parameter of ``model``; see the module doc.

    ``mode='threshold'``: keep ``|w| >= threshold``. ``mode='ratio'``: remove the ``ratio`` fraction of the
    smallest ``|w|`` over all pruned parameters together (per parameter with ``local_sparsity=True``); the
    threshold that achieves it is stored in ``self.threshold``. Masks start all-ones: the first ``step()`` (or
    ``update_masks()`` + ``update_params()``) prunes.
    """

    def __init__(self, model: nn.Module, mode: str = "ratio", threshold: float = 0.01, ratio: float = 0.55,
                 skip_params_func: Optional[SkipFunc] = None, local_sparsity: bool = False,
                 optimizer: Optional[torch.optim.Optimizer] = None, enforce_on_forward: bool = True,
                 prune_params_type: Optional[str] = None, sparse_block: Sequence[int] = (1, 1)):
        _validate(mode, threshold, ratio)
        if prune_params_type not in PRUNE_PARAMS_TYPES:
            raise UserError(f"prune_params_type {prune_params_type!r}: expected None or 'conv1x1_only'")
        if tuple(int(v) for v in sparse_block) != (1, 1):
            raise UserError(f"sparse_block {list(sparse_block)}: only element-wise sparsity [1, 1] is supported")
        self.prune_params_type = prune_params_type
        self.model, self.mode = model, mode
        self.threshold, self.ratio, self.local_sparsity = float(threshold), float(ratio), bool(local_sparsity)
        self.steps = 0
        self.params = self._select_params(model, skip_params_func, prune_params_type)
        self.masks: Dict[str, torch.Tensor] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._handles: List[Any] = []
        self._optimizer_handle: Any = None
        self._install_hooks(enforce_on_forward)
        if optimizer is not None:
            self.attach(optimizer)

    # ------------------------------------------------------------ setup

    @staticmethod
    def _select_params(model: nn.Module, skip_params_func: Optional[SkipFunc],
                       prune_params_type: Optional[str] = None) -> Dict[str, nn.Parameter]:
        named = dict(model.named_parameters())
        skip = expand_skip_names(model, skip_params_func(model)) if skip_params_func is not None \
            else default_skip_params(model)
        unknown = sorted(skip - named.keys())
        if unknown:
            raise UserError(f"skip_params_func named {len(unknown)} unknown parameter(s), first {unknown[0]!r}; "
                            "return names as in model.named_parameters() or model.named_modules()")
        if prune_params_type == "conv1x1_only":
            skip |= set(named) - conv1x1_weights(model)
        params = {n: p for n, p in named.items() if n not in skip}
        if not params:
            raise UserError("every parameter of the model is skipped: nothing to prune"
                            + (" (the model has no 1x1 convolution)" if prune_params_type else ""))
        log.info("unstructured pruning: %d tensors (%d weights), %d skipped", len(params),
                 sum(p.numel() for p in params.values()), len(skip))
        return params

    def _install_hooks(self, enforce_on_forward: bool) -> None:
        for name, p in self.params.items():
            if p.requires_grad:   # a frozen parameter has no gradient to mask
                self._handles.append(p.register_hook(functools.partial(self._mask_grad, name)))
        if not enforce_on_forward:
            return
        owner = {id(p): n for n, p in self.params.items()}
        for module in self.model.modules():
            names = [owner[id(p)] for p in module.parameters(recurse=False) if id(p) in owner]
            if names:
                self._handles.append(module.register_forward_pre_hook(functools.partial(self._mask_before, names)))

    def _mask_grad(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(~self.masks[name], 0.0)

    def _mask_before(self, names: List[str], module: nn.Module, inputs: Any) -> None:
        self._apply(names)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-apply the masks after every ``optimizer.step()`` and zero its state at masked entries."""
        if self._optimizer_handle is not None:
            self._optimizer_handle.remove()
        self.optimizer = optimizer
        self._optimizer_handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.update_params())
        self.zero_optimizer_state()

    def remove(self) -> None:
        """Remove every hook (the weights keep their zeros)."""
        for h in self._handles + ([self._optimizer_handle] if self._optimizer_handle is not None else []):
            h.remove()
        self._handles, self._optimizer_handle, self.optimizer = [], None, None

    # ------------------------------------------------------------ the PaddleSlim API

    def current_ratio(self) -> float:
        """The ratio ``step()`` prunes to (GMP overrides this with its schedule)."""
        return self.ratio

    def step(self) -> None:
        """Call after each optimizer step: new threshold (ratio mode), new masks, masks applied."""
        self.steps += 1
        self.ratio = self.current_ratio()
        self.update_masks()
        self.update_params()

    def update_masks(self) -> None:
        """Recompute the masks from the current weights (does not touch the weights)."""
        with torch.no_grad():
            if self.mode == "threshold":
                for n, p in self.params.items():
                    self.masks[n] = p.detach().abs() >= self.threshold
            elif self.local_sparsity:
                for n, p in self.params.items():
                    keep, _ = bottom_k_keep(self._scores(n).flatten(), self.ratio)
                    self.masks[n] = keep.view_as(p)
            else:
                self._global_ratio_masks()
        self.zero_optimizer_state()

    def _scores(self, name: str) -> torch.Tensor:
        # already-masked weights rank first so ties with natural zeros never move a mask around
        return self.params[name].detach().abs().masked_fill(~self.masks[name], -1.0)

    def _global_ratio_masks(self) -> None:
        scores = torch.cat([self._scores(n).flatten() for n in self.params])
        keep, self.threshold = bottom_k_keep(scores, self.ratio)
        offset = 0
        for n, p in self.params.items():
            self.masks[n] = keep[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def update_params(self) -> None:
        """Write zeros (+0.0) into every masked weight, e.g. after an optimizer step and before saving."""
        self._apply(self.params)

    def _apply(self, names: Iterable[str]) -> None:
        with torch.no_grad():
            for n in names:
                self.params[n].data.masked_fill_(~self.masks[n], 0.0)

    def zero_optimizer_state(self) -> None:
        """Zero every optimizer state tensor shaped like a pruned parameter at its masked entries."""
        if self.optimizer is None:
            return
        with torch.no_grad():
            for n, p in self.params.items():
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.masked_fill_(~self.masks[n], 0.0)

    # ------------------------------------------------------------ reporting

    def sparsity(self) -> float:
        """Fraction of zero entries over the pruned (non-skipped) parameters."""
        return zero_fraction(self.params.values())

    def mask_sparsity(self) -> float:
        """Fraction of masked entries over the pruned parameters."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    @staticmethod
    def summarize_weights(model: nn.Module, ratio: float = 0.1) -> float:
        """The magnitude below which ``ratio`` of the weights the default pruner masks lie (PaddleSlim's helper to
        pick a ``threshold`` for a wanted sparsity)."""
        if not 0.0 <= ratio <= 1.0:
            raise UserError(f"ratio must be in [0, 1], got {ratio}")
        skip = default_skip_params(model)
        w = torch.cat([p.detach().abs().flatten() for n, p in model.named_parameters() if n not in skip])
        if not w.numel():
            raise UserError("the model has no prunable weights")
        k = min(max(int(round(ratio * w.numel())), 1), w.numel())
        return float(w.kthvalue(k).values)

    @staticmethod
    def total_sparse(model: nn.Module) -> float:
        """Fraction of zero entries over all parameters of ``model`` (PaddleSlim's definition)."""
        return zero_fraction(model.parameters())

    # ------------------------------------------------------------ state

    def settings(self) -> Dict[str, Any]:
        return {"class": type(self).__name__, "mode": self.mode, "threshold": self.threshold,
                "prune_params_type": self.prune_params_type,
                "ratio": self.ratio, "local_sparsity": self.local_sparsity, "steps": self.steps}

    def state_dict(self) -> Dict[str, Any]:
        return {"settings": self.settings(), "masks": {n: m.clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping[str, Any], source: str = "pruner state") -> None:
        """Restore masks, threshold, ratio and step count (then apply the masks)."""
        s, masks = state["settings"], state["masks"]
        if set(masks) != set(self.masks):
            missing = sorted(set(self.masks) - set(masks)) or sorted(set(masks) - set(self.masks))
            raise UserError(f"{source}: its masks cover other parameters than this pruner (first differing: "
                            f"{missing[0]}); use the same model and skip_params_func")
        if s.get("mode") != self.mode:
            raise UserError(f"{source}: was pruned in {s.get('mode')!r} mode, not {self.mode!r}")
        for n, m in masks.items():
            if tuple(m.shape) != tuple(self.masks[n].shape):
                raise UserError(f"{source}: mask {n} has shape {tuple(m.shape)}, "
                                f"the model {tuple(self.masks[n].shape)}")
            self.masks[n] = m.to(dtype=torch.bool, device=self.params[n].device).clone()
        self.threshold, self.ratio = float(s["threshold"]), float(s["ratio"])
        self.local_sparsity, self.steps = bool(s["local_sparsity"]), int(s["steps"])
        self.update_params()
        self.zero_optimizer_state()


# ---------------------------------------------------------------- gradual magnitude pruning

@dataclass(frozen=True)
class GMPSchedule:
    """Cubic ramp (Zhu & Gupta 2017): ``s(t) = final + (initial - final) * (1 - t / pruning_iters) ** 3``.

    ``t`` counts optimizer steps after ``stable_iters`` dense steps (ratio 0) and only advances in multiples of
    ``update_every``; after the ramp the ratio stays at ``final_ratio``.
    """
    initial_ratio: float
    final_ratio: float
    pruning_iters: int
    stable_iters: int = 0
    update_every: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial_ratio <= self.final_ratio <= 1.0:
            raise UserError(f"GMP needs 0 <= initial ratio ({self.initial_ratio}) <= final ratio "
                            f"({self.final_ratio}) <= 1")
        if self.pruning_iters < 1 or self.stable_iters < 0 or self.update_every < 1:
            raise UserError(f"GMP needs pruning iterations >= 1 (got {self.pruning_iters}), stable iterations "
                            f">= 0 (got {self.stable_iters}) and update_every >= 1 (got {self.update_every})")

    def ratio_at(self, step: int) -> float:
        if step < self.stable_iters:
            return 0.0
        t = step - self.stable_iters
        if t >= self.pruning_iters:
            return self.final_ratio
        t -= t % self.update_every
        return self.final_ratio + (self.initial_ratio - self.final_ratio) * (1.0 - t / self.pruning_iters) ** 3


class GMPUnstructuredPruner(UnstructuredPruner):
    """Ratio-mode pruner whose ratio follows a ``GMPSchedule`` of its own ``steps`` counter."""

    def __init__(self, model: nn.Module, schedule: GMPSchedule, skip_params_func: Optional[SkipFunc] = None,
                 local_sparsity: bool = False, optimizer: Optional[torch.optim.Optimizer] = None,
                 enforce_on_forward: bool = True, prune_params_type: Optional[str] = None):
        self.schedule = schedule
        super().__init__(model, mode="ratio", ratio=schedule.ratio_at(0), skip_params_func=skip_params_func,
                         local_sparsity=local_sparsity, optimizer=optimizer, enforce_on_forward=enforce_on_forward,
                         prune_params_type=prune_params_type)

    def current_ratio(self) -> float:
        return self.schedule.ratio_at(self.steps)

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "schedule": asdict(self.schedule)}
