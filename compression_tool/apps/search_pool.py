"""``pruning.py --mode search --workers N``: a population's candidates evaluated by N workers.

Each worker (``apps.worker_pool``: local processes, or Ray actors with ``--pool ray``) holds a replica of the model
and the evaluation and calibration data (the tensors the main process decoded, shared, not decoded again); a task
is one candidate's plan (channels to remove per group, chosen in the main process by the criterion), thinned and
BN-recalibrated exactly as ``PruningFitness.build`` does, then evaluated. The main process keeps the search, the
budget repair and the cache, so the search is the serial one for the same seed.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from compression_tool.apps.worker_pool import WorkerPool, per_worker_threads
from compression_tool.engine.search.fitness import Plan, recalibrated_copy

_STATE: Optional[Dict[str, Any]] = None


def _init(cfg: Any, threads: int) -> None:
    global _STATE
    from compression_tool.apps.search import calibration_batches
    from compression_tool.apps.workflow import eval_setup, load_source
    from compression_tool.engine.checkpoint import example_input
    from compression_tool.engine.device import resolve_device

    torch.set_num_threads(threads)
    model, meta = load_source(cfg.source)
    model.to(resolve_device(cfg.eval.device))
    setup = eval_setup(cfg.eval, meta)
    _STATE = {"model": model, "x": example_input(meta["input_size"]).to(resolve_device(cfg.eval.device)),
              "evaluate": setup.evaluate, "calib": calibration_batches(setup, cfg.search_batches),
              "ignore": list(cfg.ignore)}


def _task(plan: Plan) -> Dict[str, float]:
    assert _STATE is not None, "worker not initialised"
    s = _STATE
    return dict(s["evaluate"](recalibrated_copy(s["model"], s["x"], plan, s["ignore"], s["calib"])))


class PlanPool:
    """``PruningFitness``'s pool: ``pool(plans)`` yields ``(index, metrics)``; ``close()`` stops the workers."""

    def __init__(self, cfg: Any, workers: int, backend: str = "process", threads: Optional[int] = None):
        self.workers = WorkerPool(_init, (cfg, per_worker_threads(threads or torch.get_num_threads(), workers)),
                                  workers, backend, address=getattr(cfg, "ray_address", None))

    def __call__(self, plans: List[Plan]) -> Iterator[Tuple[int, Dict[str, float]]]:
        return self.workers.run(_task, [(p,) for p in plans])

    def close(self) -> None:
        self.workers.close()
