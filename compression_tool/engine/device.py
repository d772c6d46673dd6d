"""The one place that turns ``--device`` into a ``torch.device`` and moves inputs to where the model lives.

``cpu`` (the default) keeps every number as it was: moving a CPU tensor to the CPU is a no-op.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, TypeVar

import torch
import torch.nn as nn

from compression_tool.io.errors import UserError

DEVICE_CHOICES = "cpu | cuda | cuda:N | auto"
T = TypeVar("T")


def amp_context(device: torch.device, amp: bool):
    """float16 autocast on CUDA when ``amp``; otherwise nothing changes. ``--amp`` off CUDA is refused: the CPU path
    stays exact float32."""
    if not amp:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise UserError(f"--amp: mixed precision runs on CUDA only (--device cuda|cuda:N|auto with a GPU), got "
                        f"--device {device.type}; the CPU path stays exact float32")
    return torch.autocast("cuda", dtype=torch.float16)


def check_amp(spec: Optional[str], amp: bool) -> None:
    """Refuse ``--amp`` for ``--device spec`` before any work (see :func:`amp_context`)."""
    amp_context(resolve_device(spec), amp)


def with_amp(fn: Callable[..., T], device: torch.device, amp: bool) -> Callable[..., T]:
    """``fn`` run under :func:`amp_context` (evaluation functions: ``--amp`` on CUDA)."""
    if not amp:
        return fn

    def run(*args, **kwargs) -> T:
        with amp_context(device, amp):
            return fn(*args, **kwargs)
    return run


def resolve_device(spec: Optional[str] = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available, else cpu); one-line error when absent."""
    text = (spec or "cpu").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec}: expected {DEVICE_CHOICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UserError(f"--device {spec}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                        f"cuda build {torch.version.cuda or 'none'}); use --device cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                        f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; cpu for a model without either."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_model_device(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device (the same tensor when it is already there)."""
    return x.to(model_device(model))
