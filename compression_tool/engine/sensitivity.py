"""Sensitivity analysis: sweep every prunable group over sparsity levels and record the metrics.

The CSV has Distiller's shape — ``parameter,sparsity,<metric columns>`` — one row per (group, level),
appended and flushed row by row, so an interrupted run resumes where it stopped. What measured the rows is recorded
next to it in ``<csv>.meta.json``; a resume measured differently is refused, and ``<csv>.lock`` keeps a second run out.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch.nn as nn
from tqdm import tqdm

from compression_tool.engine.criteria import Criterion
from compression_tool.engine.groups import GroupIndex, PrunableGroup
from compression_tool.engine.masking import group_slices, masked
from compression_tool.engine.prefix_cache import PrefixCache
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_bytes, atomic_write_json, check_writable

log = logging.getLogger(__name__)

Metrics = Dict[str, float]
EvalFn = Callable[[nn.Module], Metrics]


def default_sparsities() -> List[float]:
    return [round(0.1 * i, 10) for i in range(10)]


def parse_sparsities(text: str) -> List[float]:
    """'0,0.1,0.5' or 'start:stop:step' (stop exclusive, like range) -> rounded levels in [0, 1)."""
    try:
        if ":" in text:
            a, b, c = (float(t) for t in text.split(":"))
            if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)) or c <= 0:
                raise UserError(f"--sparsities {text}: start:stop:step needs finite numbers and a step > 0")
            n = int(round((b - a) / c))
            vals = [a + i * c for i in range(n)]
        else:
            vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--sparsities: expected numbers like '0,0.2,0.4' or '0:1:0.1', got {text!r}") from None
    vals = [round(v, 6) for v in vals]
    bad = [v for v in vals if not 0.0 <= v < 1.0]
    if bad or not vals:
        raise UserError(f"--sparsities: every level must be in [0, 1); got {bad or text!r}")
    return vals


def sidecar_path(csv_path: Path) -> Path:
    """``<csv>.meta.json``: what produced the CSV (checkpoint hash, data, seed, subset, criterion, grid…)."""
    return csv_path.with_name(csv_path.name + ".meta.json")


def lock_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".lock")


def read_done(path: Path, header: Sequence[str]) -> Set[Tuple[str, float]]:
    """Rows already in an existing CSV (for resuming). A different header is an error, not overwritten."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows[0] != list(header):
        raise UserError(f"{path}: existing CSV has header {rows[0]}, expected {list(header)}; "
                        "pass a different --output or remove it")
    done = set()
    for r in rows[1:]:
        if len(r) == len(header):
            try:
                done.add((r[0], round(float(r[1]), 6)))
            except ValueError:
                pass  # a torn last line from an interrupted run: that row is redone
    return done


def _short(v: object) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(path: Path, meta: Optional[Dict], force: bool = False,
                 header: Optional[Sequence[str]] = None) -> bool:
    """Before any expensive work: would a sweep into ``path`` resume (True), start afresh (False), or be refused
    (UserError)? Reads only."""
    return _inspect(Path(path), header, meta, force)


def _inspect(path: Path, header: Optional[Sequence[str]], meta: Optional[Dict], force: bool) -> bool:
    """Read-only: True when ``path`` holds rows this run may resume, False to start afresh. Anything that is not
    our CSV (even with ``force``), or our CSV measured differently (its sidecar), is refused in one line before a
    byte is written."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    again = "pass --force to start afresh (its rows are discarded) or another --output"
    raw = path.read_bytes()
    try:
        first = raw.split(b"\n", 1)[0].decode("utf-8")
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a sensitivity CSV (not UTF-8 text); it was left untouched: choose another "
                        "--output") from None
    found = next(csv.reader([first.rstrip("\r")]), [])
    if found[:2] != ["parameter", "sparsity"]:
        raise UserError(f"{path}: not a sensitivity CSV (its first line is not 'parameter,sparsity,…'); it was left "
                        "untouched: choose another --output")
    if force:              # our CSV, to be started afresh; a file that is not ours is refused even with --force
        return False
    if header is not None and found != list(header):
        raise UserError(f"{path}: existing CSV has header {found}, expected {list(header)}; {again}")
    has_rows = raw.count(b"\n") > 1 or (raw.count(b"\n") == 1 and not raw.endswith(b"\n"))
    side = sidecar_path(path)
    if meta is None:
        return True
    if not side.exists():
        if not has_rows:
            return False
        raise UserError(f"{path}: no {side.name} records what measured its rows, so they cannot be resumed "
                        f"safely; {again}")
    try:
        old = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{side}: not a sensitivity sidecar (JSON object); {again}") from None
    for key, value in meta.items():
        if old.get(key) != value:
            raise UserError(f"{path}: its rows were measured with {key}={_short(old.get(key))}, this run has "
                            f"{key}={_short(value)}; {again}")
    return True


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<csv>.lock`` for the whole run: a second run into the same CSV fails at once."""
    lock = lock_path(path)
    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"{path}: another sensitivity run is writing it (it holds {lock.name}); wait for it "
                            "to finish or choose another --output") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino   # not a lock file its last holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise UserError(f"{path}: could not take {lock.name}; try again")
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _append_row(path: Path, row: Sequence) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def sweep(model: nn.Module, index: GroupIndex, criterion: Criterion, evaluate: EvalFn, csv_path: Path,
          sparsities: Sequence[float], metric_names: Sequence[str], groups: Optional[Sequence[PrunableGroup]] = None,
          use_cache: bool = True, meta: Optional[Dict] = None, force: bool = False,
          pool: Optional[GroupPool] = None) -> Path:
    """Run the sweep, appending to ``csv_path``; returns it. ``evaluate`` must use a fixed data subset.

    ``meta`` (JSON-able: checkpoint hash, data, seed, subset, criterion, grid…) goes to ``<csv>.meta.json``; a
    resume whose meta differs is refused, naming the field. ``force`` starts afresh instead of resuming. The CSV is
    checked to be ours before anything is written, and an exclusive lock keeps a second run out.

    ``pool`` (``--workers N``): measures ``[(group name, levels)…]`` elsewhere (one task per group) and yields
    ``(task index, [metrics per level])`` in any finishing order; rows are still written in group order (each group
    as soon as every group before it is in), so the CSV holds the serial run's bytes and resumes the same way.
    """
    csv_path = Path(csv_path)
    header = ["parameter", "sparsity", *metric_names]
    meta = json.loads(json.dumps({**(meta or {}), "metrics": list(metric_names)})) if meta is not None else None
    if csv_path.is_dir():
        raise UserError(f"{csv_path} is a folder; give a CSV file path")
    _inspect(csv_path, header, meta, force)           # refuse before the lock file or any folder is created
    check_writable(csv_path, force=True)
    with _exclusive(csv_path):
        resume = _inspect(csv_path, header, meta, force)
        if resume:
            _drop_torn_tail(csv_path)
        done = read_done(csv_path, header) if resume else set()
        fresh = [not resume]
        groups = list(groups if groups is not None else index.groups)
        todo = [(g, s) for g in groups for s in sparsities if (g.name, round(s, 6)) not in done]
        if not todo:
            log.info("%s already holds every row; nothing to do", csv_path)
            return csv_path
        bar = tqdm(total=len(todo), desc="sensitivity", unit="eval")

        def write(g: PrunableGroup, s: float, metrics: Metrics) -> None:
            if fresh[0]:   # the first row: only now is an old file replaced (header first, then the sidecar)
                _start(csv_path, header, meta)
                fresh[0] = False
            _append_row(csv_path, [g.name, _fmt(round(s, 6)), *(_fmt(metrics[k]) for k in metric_names)])
            bar.set_postfix_str(f"{g.name} {s:.2f} {metric_names[0]}={metrics[metric_names[0]]:.2f}")
            bar.update(1)

        tasks = [(g, [s for s in sparsities if (g.name, round(s, 6)) not in done]) for g in groups]
        tasks = [(g, levels) for g, levels in tasks if levels]
        if pool is not None:
            results: Dict[int, List[Metrics]] = {}
            flushed = 0
            for i, metrics in pool([(g.name, levels) for g, levels in tasks]):
                results[i] = [_checked(m, metric_names) for m in metrics]
                while flushed in results:            # group order, whatever the finishing order
                    g, levels = tasks[flushed]
                    for s, m in zip(levels, results.pop(flushed)):
                        write(g, s, m)
                    flushed += 1
        else:
            measurer = GroupMeasurer(model, index, criterion, evaluate, metric_names, use_cache)
            for g, levels in tasks:
                for s, metrics in zip(levels, measurer.measure(g, levels)):
                    write(g, s, metrics)
        bar.close()
    return csv_path


GroupPool = Callable[[List[Tuple[str, List[float]]]], Iterator[Tuple[int, List["Metrics"]]]]


class GroupMeasurer:
    """The metrics of one group at each level (soft masks; the prefix cache replays what the mask cannot change;
    the unmasked baseline is measured once)."""

    def __init__(self, model: nn.Module, index: GroupIndex, criterion: Criterion, evaluate: EvalFn,
                 metric_names: Sequence[str], use_cache: bool = True):
        self.model, self.index, self.criterion, self.evaluate = model.eval(), index, criterion, evaluate
        self.names = list(metric_names)
        self.cache = PrefixCache(model, index.example_inputs) if use_cache else None
        self.baseline: Optional[Metrics] = None

    def measure(self, g: PrunableGroup, levels: Sequence[float]) -> Iterator[Metrics]:
        order = self.criterion.order(self.index, g)
        cache = self.cache
        reuse = cache.reusable(set(g.members) | _touched(self.index, g)) if cache else []
        for s in levels:
            n = g.n_prune(s)
            if n == 0:
                self.baseline = self.baseline or _checked(self.evaluate(self.model), self.names)
                yield self.baseline
                continue
            with masked(group_slices(self.index, g, order[:n])):
                if cache:
                    with cache.reuse(reuse):
                        yield _checked(self.evaluate(self.model), self.names)
                else:
                    yield _checked(self.evaluate(self.model), self.names)


def _touched(index: GroupIndex, g: PrunableGroup) -> Set[str]:
    """Every module whose tensors change when the group is masked (consumers' input columns too)."""
    names = index.module_names
    return {names[d.target.module] for d, _ in index.pruning_group(g, [0]) if d.target.module in names}


def _checked(metrics: Metrics, names: Sequence[str]) -> Metrics:
    missing = [k for k in names if k not in metrics]
    if missing:
        raise UserError(f"evaluation did not report metrics {missing}; it reported {list(metrics)}")
    return metrics


def _start(path: Path, header: Sequence[str], meta: Optional[Dict]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerow(header)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    if meta is not None:
        atomic_write_json(sidecar_path(path), meta)


def _drop_torn_tail(path: Path) -> None:
    """An interrupted run may leave half a row without its newline: cut it so appends start clean. Bytes, not text:
    the rows keep csv.writer's \\r\\n, so a resumed CSV is byte-identical to an uninterrupted one."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def load_csv(path: str | os.PathLike) -> Tuple[List[str], Dict[str, List[Tuple[float, Dict[str, float]]]]]:
    """Read a sensitivity CSV -> (metric names, {parameter: [(sparsity, {metric: value})] sorted})."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such sensitivity CSV")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not a sensitivity CSV (not UTF-8 text: byte {exc.start})") from None
    except IsADirectoryError:
        raise UserError(f"{p} is a folder, not a sensitivity CSV") from None
    if not rows or len(rows[0]) < 3 or rows[0][:2] != ["parameter", "sparsity"]:
        raise UserError(f"{p}: not a sensitivity CSV (expected header 'parameter,sparsity,<metric>,…')")
    metrics = rows[0][2:]
    data: Dict[str, List[Tuple[float, Dict[str, float]]]] = {}
    for line_no, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        if len(r) != len(rows[0]):
            raise UserError(f"{p}:{line_no}: expected {len(rows[0])} fields, got {len(r)}")
        try:
            s = float(r[1])
            vals = {m: float(v) for m, v in zip(metrics, r[2:])}
        except ValueError:
            raise UserError(f"{p}:{line_no}: non-numeric value in {r}") from None
        data.setdefault(r[0], []).append((s, vals))
    if not data:
        raise UserError(f"{p}: the CSV has a header but no rows")
    return metrics, {k: sorted(v, key=lambda t: t[0]) for k, v in data.items()}
