"""Atomic, non-clobbering output writes (temp file in the same folder + rename)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from compression_tool.io.errors import UserError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force``; create the parent folder."""
    p = Path(path)
    if p.exists() and not force:
        raise UserError(f"{p} already exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    # keep the real suffix: writers such as savefig pick the format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    p = check_writable(path, force)
    return _atomic(p, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, force: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n", force)


def atomic_torch_save(obj: Any, path: str | os.PathLike, force: bool = False) -> Path:
    p = check_writable(path, force)
    return _atomic(p, lambda tmp: torch.save(obj, tmp))


def atomic_save_with(path: str | os.PathLike, save: Callable[[str], None], force: bool = True) -> Path:
    """Atomic write for writers that take a file name (matplotlib savefig, onnx export…)."""
    p = check_writable(path, force)
    return _atomic(p, save)
