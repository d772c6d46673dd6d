"""``pruning.py --mode sa --workers N``: the sweep's groups measured by N local processes, one task per group.

Each worker builds the model, the evaluation subset, the groups and the criterion once (its initializer), exactly as
the main process does (``apps.workflow.sweep_parts``), then measures whole groups; ``engine.sensitivity.sweep``
writes the rows in group order, so the CSV is the serial run's, byte for byte, and resumes the same way.
Processes are spawned (not forked: a forked torch can hang on its thread pools); each gets ``threads // N`` intra-op
threads (at least 1). ``--pool ray`` runs the same task shape on Ray actors (the optional extra
``pip install .[ray]``; imported only then): a local Ray, or the cluster ``RAY_ADDRESS`` names (docs/scaling.md).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from compression_tool.io.errors import UserError

_STATE: Optional[Dict[str, Any]] = None


def _init(cfg: Any, threads: int) -> None:
    global _STATE
    from compression_tool.apps.workflow import load_source, sweep_parts
    from compression_tool.engine.device import resolve_device
    from compression_tool.engine.sensitivity import GroupMeasurer

    torch.set_num_threads(threads)
    device = resolve_device(cfg.eval.device)
    model, meta = load_source(cfg.source)
    model.to(device)
    index, crit, names, evaluate = sweep_parts(cfg, model, meta, device)
    _STATE = {"groups": {g.name: g for g in index.groups},
              "measurer": GroupMeasurer(model, index, crit, evaluate, names, cfg.use_cache)}


def _task(i: int, name: str, levels: List[float]) -> Tuple[int, List[Dict[str, float]]]:
    assert _STATE is not None, "worker not initialised"
    return i, [dict(m) for m in _STATE["measurer"].measure(_STATE["groups"][name], levels)]


def process_pool(cfg: Any, workers: int, threads: Optional[int] = None):
    """A ``GroupPool`` for ``engine.sensitivity.sweep``: yields ``(task index, metrics per level)`` as tasks finish."""
    if workers < 1:
        raise UserError(f"--workers {workers}: expected a positive whole number")
    per_worker = max(1, (threads or torch.get_num_threads()) // workers)

    def run(tasks: List[Tuple[str, List[float]]]) -> Iterator[Tuple[int, List[Dict[str, float]]]]:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_init,
                                 initargs=(cfg, per_worker)) as ex:
            pending = {ex.submit(_task, i, name, levels) for i, (name, levels) in enumerate(tasks)}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            finally:
                for f in pending:
                    f.cancel()

    return run


class _RayWorker:
    """A Ray actor: builds once (``_init``), then measures whole groups (``_task``)."""

    def __init__(self, cfg: Any, threads: int):
        _init(cfg, threads)

    def measure(self, i: int, name: str, levels: List[float]) -> Tuple[int, List[Dict[str, float]]]:
        return _task(i, name, levels)


def ray_pool(cfg: Any, workers: int, threads: Optional[int] = None):
    """The same ``GroupPool`` on Ray actors (one CPU each); a Ray already running, or ``RAY_ADDRESS``, is used."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise UserError("--pool ray: Ray is not installed; pip install 'compression_tool[ray]' (or ray), or use "
                        "--pool process") from None
    if workers < 1:
        raise UserError(f"--workers {workers}: expected a positive whole number")
    per_worker = max(1, (threads or torch.get_num_threads()) // workers)

    def run(tasks: List[Tuple[str, List[float]]]) -> Iterator[Tuple[int, List[Dict[str, float]]]]:
        started = not ray.is_initialized()
        if started:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers}))
        try:
            actor = ray.remote(num_cpus=1)(_RayWorker)
            pool = ActorPool([actor.remote(cfg, per_worker) for _ in range(min(workers, len(tasks)))])
            for i, (name, levels) in enumerate(tasks):
                pool.submit(lambda a, t: a.measure.remote(*t), (i, name, levels))
            while pool.has_next():
                yield pool.get_next_unordered()
        finally:
            if started:
                ray.shutdown()

    return run
