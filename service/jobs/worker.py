"""The worker: claims queued jobs from the store and runs each in a child process.

The child (a fresh ``spawn`` interpreter: torch stays out of the worker itself) runs
:func:`service.jobs.runner.run_budget_job`, reporting stage and progress to the store. Meanwhile the
worker writes the job's heartbeat and watches for a cancellation, which it carries out by
terminating the child. When the child succeeds the worker points ``current.json`` at the new
artifact (the API notices and swaps it in) and marks the job succeeded; when it fails, is
cancelled or dies, the pointer is untouched and the old model keeps serving.

At start-up, and on every idle poll, running jobs whose worker is gone (dead pid on this host, or
no heartbeat for ``stale_after_seconds``) are marked failed: a crash never leaves a job "running".
The worker registers itself in the store and writes its own heartbeat every poll (the API's
``/readyz`` and ``ciess_job_workers`` tell from it whether jobs can run). After promoting a job's
artifact it applies the retention rule (:func:`service.versions.apply_retention`).

``ciess serve`` restarts a worker that died (:class:`service.cli.WorkerSupervisor`).

Run it with ``ciess worker`` or ``python -m service.jobs.worker``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ciess_core.artifact.reader import read_manifest
from ciess_core.errors import CiessError
from service.jobs.fast_path import FAST_PATH_JOBS, run_fast_path_job
from service.jobs.store import Job, JobState, JobStore, pid_alive, worker_name
from service.settings import Settings, load_settings
from service.versions import apply_retention, promote

logger = logging.getLogger(__name__)

_TERMINATE_GRACE_SECONDS = 5.0


def _watch_parent(settings: Settings, store: JobStore, job_id: int, parent: int) -> None:
    """Exit the job process when its worker is gone or the job is no longer running (failed by
    another worker's stale sweep): an orphaned job must not keep computing or write results."""
    while True:
        time.sleep(settings.poll_seconds)
        if os.getppid() != parent:
            logger.error("job %d: its worker died; stopping", job_id)
            os._exit(3)
        try:
            state = store.get(job_id).state
        except Exception:  # a busy or vanished store: check again next time
            continue
        if state is not JobState.RUNNING:
            logger.error("job %d is %s; stopping", job_id, state.value)
            os._exit(3)


def _job_main(settings: Settings, job_id: int) -> None:
    """Entry point of the job's child process."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [job]: %(message)s"
    )
    store = JobStore(settings.job_db_path)
    threading.Thread(
        target=_watch_parent,
        args=(settings, store, job_id, os.getppid()),
        name="watch-parent",
        daemon=True,
    ).start()
    try:
        job = store.get(job_id)
        if job.kind in FAST_PATH_JOBS:  # numpy only: starts and ends in seconds
            run_fast_path_job(settings, store, job)
        else:
            from service.jobs.runner import run_budget_job

            run_budget_job(settings, store, job)
    except CiessError as error:
        logger.error("job %d failed: %s", job_id, error)
        store.finish(job_id, JobState.FAILED, str(error))
        sys.exit(1)
    except Exception as error:  # a bug, or lost machinery (a Ray worker that died)
        logger.exception("job %d failed", job_id)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        store.finish(
            job_id,
            JobState.FAILED,
            f"{type(error).__name__}: {first_line} (during stage {store.get(job_id).stage!r}; "
            "not retried; the previous model keeps serving)",
        )
        sys.exit(1)


def _stop_child(process: multiprocessing.process.BaseProcess) -> None:
    process.terminate()
    process.join(_TERMINATE_GRACE_SECONDS)
    if process.is_alive():
        process.kill()
        process.join()


def _discard_artifact(settings: Settings, job: Job) -> None:
    """Remove the artifact of a job that will not be served (cancelled after exporting)."""
    artifact = job.artifact and Path(job.artifact)
    if artifact and artifact.is_dir() and artifact.parent == settings.artifacts_dir:
        shutil.rmtree(artifact, ignore_errors=True)


def execute(settings: Settings, store: JobStore, job: Job, stop: threading.Event) -> JobState:
    """Run ``job`` in a child process to its final state; returns that state."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_job_main, args=(settings, job.id), name=f"ciess-job-{job.id}")
    process.start()
    logger.info("job %d (%s) started in process %s", job.id, job.kind, process.pid)
    while True:
        process.join(settings.poll_seconds)
        if not process.is_alive():
            break
        if store.heartbeat(job.id):
            _stop_child(process)
            current = store.get(job.id)
            store.finish(
                job.id,
                JobState.CANCELLED,
                f"{_cancelled_by(current)} during stage {current.stage!r}; the previous model "
                "keeps serving",
                stage="cancelled",
            )
            _discard_artifact(settings, store.get(job.id))
            logger.info("job %d cancelled", job.id)
            return JobState.CANCELLED
        if stop.is_set():
            _stop_child(process)
            store.finish(
                job.id, JobState.FAILED, "the worker was stopped while the job ran; submit it again"
            )
            _discard_artifact(settings, store.get(job.id))
            return JobState.FAILED
    current = store.get(job.id)
    if current.state is not JobState.RUNNING:
        _discard_artifact(settings, current)
        return current.state  # the child recorded its own failure
    if process.exitcode != 0 or not current.artifact:
        _discard_artifact(settings, current)
        why = (
            f"killed by signal {-process.exitcode}"
            if process.exitcode is not None and process.exitcode < 0
            else f"exited with code {process.exitcode}"
        )
        store.finish(
            job.id,
            JobState.FAILED,
            f"the job process {why} during stage {current.stage!r}; the previous model keeps "
            "serving",
        )
        return JobState.FAILED
    # Unless a cancel came first: from here on a cancel answers 409 instead of being accepted
    # and then ignored.
    if not store.start_promotion(job.id):
        cancelled = store.get(job.id)
        store.finish(job.id, JobState.CANCELLED, f"{_cancelled_by(cancelled)} after exporting")
        _discard_artifact(settings, current)
        return JobState.CANCELLED
    if (kept := _better_served(store, current)) is not None:
        store.finish(job.id, JobState.SUCCEEDED, kept, stage="done")
        logger.info("job %d: %s", job.id, kept)
        return JobState.SUCCEEDED
    promote(settings, store, Path(current.artifact), job.id)
    store.finish(job.id, JobState.SUCCEEDED, f"promoted {current.version}", stage="done")
    logger.info("job %d succeeded: %s is the current model", job.id, current.version)
    try:
        apply_retention(settings, store)
    except OSError:  # disk trouble must not fail a promoted job; the next one tries again
        logger.exception("retention could not remove old versions")
    return JobState.SUCCEEDED


def _cancelled_by(job: Job) -> str:
    """Who cancelled ``job``: an admin, or the newer request that superseded it."""
    return job.cancel_reason or "cancelled by an admin"


def _better_served(store: JobStore, job: Job) -> str | None:
    """Why ``job``'s artifact is not promoted: its budget's fast path serves a model that
    validates at least as well (``replace_if_better``: the fast job and its validation). None:
    promote it (no fast path, or the fast path did not serve)."""
    fast = job.params.get("replace_if_better")
    if not fast or store.get(int(fast["job_id"])).state is not JobState.SUCCEEDED:
        return None
    try:
        valid = read_manifest(Path(str(job.artifact))).metrics.get("valid") or {}
    except CiessError:
        return None
    ours = valid.get(fast["metric"])
    if ours is not None and float(ours) > float(fast["valid"]):
        return None
    return (
        f"not promoted: validates {fast['metric']} {ours}, the fast path's model of job "
        f"{fast['job_id']} {fast['valid']}; that one keeps serving"
    )


def _stop_with_parent(parent_pid: int, stop: threading.Event, settings: Settings) -> None:
    while not stop.wait(settings.poll_seconds):
        if os.getppid() != parent_pid:
            logger.warning("worker: its parent %d is gone; stopping", parent_pid)
            stop.set()


def _beat(store: JobStore, name: str, pid: int, stop: threading.Event, every: float) -> None:
    """The worker's own heartbeat, busy or idle, until ``stop``."""
    while True:
        try:
            store.worker_heartbeat(name, pid)
        except Exception:  # a busy store: the next beat will do
            logger.warning("worker heartbeat not written", exc_info=True)
        if stop.wait(every):
            return


def _clean_staging(settings: Settings) -> None:
    """Remove half-written exports left by a crash (hidden ``.<name>.*`` folders)."""
    if settings.artifacts_dir.is_dir():
        for path in settings.artifacts_dir.glob(".*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def run_worker(
    settings: Settings,
    stop: threading.Event | None = None,
    once: bool = False,
    parent_pid: int | None = None,
) -> int:
    """Claim and run jobs until ``stop`` is set (or, with ``once``, until the queue is empty).

    With ``parent_pid`` (``ciess serve`` passes its own), the worker also stops when that process
    is gone. Returns the number of jobs run.
    """
    stop = stop or threading.Event()
    if parent_pid is not None:
        threading.Thread(
            target=_stop_with_parent, args=(parent_pid, stop, settings), daemon=True
        ).start()
    store = JobStore(settings.job_db_path)
    name, pid = worker_name(), os.getpid()
    failed = store.fail_stale(settings.stale_after_seconds, alive=pid_alive)
    if failed:
        logger.warning("marked jobs %s failed: their worker died", failed)
    store.forget_dead_workers()
    _clean_staging(settings)
    beating = threading.Event()
    beat = threading.Thread(
        target=_beat,
        args=(store, name, pid, beating, settings.poll_seconds),
        name="worker-heartbeat",
        daemon=True,
    )
    beat.start()
    logger.info("worker %s polling %s", name, settings.job_db_path)
    ran = 0
    try:
        while not stop.is_set():
            job = store.claim(name, pid, first=FAST_PATH_JOBS)  # seconds: before the rest
            if job is None:
                if once:
                    break
                store.fail_stale(settings.stale_after_seconds, alive=pid_alive)
                stop.wait(settings.poll_seconds)
                continue
            ran += 1
            try:
                execute(settings, store, job, stop)
            except Exception:
                logger.exception("job %d could not be run", job.id)
                store.finish(
                    job.id, JobState.FAILED, "the worker could not run the job; see its log"
                )
    finally:
        beating.set()
        beat.join(timeout=store.timeout)
        store.remove_worker(name)
    return ran


def main(settings: Settings | None = None, parent_pid: int | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT (the ``ciess worker`` command)."""
    settings = settings or load_settings()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("worker stopping (signal %d)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    run_worker(settings, stop, parent_pid=parent_pid)
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(description="ciess job worker (settings: CIESS_*)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    sys.exit(main(parent_pid=parser.parse_args().parent_pid))
