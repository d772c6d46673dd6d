"""Atomic, non-clobbering output writes (temp file in the same folder + rename), checked before the work starts."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from compression_tool.io.errors import UserError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse, in one line, an output that cannot be written — before any work is done: an existing file without
    ``force``, a folder, a parent that is a file or cannot be created, a folder we may not write into (probed by
    creating and removing a temp file there, which also catches read-only file systems). Creates the parent."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a file path")
    if p.exists() and not force:
        raise UserError(f"{p} already exists; pass --force to overwrite it")
    for anc in [p.parent, *p.parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise UserError(f"{p}: cannot write there, {anc} is a file, not a folder")
            break
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.probe.", dir=p.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{p}: cannot write in {p.parent} ({_reason(exc)})") from None
    return p


def check_writable_dir(path: str | os.PathLike) -> Path:
    """An output folder: create it (and its parents) and make sure files can be written into it."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d}: expected a folder, it is a file")
    check_writable(d / ".write-check", force=True)
    return d


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    # keep the real suffix: writers such as savefig pick the format from it
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise UserError(f"{path}: cannot write in {path.parent} ({_reason(exc)})") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; the output gets the mode any new file would get
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:       # full disk, quota, the folder removed under us: nothing is left half-written
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"{path}: could not be written ({_reason(exc)}); nothing was changed") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    p = check_writable(path, force)
    return _atomic(p, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = True) -> Path:
    p = check_writable(path, force)
    return _atomic(p, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, force: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n", force)


def atomic_torch_save(obj: Any, path: str | os.PathLike, force: bool = False) -> Path:
    p = check_writable(path, force)
    return _atomic(p, lambda tmp: torch.save(obj, tmp))


def atomic_save_with(path: str | os.PathLike, save: Callable[[str], None], force: bool = True) -> Path:
    """Atomic write for writers that take a file name (matplotlib savefig, onnx export…)."""
    p = check_writable(path, force)
    return _atomic(p, save)
