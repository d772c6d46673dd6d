"""N workers that each build their state once, then run tasks: local processes or Ray actors (``--pool``).

``WorkerPool(init, init_args, workers, backend)`` starts ``workers`` processes (spawned, not forked: a forked torch
can hang on its thread pools) or Ray actors; each calls ``init(*init_args)`` once (building its model replica and
evaluation data into a module global), then runs ``fn(*args)`` for the tasks ``run(fn, tasks)`` hands it, yielding
``(task index, result)`` as tasks finish. The sensitivity sweep (one task per group) and the search (one task per
candidate of a population) both run on it.

A worker that dies (killed, out of memory) loses nothing: on the process backend the broken pool is rebuilt and
every task whose result had not come back is submitted again; on Ray the actor is restarted and its task retried.
Each result is yielded once. After ``retries`` restarts the run stops with one line naming the task.
``COMPRESSION_TOOL_KILL_TASK=<task index>:<marker file>`` (tests only) makes the worker running that task kill
itself with SIGKILL, once: the marker file is created first, so the retry runs normally.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from compression_tool.io.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("process", "ray")
KILL_HOOK = "COMPRESSION_TOOL_KILL_TASK"
DEFAULT_RETRIES = 3


def per_worker_threads(threads: int, workers: int) -> int:
    """``--threads`` split among the workers (at least 1 each)."""
    return max(1, threads // workers)


def check_pool_args(workers: int, backend: str) -> None:
    if workers < 1:
        raise UserError(f"--workers {workers}: expected a positive whole number")
    if backend not in BACKENDS:
        raise UserError(f"--pool {backend}: expected {' or '.join(BACKENDS)}")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc mallopt parameters


def keep_freed_memory(mmap_bytes: int = 256 << 20) -> bool:
    """Let glibc keep freed tensor memory for reuse instead of returning it to the OS at every free. Its mmap
    threshold starts at 128 KiB and only grows after large freed blocks; a worker that starts from decoded data (no
    image decoding to grow it) gave every activation tensor fresh pages: 10x the page faults, 13 s of system time
    in a 30 s two-worker ResNet-20 sweep. No-op where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        2 * mmap_bytes))
    except (OSError, AttributeError):
        return False


def _init_worker(init: Callable[..., None], *init_args: Any) -> None:
    keep_freed_memory()
    init(*init_args)


def _maybe_die(i: int) -> None:
    """The test hook: SIGKILL this worker while it runs task ``i``, once (see the module docstring)."""
    spec = os.environ.get(KILL_HOOK)
    if not spec:
        return
    index, _, marker = spec.partition(":")
    if index.strip() == str(i) and marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _call(fn: Callable[..., Any], i: int, args: Sequence[Any]) -> Tuple[int, Any]:
    _maybe_die(i)
    return i, fn(*args)


@dataclass
class WorkerPool:
    """Workers holding the state ``init(*init_args)`` builds; ``run`` maps tasks over them (see the module doc)."""
    init: Callable[..., None]
    init_args: Tuple[Any, ...]
    workers: int
    backend: str = "process"
    retries: int = DEFAULT_RETRIES
    address: Optional[str] = None                      # Ray: the cluster to join (else RAY_ADDRESS, else local)
    restarts: int = 0                                  # how many times a dead worker was replaced (for tests, logs)
    _executor: Optional[ProcessPoolExecutor] = field(default=None, repr=False)
    _ray: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_pool_args(self.workers, self.backend)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None

    def run(self, fn: Callable[..., Any], tasks: Sequence[Sequence[Any]]) -> Iterator[Tuple[int, Any]]:
        """``(i, fn(*tasks[i]))`` for every task, in finishing order, each exactly once."""
        if not tasks:
            return iter(())
        if self.backend == "ray":
            if self._ray is None:
                self._ray = _RayActors(self.init, self.init_args, self.workers, self.retries, self.address)
            return self._ray.run(fn, tasks)
        return self._run_processes(fn, tasks)

    # ------------------------------------------------------------------ local processes

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(self.init, *self.init_args))
        return self._executor

    def _run_processes(self, fn: Callable[..., Any], tasks: Sequence[Sequence[Any]]) -> Iterator[Tuple[int, Any]]:
        todo = set(range(len(tasks)))
        while todo:
            ex = self._start()
            futures: Dict[Future, int] = {ex.submit(_call, fn, i, tasks[i]): i for i in sorted(todo)}
            pending = set(futures)
            broken = False
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in sorted(done, key=futures.__getitem__):
                        try:
                            i, result = f.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        todo.discard(i)
                        yield i, result
                    if broken:
                        break
            finally:
                for f in pending:
                    f.cancel()
            if broken:
                self._replace_broken(sorted(todo))

    def _replace_broken(self, unfinished: List[int]) -> None:
        assert self._executor is not None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        self.restarts += 1
        if self.restarts > self.retries:
            raise UserError(f"--workers: a worker process died (or failed to start) {self.restarts} times (the last "
                            f"time with task(s) {unfinished[:5]} unfinished); giving up. Out of memory? Try fewer "
                            "--workers")
        log.warning("a worker process died; restarting the pool and re-running %d unfinished task(s) (restart %d "
                    "of at most %d)", len(unfinished), self.restarts, self.retries)


class _RayWorker:
    """A Ray actor: ``init(*init_args)`` once (again after a restart), then ``call`` runs tasks."""

    def __init__(self, init: Callable[..., None], init_args: Tuple[Any, ...]):
        _init_worker(init, *init_args)

    def call(self, fn: Callable[..., Any], i: int, args: Sequence[Any]) -> Tuple[int, Any]:
        return _call(fn, i, args)


class _RayActors:
    """Ray actors (one CPU each) restarted, with their task retried, when they die; a Ray already initialised, or
    ``RAY_ADDRESS``'s cluster, is used, else a local Ray is started for the run (and stopped by ``close``)."""

    def __init__(self, init: Callable[..., None], init_args: Tuple[Any, ...], workers: int, retries: int,
                 address: Optional[str] = None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise UserError("--pool ray: Ray is not installed; pip install -e '.[dev]' (or ray), or use "
                            "--pool process") from None
        self.ray, self.started = ray, not ray.is_initialized()
        if self.started:
            address = address or os.environ.get("RAY_ADDRESS")
            try:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,  # workers inherit env
                         **({"address": address} if address else {"num_cpus": workers}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--ray_address {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})"
                                if address else f"--pool ray: cannot start a local Ray ({exc.__class__.__name__})"
                                ) from None
        actor = ray.remote(num_cpus=1, max_restarts=retries, max_task_retries=retries)(_RayWorker)
        self.pool = ActorPool([actor.remote(init, init_args) for _ in range(workers)])

    def run(self, fn: Callable[..., Any], tasks: Sequence[Sequence[Any]]) -> Iterator[Tuple[int, Any]]:
        from ray.exceptions import RayActorError

        for i, args in enumerate(tasks):
            self.pool.submit(lambda a, t: a.call.remote(fn, *t), (i, list(args)))
        while self.pool.has_next():
            try:
                yield self.pool.get_next_unordered()
            except RayActorError as exc:
                raise UserError(f"--pool ray: a worker actor died more than its retries allow ({exc.__class__.__name__}"
                                "); out of memory? Try fewer --workers") from None

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
