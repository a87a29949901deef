"""The SQLite job store: persistence, atomic claims, cancellation, stale-job recovery."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.errors import ConflictError, NotFoundError, QueueFullError
from service.jobs import health
from service.jobs.store import _SCHEMA, Job, JobDraft, JobState, JobStore, _gone, worker_name
from service.jobs.worker import pid_alive


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "state" / "jobs.sqlite3")


def test_jobs_survive_a_new_store_on_the_same_file(store: JobStore) -> None:
    job = store.submit("budget", {"target_sparsity": 0.9})
    again = JobStore(store.path).get(job.id)
    assert again == job
    assert again.state is JobState.QUEUED and again.params == {"target_sparsity": 0.9}
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_claims_take_each_job_once(store: JobStore) -> None:
    submitted = {store.submit("budget", {"n": n}).id for n in range(30)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        own = JobStore(store.path)
        while (job := own.claim(name, os.getpid())) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(submitted)
    assert store.counts()[JobState.RUNNING] == 30


def test_claim_takes_the_oldest_and_records_the_worker(store: JobStore) -> None:
    first = store.submit("budget", {})
    store.submit("budget", {})
    job = store.claim("host:1", 1)
    assert job is not None and job.id == first.id
    assert job.state is JobState.RUNNING and job.worker == "host:1" and job.started_at


def test_progress_is_clipped_and_finish_is_final(store: JobStore) -> None:
    job_id = store.submit("budget", {}).id
    store.report(job_id, "training", 1.7)  # ignored: not running yet
    assert store.get(job_id).stage == "queued"
    store.claim("w", 1)
    store.report(job_id, "training", 1.7)
    assert store.get(job_id).progress == 1.0
    store.report(job_id, "training", 0.4)
    assert store.finish(job_id, JobState.FAILED, "boom")
    assert not store.finish(job_id, JobState.SUCCEEDED, "late")
    job = store.get(job_id)
    assert job.state is JobState.FAILED and job.message == "boom" and job.progress == 0.4
    with pytest.raises(ValueError, match="not a final state"):
        store.finish(job_id, JobState.RUNNING, "")


def test_cancel_a_queued_job_now_and_a_running_one_by_flag(store: JobStore) -> None:
    queued = store.submit("budget", {}).id
    running = store.submit("budget", {}).id
    assert store.cancel(queued).state is JobState.CANCELLED  # the oldest, so claim the next
    assert store.claim("w", 1).id == running  # type: ignore[union-attr]
    flagged = store.cancel(running)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.heartbeat(running) is True
    store.finish(running, JobState.FAILED, "x")
    with pytest.raises(ConflictError, match="already failed"):
        store.cancel(running)
    with pytest.raises(NotFoundError):
        store.cancel(12345)


def test_stale_running_jobs_are_failed(store: JobStore) -> None:
    here = worker_name().split(":")[0]
    dead = store.submit("budget", {}).id
    alive = store.submit("budget", {}).id
    silent = store.submit("budget", {}).id
    store.claim(f"{here}:999999999", 999_999_999)
    store.claim(worker_name(), os.getpid())
    store.claim("elsewhere:5", 5)
    with sqlite3.connect(store.path) as connection:
        connection.execute(
            "UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time() - 3600, silent)
        )
    assert sorted(store.fail_stale(60.0, alive=pid_alive)) == [dead, silent]
    assert store.get(alive).state is JobState.RUNNING
    assert "worker died" in store.get(dead).message
    assert "no heartbeat" in store.get(silent).message


def test_list_is_newest_first_and_filters_by_state(store: JobStore) -> None:
    ids = [store.submit("budget", {}).id for _ in range(3)]
    store.cancel(ids[1])
    assert [job.id for job in store.list_jobs()] == ids[::-1]
    assert [job.id for job in store.list_jobs(JobState.CANCELLED)] == [ids[1]]
    assert store.counts()[JobState.QUEUED] == 2


def _open_store(path: Path, barrier: Any, failures: Any) -> None:
    barrier.wait()
    try:
        JobStore(path).counts()
    except sqlite3.Error as error:
        failures.put(str(error))


def test_processes_starting_together_all_open_a_new_store(tmp_path: Path) -> None:
    """uvicorn workers and the job worker start at once on a file none of them created yet."""
    context = multiprocessing.get_context("fork")
    processes_per_file = 6
    for attempt in range(8):
        path = tmp_path / f"jobs-{attempt}.db"
        barrier, failures = context.Barrier(processes_per_file), context.Queue()
        processes = [
            context.Process(target=_open_store, args=(path, barrier, failures))
            for _ in range(processes_per_file)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        assert failures.empty(), failures.get()


def test_a_key_answers_its_queued_or_running_job(store: JobStore) -> None:
    first, existing = store.enqueue("budget", {"n": 1}, key="k")
    assert not existing and first.dedupe_key == "k"
    again, existing = store.enqueue("budget", {"n": 2}, key="k")
    assert existing and again == first
    other, existing = store.enqueue("budget", {}, key="other")
    assert not existing and other.id != first.id
    assert store.enqueue("reindex", {}, key="k")[1] is False  # keys are per kind
    assert store.claim("w", 1).id == first.id  # type: ignore[union-attr]
    assert store.enqueue("budget", {}, key="k")[0].id == first.id  # running still counts
    store.finish(first.id, JobState.SUCCEEDED, "done")
    fresh, existing = store.enqueue("budget", {}, key="k")
    assert not existing and fresh.id not in (first.id, other.id)
    assert store.submit("budget", {}).dedupe_key is None


def test_the_queue_has_a_limit(store: JobStore) -> None:
    for n in range(3):
        store.enqueue("budget", {}, key=str(n), max_queued=3)
    with pytest.raises(QueueFullError, match="3 jobs are queued") as caught:
        store.enqueue("budget", {}, key="3", max_queued=3, retry_after=7)
    assert caught.value.retry_after == 7
    assert store.enqueue("budget", {}, key="1", max_queued=3)[1]  # the same one still answers
    store.claim("w", 1)
    assert not store.enqueue("budget", {}, key="3", max_queued=3)[1]
    assert store.counts()[JobState.QUEUED] == 3


def test_concurrent_identical_submissions_make_one_job(store: JobStore) -> None:
    """The check and the insert are one transaction: 100 racing threads, one job."""
    threads_count = 100
    barrier = threading.Barrier(threads_count)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def submit() -> None:
        own = JobStore(store.path)
        barrier.wait()
        job, existing = own.enqueue("budget", {"target_sparsity": 0.5}, key="b", max_queued=8)
        with lock:
            results.append((job.id, existing))

    threads = [threading.Thread(target=submit) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == threads_count
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(not existing for _, existing in results) == 1
    assert store.counts()[JobState.QUEUED] == 1


def test_a_file_of_the_first_schema_gains_the_key_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    first_schema = _SCHEMA.replace(",\n    dedupe_key TEXT", "")
    assert "dedupe_key" not in first_schema
    with sqlite3.connect(path) as connection:
        connection.executescript(first_schema)
        connection.execute(
            "INSERT INTO jobs (kind, params, state, created_at, updated_at) "
            "VALUES ('budget', '{}', 'queued', 0, 0)"
        )
    store = JobStore(path)
    assert store.get(1).dedupe_key is None
    assert store.enqueue("budget", {}, key="k")[0].dedupe_key == "k"
    assert JobStore(path).enqueue("budget", {}, key="k")[1]  # opened again: no second ALTER


def test_a_job_whose_worker_pid_is_gone_fails_at_once(store: JobStore) -> None:
    here = worker_name().split(":")[0]
    job = store.submit("budget", {}).id
    store.claim(f"{here}:999999999", 999_999_999)  # a fresh heartbeat, but no such process
    assert store.fail_stale(stale_after=3600.0) == [job]  # the pid check is the default
    assert "process gone" in store.get(job).message


def test_workers_register_beat_and_are_alive_while_their_process_is(store: JobStore) -> None:
    here = worker_name().split(":")[0]
    store.worker_heartbeat(worker_name(), os.getpid())
    store.worker_heartbeat(f"{here}:999999999", 999_999_999)  # died without unregistering
    store.worker_heartbeat("elsewhere:5", 5)  # another host: its heartbeat tells
    live = {row.name for row in store.live_workers(fresh_within=60.0)}
    assert live == {worker_name(), "elsewhere:5"}
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE workers SET heartbeat_at = ? WHERE name = 'elsewhere:5'",
                           (time.time() - 120,))  # fmt: skip
    assert {row.name for row in store.live_workers(fresh_within=60.0)} == {worker_name()}
    assert store.forget_dead_workers() == [f"{here}:999999999"]
    store.remove_worker(worker_name())
    assert store.live_workers(fresh_within=60.0) == []


def test_promotions_are_kept_newest_first(store: JobStore, tmp_path: Path) -> None:
    store.record_promotion("a", tmp_path / "a", job_id=1)
    store.record_promotion("b", tmp_path / "b")
    store.record_promotion("a", tmp_path / "a", job_id=3)
    assert [(p.version, p.job_id) for p in store.promotions()] == [("a", 3), ("b", None), ("a", 1)]
    store.forget_promotions([tmp_path / "a"])
    assert [p.version for p in store.promotions()] == ["b"]


def test_fast_kinds_are_claimed_before_older_jobs(store: JobStore) -> None:
    older = store.submit("budget", {})
    fast = store.submit("requantise", {})
    claimed = store.claim("w", 1, first=("requantise", "turn"))
    assert claimed is not None and claimed.id == fast.id
    claimed = store.claim("w", 1, first=("requantise", "turn"))
    assert claimed is not None and claimed.id == older.id


def test_a_request_supersedes_queued_and_running_jobs_of_its_kinds(store: JobStore) -> None:
    running = store.submit("budget", {})
    assert store.claim("w", 1) is not None
    queued = store.submit("requantise", {})
    other = store.submit("other", {})
    requested = store.request(
        JobDraft("budget", {"b": 2}, key="2"),
        fast=JobDraft("requantise", {"f": 2}, key="f2"),
        supersedes=("budget", "requantise"),
    )
    assert requested.job is not None and not requested.existing
    assert requested.superseded == (running.id, queued.id)
    reason = f"superseded by job {requested.job.id} (a newer budget)"
    assert store.get(queued.id).state is JobState.CANCELLED
    assert store.get(queued.id).message == reason
    flagged = store.get(running.id)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert flagged.cancel_reason == reason
    assert store.get(other.id).state is JobState.QUEUED
    assert requested.fast is not None and requested.fast.id < requested.job.id


def test_a_request_finds_its_live_job_and_then_supersedes_nothing(store: JobStore) -> None:
    def params(fast: Job | None) -> dict[str, object]:
        return {"fast": None if fast is None else fast.id}

    first = store.request(
        JobDraft("budget", params, key="b"), fast=JobDraft("requantise", {}, key="f"),
        supersedes=("budget", "requantise"),
    )  # fmt: skip
    assert first.job is not None and first.fast is not None
    assert first.job.params == {"fast": first.fast.id}
    again = store.request(
        JobDraft("budget", params, key="b"), fast=JobDraft("requantise", {}, key="f2"),
        supersedes=("budget", "requantise"), queue=False,
    )  # fmt: skip
    assert again.existing and again.job == first.job and again.superseded == ()
    assert len(store.list_jobs()) == 2


def test_a_request_without_a_job_only_supersedes(store: JobStore) -> None:
    queued = store.submit("budget", {})
    requested = store.request(JobDraft("budget", {}, key="x"), supersedes=("budget",), queue=False)
    assert requested.job is None and requested.superseded == (queued.id,)
    assert "served model" in store.get(queued.id).message


def test_a_request_that_does_not_fit_the_queue_changes_nothing(store: JobStore) -> None:
    queued = store.submit("budget", {})
    with pytest.raises(QueueFullError, match="needs 2 more"):
        store.request(
            JobDraft("budget", {}, key="x"), fast=JobDraft("requantise", {}),
            supersedes=(), max_queued=2,
        )  # fmt: skip
    assert [job.id for job in store.list_jobs()] == [queued.id]
    assert store.get(queued.id).state is JobState.QUEUED


def test_a_job_being_promoted_can_no_longer_be_cancelled(store: JobStore) -> None:
    job = store.submit("budget", {})
    assert store.claim("w", 1) is not None
    assert store.start_promotion(job.id)
    with pytest.raises(ConflictError, match="being promoted"):
        store.cancel(job.id)
    superseded = store.request(JobDraft("budget", {}, key="n"), supersedes=("budget",))
    assert superseded.superseded == ()
    assert not store.get(job.id).cancel_requested


def test_a_cancelled_job_is_not_promoted(store: JobStore) -> None:
    job = store.submit("budget", {})
    assert store.claim("w", 1) is not None
    store.cancel(job.id)
    assert not store.start_promotion(job.id)


def test_a_pid_is_checked_only_in_its_own_pid_namespace() -> None:
    """Containers of one pod share a host name, not their pids: a worker of another pid
    namespace is never judged gone by its pid."""
    here = worker_name().rsplit(":", 1)[0]
    assert "~" in here  # Linux: the namespace is part of the name
    assert _gone(f"{here}:5", 5, alive=lambda pid: False)
    other = here.split("~")[0] + "~1"
    assert not _gone(f"{other}:5", 5, alive=lambda pid: False)


def test_the_worker_health_check_reads_this_containers_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m service.jobs.health``: healthy while a worker of this host and pid namespace
    beats, whatever its pid; a stale beat, another host's or none is unhealthy."""
    monkeypatch.setenv("CIESS_STATE_DIR", str(tmp_path))
    assert health.main() == 1 and "no worker of" in capsys.readouterr().out  # no store yet
    store = JobStore(tmp_path / "jobs.sqlite3")
    host = worker_name().rsplit(":", 1)[0]
    store.worker_heartbeat(f"elsewhere{host}:7", 7)  # another host whose name ends like ours
    assert health.main() == 1
    store.worker_heartbeat(f"{host}:99999", 99999)  # a worker of this container, another pid
    assert health.main() == 0
    assert health.newest_heartbeat(store.path, host) == pytest.approx(time.time(), abs=5)
    with sqlite3.connect(store.path) as connection:
        connection.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 3600")
    assert health.main() == 1
    assert "is 3600 s old (over 60 s)" in capsys.readouterr().out
    monkeypatch.setenv("CIESS_POLL_SECONDS", "often")  # bad settings: one line, no traceback
    assert health.main() == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")
