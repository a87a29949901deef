"""The pipeline's executors: the same models in this process, in worker processes and as Ray
tasks on a local cluster the runner starts (skipped where Ray is not installed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciess_core.data import DatasetSplit
from ciess_core.errors import ConfigError
from ciess_core.runs import Protocol
from ciess_core.search.parallel import StageRunner, connect_with_retries, stage_runner
from service.jobs.store import pid_alive
from tests.ray_units import unit_processes, wait_for
from tests.test_search_pipeline import check_two_workers_give_the_same_models_as_one


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster of two CPUs for this module's Ray tests (its start is slow)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ciess[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _square(value: int) -> int:
    return value * value


def _fail(message: str) -> None:
    raise ConfigError(message)


def test_local_runs_every_unit_here_and_an_unknown_executor_is_refused() -> None:
    with stage_runner("local", 4) as runner:
        assert isinstance(runner, StageRunner) and not runner.parallel
        assert runner.submit(_square, 7).result() == 49
    with pytest.raises(ConfigError, match="unknown executor 'spark'"):
        stage_runner("spark", 2)


def test_the_ray_executor_gives_the_models_of_one_process(
    clustered_split: DatasetSplit, tmp_path: Path, one_thread: None, ray_cluster: None
) -> None:
    """The same sizes, metrics and deployment models (so the same artifact) as one process."""
    check_two_workers_give_the_same_models_as_one(
        clustered_split, tmp_path, Protocol.CLEAN, "ray", fingerprint="f"
    )


def test_a_failing_ray_task_raises_its_error_here(one_thread: None, ray_cluster: None) -> None:
    with stage_runner("ray", 1) as runner:
        assert runner.submit(_square, 9).result() == 81
        with pytest.raises(ConfigError, match="the unit's own message"):
            runner.submit(_fail, "the unit's own message").result()


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_unit_whose_ray_worker_dies_fails_with_rays_reason_and_is_not_retried(
    one_thread: None, ray_cluster: None
) -> None:
    import ray

    with stage_runner("ray", 1) as runner:
        future = runner.submit(_sleep, 120.0)
        (pid,) = wait_for(unit_processes, 60)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ray.exceptions.WorkerCrashedError):
            future.result(timeout=60)
        time.sleep(1.0)
        assert unit_processes() == []  # not started again


def test_joining_a_starting_cluster_is_tried_again_after_each_wait() -> None:
    """A Ray cluster that has just started can refuse a client ("Starting Ray client server
    failed", a ConnectionError): the runner resets and tries again after each wait; the last
    attempt's error is the one reported, and other errors are not retried."""
    calls: list[str] = []

    def failing(times: int, error: Exception) -> None:
        calls.append("connect")
        if calls.count("connect") <= times:
            raise error

    connect_with_retries(
        lambda: failing(2, ConnectionAbortedError("initialization failure")),
        lambda: calls.append("reset"),
        (0.0, 0.0, 0.0),
    )
    assert calls == ["connect", "reset", "connect", "reset", "connect"]
    calls.clear()
    with pytest.raises(ConnectionAbortedError):
        connect_with_retries(
            lambda: failing(9, ConnectionAbortedError("still starting")),
            lambda: calls.append("reset"),
            (0.0, 0.0),
        )
    assert calls.count("connect") == 3
    calls.clear()
    with pytest.raises(ValueError):
        connect_with_retries(lambda: failing(1, ValueError("bad address")), lambda: None, (0.0,))
    assert calls == ["connect"]


_KILLED_PARENT = """
import os, sys, time
from ciess_core.search.parallel import StageRunner
runner = StageRunner(2)
pids = {runner.submit(os.getpid).result() for _ in range(8)}
for _ in range(2):
    runner.submit(time.sleep, 600.0)
print(" ".join(map(str, sorted(pids))), flush=True)
time.sleep(600.0)
"""


def test_worker_processes_exit_when_their_parent_is_killed() -> None:
    """A pipeline killed with SIGKILL (or by the OOM killer) leaves no worker training on."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(pid_alive(pid) for pid in workers)  # each sleeping in its unit
        parent.kill()
        parent.wait()
        wait_for(lambda: not any(pid_alive(pid) for pid in workers), timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
