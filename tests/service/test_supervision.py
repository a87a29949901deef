"""Worker supervision: a killed worker's job fails at once, a new worker comes up and runs the
next job; the API sees it in /readyz and /metrics; restarts back off."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import cli
from service.cli import WorkerSupervisor
from service.jobs.store import JobState, JobStore, worker_fresh_seconds
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import (
    REPOSITORY,
    TINY_RECIPE,
    wait_for,
    worker_environment,
    worker_process,
)

# The first job's training runs until the test kills its worker.
LONG_RECIPE = """
max_batches = 1000000
batch_size = 256
eval_every = 0
"""
WORKER = [sys.executable, "-m", "service.jobs.worker"]


@pytest.fixture
def supervisor(settings: Settings) -> Iterator[WorkerSupervisor]:
    running = WorkerSupervisor(WORKER, worker_environment(settings), settings, cwd=REPOSITORY)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _live_pids(store: JobStore, settings: Settings) -> set[int]:
    return {row.pid for row in store.live_workers(worker_fresh_seconds(settings.poll_seconds))}


@pytest.mark.slow
def test_a_killed_worker_fails_its_job_at_once_and_a_new_one_runs_the_next(
    settings: Settings, supervisor: WorkerSupervisor
) -> None:
    assert settings.recipe_file is not None
    settings.recipe_file.write_text(LONG_RECIPE)  # read by the job process when it starts
    store = JobStore(settings.job_db_path)
    first = supervisor.pid
    assert first is not None
    wait_for(lambda: first in _live_pids(store, settings), timeout=60, what="the first worker")
    job = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
    wait_for(lambda: store.get(job.id).state is JobState.RUNNING, timeout=30, what="the claim")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["jobs"] == {"can_run": True, "workers": 1}
        assert "ciess_job_workers 1.0" in client.get("/metrics").text

        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: store.get(job.id).state is JobState.FAILED, timeout=5, every=0.05)
        assert time.monotonic() - killed < 5
        assert "worker died (process gone)" in store.get(job.id).message
        # The restart waits a second: nobody runs jobs meanwhile, and the API says so.
        assert client.get("/readyz").json()["jobs"] == {"can_run": False, "workers": 0}
        assert "ciess_job_workers 0.0" in client.get("/metrics").text

        def replaced() -> bool:
            return bool(_live_pids(store, settings) - {first})

        wait_for(replaced, timeout=10, every=0.05, what="a new worker")
        assert time.monotonic() - killed < 10
        assert supervisor.restarts == 1 and supervisor.pid != first
        assert client.get("/readyz").json()["jobs"]["can_run"] is True

    settings.recipe_file.write_text(TINY_RECIPE)
    following = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
    wait_for(lambda: store.get(following.id).state.finished, timeout=180, what="the next job")
    assert store.get(following.id).state is JobState.SUCCEEDED, store.get(following.id).message


def test_the_api_fails_the_job_of_a_dead_worker_without_waiting_for_its_heartbeat(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.recipe_file is not None
    settings.recipe_file.write_text(LONG_RECIPE)
    store = JobStore(settings.job_db_path)
    with TestClient(create_app(settings)), worker_process(settings) as worker:
        job = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
        wait_for(lambda: store.get(job.id).state is JobState.RUNNING, timeout=60)
        os.kill(worker.pid, signal.SIGKILL)  # no supervisor: the API's sweep must see it
        killed = time.monotonic()
        wait_for(lambda: store.get(job.id).state is JobState.FAILED, timeout=5, every=0.05)
        assert time.monotonic() - killed < 5 < settings.stale_after_seconds


def test_restarts_back_off_doubling_to_the_cap(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "FIRST_RESTART_DELAY_SECONDS", 0.1)
    monkeypatch.setattr(cli, "MAX_RESTART_DELAY_SECONDS", 0.4)
    spawned: list[float] = []
    original = WorkerSupervisor._spawn

    def recording(self: WorkerSupervisor) -> None:
        spawned.append(time.monotonic())
        original(self)

    monkeypatch.setattr(WorkerSupervisor, "_spawn", recording)
    crashing = WorkerSupervisor(
        [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), settings
    )
    crashing.start()
    try:
        wait_for(lambda: len(spawned) >= 5, timeout=30, every=0.05, what="four restarts")
    finally:
        crashing.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(spawned)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.4), strict=False):
        assert gap >= delay
    assert crashing.restarts >= 4


def test_stop_ends_the_worker_and_the_supervision(settings: Settings) -> None:
    sleeper = WorkerSupervisor(
        [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), settings
    )
    sleeper.start()
    pid = sleeper.pid
    assert pid is not None
    sleeper.stop(timeout=10)
    time.sleep(0.5)  # a supervisor still running would have started another by now
    assert sleeper.pid == pid and sleeper.restarts == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
