"""BN statistics after thinning: AdaBN, or the paired correction.

Thinning removes channels, so the layers after it see inputs with other means and variances than the running
statistics their BatchNorms learned. Two ways to re-estimate them on a few unlabeled calibration images:

- ``adabn`` (``search.fitness.bn_recalibrate``): forget the running statistics and measure the thinned model's
  own. Every BN moves, also those pruning did not touch, by the calibration set's sampling noise and by any shift
  between it and the training data (CIFAR-10 JPEGs vs the PNGs a model was trained on): light cuts change more
  predictions than the cut itself does.
- ``paired``: keep the unpruned model's statistics and correct each BN by what thinning changed, measured on the
  same images in the unpruned and the thinned model. With mean μ and variance σ² of a BN's input (per channel, on
  the calibration images), the thinned BN gets ``rv' = rv · σ'²/σ²`` and ``rm' = μ' − (μ − rm) · σ'/σ``, so its
  output has the moments the unpruned BN's output had on those images. A BN whose input did not change keeps its
  statistics exactly. BNs are corrected in forward order within one pass over all calibration images (each sees
  inputs already corrected upstream), the images concatenated into one batch (at most ``max_images``).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from compression_tool.engine.device import to_model_device
from compression_tool.engine.search.fitness import bn_recalibrate
from compression_tool.engine.thinning import teacher_channels
from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

BN_METHODS = ("adabn", "paired")
_BN = nn.modules.batchnorm._BatchNorm


def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BN input ``[N, C, ...]``, in float64."""
    flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(1), flat.var(1, unbiased=False)


def _images(batches: Iterable, max_images: int) -> torch.Tensor:
    xs: List[torch.Tensor] = []
    n = 0
    for b in batches:
        b = b[0] if isinstance(b, (list, tuple)) else b
        xs.append(b[:max_images - n])
        n += len(xs[-1])
        if n >= max_images:
            break
    if not xs:
        raise UserError("BN re-estimation: the calibration data yielded no batches")
    return torch.cat(xs)


def _tracked(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BN) and m.running_mean is not None}


def _run_with_bn_hooks(model: nn.Module, bns: Mapping[str, nn.Module], x: torch.Tensor,
                       fn: Callable[[nn.Module, Sequence[torch.Tensor], str], None]) -> None:
    """One eval-mode forward of ``x`` with ``fn(module, inputs, name)`` called before each BN in ``bns``; the
    model's train/eval mode is restored."""
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: fn(mod, inp, n)) for n, m in bns.items()]
    was_training = model.training
    try:
        model.eval()
        model(to_model_device(model, x))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


class BNReestimator:
    """BN statistics of thinned copies of one ``reference`` re-estimated on the same calibration ``batches`` by
    ``method`` (``BN_METHODS``). ``paired`` measures the reference's BN inputs once, on first use, and reuses them for
    every copy (the reference must not change meanwhile); ``max_images`` caps the images it concatenates."""

    def __init__(self, method: str, reference: Optional[nn.Module], batches: Sequence, max_images: int = 1024):
        if method not in BN_METHODS:
            raise UserError(f"BN re-estimation: unknown method {method!r}; expected one of {', '.join(BN_METHODS)}")
        if method == "paired" and reference is None:
            raise UserError("paired BN correction needs the unpruned reference model")
        self.method, self.reference, self.batches, self.max_images = method, reference, batches, max_images
        self._x: Optional[torch.Tensor] = None
        self._ref_bns: Dict[str, nn.Module] = {}
        self._ref_moments: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def apply(self, thinned: nn.Module, keep: Mapping[str, dict]) -> int:
        """Re-estimate ``thinned`` (the reference thinned with keep-arrays ``keep``, the dict
        ``engine.thinning.thin`` returns) in place; returns the batches (adabn) or images (paired) used."""
        if self.method == "adabn":
            return bn_recalibrate(thinned, self.batches)
        return self._paired(thinned, keep)

    @torch.no_grad()
    def _measure_reference(self) -> torch.Tensor:
        if self._x is None:
            self._x = _images(self.batches, self.max_images)
            self._ref_bns = _tracked(self.reference)
            _run_with_bn_hooks(self.reference, self._ref_bns, self._x,
                               lambda mod, inp, n: self._ref_moments.__setitem__(n, _moments(inp[0])))
        return self._x

    @torch.no_grad()
    def _paired(self, thinned: nn.Module, keep: Mapping[str, dict]) -> int:
        """Correct each BN of ``thinned`` by the change thinning made to its input (see the module doc)."""
        x = self._measure_reference()
        ref_bns, ref_moments, thin_bns = self._ref_bns, self._ref_moments, _tracked(thinned)
        missing = sorted(set(thin_bns) - set(ref_bns))
        if missing:
            raise UserError(f"paired BN correction: the thinned model has BN layers the reference lacks: "
                            f"{', '.join(missing[:3])}")
        rounds = [keep]

        def correct(mod: nn.Module, inp: Sequence[torch.Tensor], name: str) -> None:
            ref = ref_bns[name]
            kept = teacher_channels(rounds, name)
            idx = torch.arange(mod.num_features) if kept is None else torch.tensor(kept)
            if len(idx) != mod.num_features or (kept is None and ref.num_features != mod.num_features) \
                    or name not in ref_moments:
                log.debug("paired BN correction: %s left as is (no channel map or not reached)", name)
                return
            mu_r, var_r = (t[idx] for t in ref_moments[name])
            mu_t, var_t = _moments(inp[0])
            rm, rv = ref.running_mean[idx].double(), ref.running_var[idx].double() + ref.eps
            # a channel the reference never varied on these images keeps its variance (no ratio to take)
            ratio = torch.where(var_r > 1e-12, var_t / var_r.clamp_min(1e-12), torch.ones_like(var_t))
            mod.running_var.copy_((rv * ratio - mod.eps).clamp_min(0.0).to(mod.running_var.dtype))
            mod.running_mean.copy_((mu_t - (mu_r - rm) * ratio.sqrt()).to(mod.running_mean.dtype))

        _run_with_bn_hooks(thinned, thin_bns, x, correct)
        return len(x)


def paired_bn_correct(reference: nn.Module, thinned: nn.Module, keep: Mapping[str, dict], batches: Iterable,
                      max_images: int = 1024) -> int:
    """Correct the BN running statistics of ``thinned`` (``reference`` thinned with ``keep``) on the calibration
    ``batches`` (see the module doc). ``reference`` is not changed. Returns the images used."""
    return BNReestimator("paired", reference, list(batches), max_images).apply(thinned, keep)


def reestimate_bn(method: str, reference: Optional[nn.Module], thinned: nn.Module, keep: Mapping[str, dict],
                  batches: Sequence) -> int:
    """BN statistics of ``thinned`` re-estimated on ``batches`` by ``method`` once (``BNReestimator`` serves many
    copies of one reference). Returns the batches (adabn) or images (paired) used."""
    return BNReestimator(method, reference, batches).apply(thinned, keep)


__all__ = ["BN_METHODS", "BNReestimator", "paired_bn_correct", "reestimate_bn"]
