"""Budget jobs on a Ray cluster (``RAY_ADDRESS``): a cancelled job stops its Ray work, a Ray
worker lost mid-job fails the job with Ray's reason, and in both cases the old model keeps
serving. One cluster of its own (``ray start``) for the module, stopped with ``ray stop``, which
ends every Ray process of the machine; skipped where Ray is not installed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.jobs.store import Job, JobState, JobStore
from service.jobs.worker import run_worker
from service.model_holder import read_pointer
from service.settings import Settings
from tests.ray_units import unit_processes, wait_for

# Units long enough (seconds each on the test data) to be caught running on the cluster.
SLOW_RECIPE = """
episodes = 1
iterations = 2
supernet_batches = 5
max_batches = 4000
batch_size = 256
eval_every = 0
"""


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A head node of two CPUs on a free loopback port; its address."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'ciess[ray]'")
    ray_command = Path(sys.executable).parent / "ray"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    start = [str(ray_command), "start", "--head", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    no_token = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a test's own loopback cluster
    subprocess.run(start, check=True, capture_output=True, timeout=120, env=no_token)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_command), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture
def ray_settings(
    settings: Settings, ray_address: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """The service's test settings with slow units, the job worker pointed at the cluster."""
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    recipe = tmp_path / "slow-recipe.toml"
    recipe.write_text(SLOW_RECIPE)
    return settings.replace(recipe_file=recipe)


@contextmanager
def _job_with_a_unit_running(settings: Settings) -> Iterator[tuple[JobStore, Job, list[int]]]:
    """A search job submitted and the job worker started in a thread; yields once a unit of the
    job's pipeline runs on the cluster (the store, the job, the units' pids); stops the worker
    after."""
    store = JobStore(settings.job_db_path)
    job = store.submit("budget", {"target_sparsity": 0.7, "method": "search"})
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(settings, stop), daemon=True)
    worker.start()
    try:
        pids = wait_for(unit_processes, 180, every=0.05)
        assert store.get(job.id).state is JobState.RUNNING
        yield store, job, pids
    finally:
        stop.set()
        worker.join(timeout=60)


def _finished(store: JobStore, job: Job) -> Job | None:
    current = store.get(job.id)
    return current if current.state.finished else None


def test_a_driver_stopped_by_sigterm_takes_its_units_with_it(ray_address: str) -> None:
    """A budget job's process is the Ray driver of its pipeline: when the job worker stops it
    (SIGTERM), its units on the cluster stop too."""
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER],
        env={**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        wait_for(unit_processes, 90)
    finally:
        driver.terminate()
        driver.wait(timeout=30)
    wait_for(lambda: unit_processes() == [], 30)


_DRIVER = """
import time
from ciess_core.search.parallel import stage_runner
with stage_runner("ray", 1) as runner:
    runner.submit(time.sleep, 300.0).result()
"""


def test_a_cancelled_ray_job_stops_its_tasks_and_the_old_model_serves(
    ray_settings: Settings,
) -> None:
    with _job_with_a_unit_running(ray_settings) as (store, job, _):
        store.cancel(job.id)
        done = wait_for(lambda: _finished(store, job), 60)
        assert done.state is JobState.CANCELLED, done.message
        wait_for(lambda: unit_processes() == [], 30)
    assert read_pointer(ray_settings) == ray_settings.artifact_dir


def test_a_ray_worker_lost_mid_job_fails_the_job_with_rays_reason(ray_settings: Settings) -> None:
    with _job_with_a_unit_running(ray_settings) as (store, job, pids):
        os.kill(pids[0], signal.SIGKILL)
        done = wait_for(lambda: _finished(store, job), 120)
    assert done.state is JobState.FAILED
    assert "WorkerCrashedError" in done.message, done.message
    assert "the previous model keeps serving" in done.message
    assert unit_processes() == []  # not retried
    assert read_pointer(ray_settings) == ray_settings.artifact_dir
