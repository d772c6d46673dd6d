"""``pruning.py --mode sa --workers N``: the sweep's groups measured by N workers, one task per group.

Each worker (``apps.worker_pool``: local processes, or Ray actors with ``--pool ray``) builds the model, the groups
and the criterion once, exactly as the main process does (``apps.workflow.sweep_parts``), on the evaluation tensors
the main process decoded (handed over in shared memory, not decoded again), then measures whole groups;
``engine.sensitivity.sweep`` writes the rows in group order, so the CSV is the serial run's, byte for byte, and
resumes the same way. A worker that dies has its group measured again (``WorkerPool``). Each worker gets
``threads // N`` intra-op threads (at least 1).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from compression_tool.apps.worker_pool import WorkerPool, check_pool_args, per_worker_threads

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
    parts = sweep_parts(cfg, model, meta, device)
    _STATE = {"groups": {g.name: g for g in parts.index.groups},
              "measurer": GroupMeasurer(model, parts.index, parts.criterion, parts.evaluate, parts.names,
                                        cfg.use_cache)}


def _task(name: str, levels: List[float]) -> List[Dict[str, float]]:
    assert _STATE is not None, "worker not initialised"
    return [dict(m) for m in _STATE["measurer"].measure(_STATE["groups"][name], levels)]


def group_pool(cfg: Any, workers: int, backend: str = "process", threads: Optional[int] = None):
    """A ``GroupPool`` for ``engine.sensitivity.sweep``: yields ``(task index, metrics per level)`` as tasks finish.
    ``cfg`` is the ``SensitivityConfig`` every worker builds from (its ``eval.preloaded`` tensors shared)."""
    check_pool_args(workers, backend)
    per_worker = per_worker_threads(threads or torch.get_num_threads(), workers)

    def run(tasks: List[Tuple[str, List[float]]]) -> Iterator[Tuple[int, List[Dict[str, float]]]]:
        with WorkerPool(_init, (cfg, per_worker), min(workers, len(tasks)), backend,
                        address=getattr(cfg, "ray_address", None)) as pool:
            yield from pool.run(_task, tasks)

    return run
