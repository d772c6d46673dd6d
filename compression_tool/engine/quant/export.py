"""The deployment export: (thinned) model -> BN folded -> ONNX fp32 (and int8) -> ONNX Runtime, checked.

Every exported file is compared with the PyTorch model it came from before it is moved into place: the fp32
ONNX Runtime outputs must lie within ``tolerance`` of PyTorch's (max |Δ| <= tolerance * max(1, max |y|)), the
int8 ones must keep a mean cosine of at least ``min_cosine`` per output row. A failing file is not written and
``ExportMismatch`` (a one-line ``UserError``) says by how much it failed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.quant.ptq_onnx import OrtModule, export_onnx, ort_session, quantize_onnx
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_save_with


class ExportMismatch(UserError):
    """An exported model does not reproduce the PyTorch model within the tolerance."""


@dataclass
class Agreement:
    """How closely ``other`` reproduces ``ref`` on some inputs."""
    max_abs: float          # max |Δ| over all outputs
    max_ref: float          # max |y_ref|, the scale of the outputs
    cosine_mean: float      # per output row (flattened), mean and minimum
    cosine_min: float

    @property
    def relative(self) -> float:
        return self.max_abs / max(1.0, self.max_ref)

    def line(self) -> str:
        return (f"max |Δ| {self.max_abs:.3g} (outputs up to {self.max_ref:.3g}), cosine mean {self.cosine_mean:.6f} "
                f"min {self.cosine_min:.6f}")


@torch.no_grad()
def agreement(ref: nn.Module, other: nn.Module, batches: Sequence[torch.Tensor]) -> Agreement:
    max_abs = max_ref = 0.0
    cos: List[torch.Tensor] = []
    for x in batches:
        a, b = ref(x).float(), other(x).float()
        max_abs = max(max_abs, float((a - b).abs().max()))
        max_ref = max(max_ref, float(a.abs().max()))
        cos.append(F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12))
    c = torch.cat(cos)
    return Agreement(max_abs, max_ref, float(c.mean()), float(c.min()))


def check_fp32(stats: Agreement, tolerance: float, what: str) -> None:
    if not stats.relative <= tolerance:
        raise ExportMismatch(f"{what} differs from PyTorch: {stats.line()}; allowed max |Δ| is "
                             f"{tolerance:g} x max(1, max |y|) = {tolerance * max(1.0, stats.max_ref):.3g} "
                             "(--tolerance); nothing written")


def check_int8(stats: Agreement, min_cosine: float, what: str) -> None:
    if not stats.cosine_mean >= min_cosine:
        raise ExportMismatch(f"{what} drifts from PyTorch fp32: {stats.line()}; required mean cosine >= "
                             f"{min_cosine:g} (--int8_min_cosine); nothing written")


def _checked(path: str | os.PathLike, force: bool, make: Callable[[str], None],
             check: Callable[[str], None]) -> Path:
    """Write with ``make(tmp)``, run ``check(tmp)`` (raises to abort), then move into place atomically."""
    def write(tmp: str) -> None:
        make(tmp)
        check(tmp)
    return atomic_save_with(path, write, force)


def export_fp32_checked(model: nn.Module, batches: Sequence[torch.Tensor], path: str | os.PathLike,
                        tolerance: float, threads: int = 1, force: bool = False, prelu_split: bool = True,
                        reference: nn.Module | None = None) -> tuple[Path, Agreement]:
    """Export ``model`` to ONNX fp32 (dynamic batch) and check ONNX Runtime against ``reference`` (default:
    ``model``) on ``batches``; returns the path and the agreement."""
    reference = reference if reference is not None else model
    result: List[Agreement] = []

    def make(tmp: str) -> None:
        export_onnx(model, batches[0][:1], tmp, force=True, prelu_split=prelu_split)

    def check(tmp: str) -> None:
        result.append(agreement(reference, OrtModule(ort_session(tmp, threads)), batches))
        check_fp32(result[-1], tolerance, "fp32 ONNX Runtime")

    return _checked(path, force, make, check), result[-1]


def quantize_checked(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, reference: nn.Module,
                     calib: Sequence[torch.Tensor], check_batches: Sequence[torch.Tensor], min_cosine: float,
                     threads: int = 1, force: bool = False, reduce_range: bool = False,
                     **quant_kwargs) -> tuple[Path, Agreement]:
    """Static int8 quantization of ``fp32_path``, checked against the fp32 PyTorch ``reference``."""
    result: List[Agreement] = []

    def make(tmp: str) -> None:
        quantize_onnx(fp32_path, tmp, calib, reduce_range=reduce_range, force=True, **quant_kwargs)

    def check(tmp: str) -> None:
        result.append(agreement(reference, OrtModule(ort_session(tmp, threads)), check_batches))
        check_int8(result[-1], min_cosine, "int8 ONNX Runtime")

    return _checked(int8_path, force, make, check), result[-1]
