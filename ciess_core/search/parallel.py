"""Independent pipeline stages side by side: in this process, in worker processes, or on Ray.

The pipeline's stages form a small graph: the test phase's teacher does not need the search, and
the budgets' retrainings do not need each other. On a machine with a few cores, running them in
``workers`` processes of ``cores / workers`` threads each is faster than one process using every
core, because sparse propagation and the small per-batch kernels scale poorly with threads.

One interface, :class:`StageRunner` (``submit`` a module-level function, get a
:class:`~concurrent.futures.Future`), and three executors (:func:`stage_runner`): ``local``
(every unit at once in this process), ``processes`` (spawned local processes) and ``ray`` (Ray
tasks on a local or remote cluster, :class:`RayRunner`). Every unit computes with the same
number of threads whichever executor runs it, so the results are the same floats.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import torch

from ciess_core.errors import ConfigError
from ciess_core.executors import EXECUTORS

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


def _start_worker(threads: int, level: int) -> None:
    """Each worker: its share of the threads, and the parent's log level on stderr."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s [worker]: %(message)s")


PARENT_CHECK_SECONDS = 1.0


def _exit_without(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    logger.error("worker %d: its parent %d is gone; exiting", os.getpid(), parent)
    os._exit(1)


def _start_pool_worker(threads: int, level: int, parent: int) -> None:
    """A worker process of :class:`StageRunner`: :func:`_start_worker`, and an exit when the
    process that started it dies (killed, say), so that no unit trains on for nobody."""
    _start_worker(threads, level)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _threads_per_worker(workers: int) -> int:
    """This process's threads shared among ``workers`` units (at least one each)."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    return max(1, torch.get_num_threads() // workers)


class StageRunner:
    """Runs stage functions in ``workers`` spawned processes, or in this one when ``workers`` is 1.

    With one worker, :meth:`submit` runs the function at once and returns a finished future, so a
    caller has one code path for both. Functions and arguments must be picklable (module-level
    functions, frozen specs, arrays, paths). Use as a context manager: leaving it waits for the
    workers and, after an error, cancels what has not started. A worker exits by itself within
    :data:`PARENT_CHECK_SECONDS` of this process's death.
    """

    def __init__(self, workers: int) -> None:
        self.threads = _threads_per_worker(workers)
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_pool_worker,
                initargs=(self.threads, logging.getLogger().getEffectiveLevel(), os.getpid()),
            )

    @property
    def parallel(self) -> bool:
        return self._executor is not None

    def submit(self, function: Callable[..., Result], *arguments: Any) -> Future[Result]:
        if self._executor is not None:
            return self._executor.submit(function, *arguments)
        future: Future[Result] = Future()
        try:
            future.set_result(function(*arguments))
        except Exception as error:  # handed to the caller by future.result(), as a worker's
            future.set_exception(error)
        return future

    @contextmanager
    def sharing_cores(self) -> Iterator[None]:
        """With workers, this process keeps only its share of the threads, as each worker has,
        so that a stage computes the same floats wherever it runs."""
        before = torch.get_num_threads()
        if self.parallel:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=error is not None)


def _ray_unit(threads: int, level: int, function: Callable[..., Result], *arguments: Any) -> Result:
    """A unit as a Ray task runs it: with its share of the threads, as a worker process has."""
    _start_worker(threads, level)
    return function(*arguments)


CONNECT_WAITS_SECONDS = (5.0, 10.0, 20.0)
"""Waits between the attempts to join a running Ray cluster: its client server, just started,
can fail a client's initialisation ("Starting Ray client server failed")."""


def connect_with_retries(
    connect: Callable[[], Any], reset: Callable[[], Any], waits: tuple[float, ...]
) -> None:
    """``connect()``, again after each of ``waits`` while it raises ConnectionError (``reset()``
    between attempts); the last attempt's error propagates."""
    for wait in waits:
        try:
            connect()
            return
        except ConnectionError as error:
            logger.warning("joining the Ray cluster failed (%s); again in %.0f s", error, wait)
            reset()
            time.sleep(wait)
    connect()


class RayRunner(StageRunner):
    """Runs stage functions as Ray tasks of ``threads`` CPUs each (the same share of the
    threads as a worker process, at most a node's CPUs), at most ``workers`` at a time on a
    cluster this runner starts.

    ``address``: an existing cluster (``ray://host:10001`` or ``host:6379``); by default the
    ``RAY_ADDRESS`` environment variable, else a local cluster of ``workers × threads`` CPUs
    started here and stopped on leaving. On a remote cluster every node must see the pipeline
    folder at the same path (shared storage): the units read and write their stages there.
    Leaving after an error cancels the tasks still running.
    """

    def __init__(self, workers: int, address: str | None = None) -> None:
        self.threads = _threads_per_worker(workers)
        check_executor("ray")
        try:
            import ray
        except ImportError as error:  # installed, but it does not import (a dependency clash)
            raise ConfigError(f"the ray executor needs Ray; it fails to import: {error}") from None

        self._ray = ray
        self.workers = workers
        self._executor = None
        address = address or os.environ.get("RAY_ADDRESS") or None
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            connect = functools.partial(
                ray.init,  # "local": a cluster of its own, never one found running on this machine
                address=address or "local",
                num_cpus=None if address else workers * self.threads,
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
            if address:  # a cluster that is still starting refuses its first clients
                connect_with_retries(connect, ray.shutdown, CONNECT_WAITS_SECONDS)
            else:
                connect()
        largest = max(
            (node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]),
            default=0.0,
        )
        self.threads = max(1, min(self.threads, int(largest)))  # a task must fit on a node
        self._task = ray.remote(num_cpus=self.threads, max_retries=0)(_ray_unit)
        self._level = logging.getLogger().getEffectiveLevel()
        self._shared: dict[int, tuple[Any, Any]] = {}
        self._submitted: list[Any] = []

    @property
    def parallel(self) -> bool:
        return True

    def _by_reference(self, value: Any) -> Any:
        """Large arguments (anything not a number, string or path) go to Ray's object store once
        and are passed by reference, not serialised for every task."""
        if value is None or isinstance(value, (bool, int, float, str, os.PathLike)):
            return value
        key = id(value)
        if key not in self._shared:
            self._shared[key] = (value, self._ray.put(value))  # keeps ``value`` (and its id)
        return self._shared[key][1]

    def submit(self, function: Callable[..., Result], *arguments: Any) -> Future[Result]:
        shared = [self._by_reference(argument) for argument in arguments]
        reference = self._task.remote(self.threads, self._level, function, *shared)
        self._submitted.append(reference)
        future: Future[Result] = reference.future()
        return future

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        ray = self._ray
        if error is not None:
            for reference in self._submitted:
                ray.cancel(reference, force=True)
        self._shared.clear()
        if self._owns_cluster:
            ray.shutdown()


def check_executor(executor: str) -> None:
    """Refuse an executor that is not one of :data:`~ciess_core.executors.EXECUTORS` or whose
    package is not installed (a ConfigError that says how to install it)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("the ray executor needs Ray: pip install 'ciess[ray]'")


def stage_runner(executor: str, workers: int, address: str | None = None) -> StageRunner:
    """The runner of ``executor`` (:data:`EXECUTORS`) with ``workers`` units at a time: ``local``
    runs every unit in this process (``workers`` ignored); ``processes`` in that many spawned
    processes (this one when 1); ``ray`` as Ray tasks (:class:`RayRunner`, ``address`` its
    cluster)."""
    if executor == "local":
        return StageRunner(1)
    if executor == "processes":
        return StageRunner(workers)
    if executor == "ray":
        return RayRunner(workers, address)
    raise ConfigError(f"unknown executor {executor!r}; expected one of {list(EXECUTORS)}")
