"""The worker in-process: a job process that fails records why and promotes nothing."""

from __future__ import annotations

from pathlib import Path

from service.jobs.store import JobState, JobStore
from service.jobs.worker import run_worker
from service.model_holder import read_pointer
from service.settings import Settings
from tests.service.conftest import DATASET_FILE


def test_a_failing_job_records_why_and_promotes_nothing(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "no-datasets").mkdir()
    broken = settings.replace(data_dir=tmp_path / "no-datasets")
    store = JobStore(broken.job_db_path)
    job = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
    assert run_worker(broken, once=True) == 1
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED
    assert DATASET_FILE in failed.message
    assert not broken.current_pointer.exists()
    assert read_pointer(broken) == settings.artifact_dir


def test_a_successful_job_is_promoted(settings: Settings) -> None:
    store = JobStore(settings.job_db_path)
    job = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
    assert run_worker(settings, once=True) == 1
    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED, done.message
    assert done.artifact is not None
    assert read_pointer(settings) == settings.artifacts_dir.resolve() / str(done.version)
