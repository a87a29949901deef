"""Independent pipeline stages side by side, in worker processes.

The pipeline's stages form a small graph: the test phase's teacher does not need the search, and
the budgets' retrainings do not need each other. On a machine with a few cores, running them in
``workers`` processes of ``cores / workers`` threads each is faster than one process using every
core, because sparse propagation and the small per-batch kernels scale poorly with threads.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import torch

from ciess_core.errors import ConfigError

Result = TypeVar("Result")


def _start_worker(threads: int, level: int) -> None:
    """Each worker: its share of the threads, and the parent's log level on stderr."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s [worker]: %(message)s")


class StageRunner:
    """Runs stage functions in ``workers`` spawned processes, or in this one when ``workers`` is 1.

    With one worker, :meth:`submit` runs the function at once and returns a finished future, so a
    caller has one code path for both. Functions and arguments must be picklable (module-level
    functions, frozen specs, arrays, paths). Use as a context manager: leaving it waits for the
    workers and, after an error, cancels what has not started.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.threads = max(1, torch.get_num_threads() // workers)
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.threads, logging.getLogger().getEffectiveLevel()),
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
