"""The job store: one SQLite file (WAL mode) shared by the API and the worker.

Every operation opens its own short connection, so the store is safe to use from any thread or
process. State changes are single ``UPDATE … WHERE state = …`` statements, which makes them atomic:
two workers cannot claim the same job, and a job cancelled while it finishes ends in exactly one
final state. :meth:`JobStore.enqueue` and :meth:`JobStore.request` check and insert in one
``BEGIN IMMEDIATE`` transaction: requests racing with the same key create one job, the queue never
passes its limit, and a request's jobs are queued all together or not at all.

Lifecycle: ``queued`` → ``running`` (stage and progress 0..1, heartbeats) → ``succeeded`` |
``failed`` | ``cancelled``; a queued job can be cancelled directly, a running one is flagged
(``cancel_requested``, with the reason in ``cancel_reason``) and its worker stops it. A newer
request supersedes older jobs of the kinds it names (:meth:`JobStore.request`): they are cancelled
as if by an admin, with the newer job in the reason.

Beside the jobs: the workers (``host:pid``, the host naming the pid namespace too; heartbeat), so
that the API can tell whether jobs can run, and the promotions (every artifact ``current.json``
pointed at, newest last), which start-up falls back through when the pointed-to artifact does not
load (:mod:`service.versions`).
"""

from __future__ import annotations

import enum
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ConflictError, NotFoundError, QueueFullError


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# The stage of a job whose artifact is being promoted: too late to cancel it.
PROMOTING_STAGE = "promoting"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    artifact TEXT,
    version TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    worker_pid INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    dedupe_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    job_id INTEGER,
    at REAL NOT NULL
);
"""
# Columns added since the first schema: (name, type), added to an older file when it is opened.
_ADDED_COLUMNS = (("dedupe_key", "TEXT"), ("cancel_reason", "TEXT"))


@dataclass(frozen=True)
class Job:
    """One row of the store (times are UNIX seconds)."""

    id: int
    kind: str
    params: Mapping[str, Any]
    state: JobState
    stage: str
    progress: float
    message: str
    artifact: str | None
    version: str | None
    cancel_requested: bool
    worker: str | None
    worker_pid: int | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    dedupe_key: str | None = None
    cancel_reason: str | None = None


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    values["state"] = JobState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


@dataclass(frozen=True)
class WorkerRow:
    """A job worker as it registered itself: ``name`` is ``host:pid`` (times are UNIX seconds)."""

    name: str
    pid: int
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class Promotion:
    """One pointer change: ``current.json`` pointed at ``path`` from time ``at`` on."""

    id: int
    version: str
    path: str
    job_id: int | None
    at: float


@dataclass(frozen=True)
class JobDraft:
    """A job to queue: its kind, its parameters (or a function of the job queued before it in
    the same request), and the key that makes a repeated request find it."""

    kind: str
    params: Mapping[str, Any] | Callable[[Job | None], Mapping[str, Any]]
    key: str | None = None


@dataclass(frozen=True)
class Requested:
    """What :meth:`JobStore.request` did: the job (``existing``: one queued or running already),
    the fast job queued with it now (None for an existing job), and the jobs it superseded."""

    job: Job | None
    existing: bool
    fast: Job | None
    superseded: tuple[int, ...]


def worker_fresh_seconds(poll_seconds: float) -> float:
    """A worker writes its heartbeat every poll: one silent for 5 polls (at least 5 s) is not
    counted as alive (a worker on another host, whose pid cannot be checked from here)."""
    return max(5.0 * poll_seconds, 5.0)


def _pid_namespace() -> str:
    """This process's pid namespace (its inode under ``/proc``), "" where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid").rsplit("[", 1)[-1].rstrip("]")
    except OSError:
        return ""


def worker_name() -> str:
    """``host:pid`` of this process. The host part names the pid namespace too (``name~ns``):
    a pid can be checked only from the same host and namespace (containers of one pod share a
    host name, not their pids)."""
    namespace = _pid_namespace()
    host = socket.gethostname() + (f"~{namespace}" if namespace else "")
    return f"{host}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def _gone(name: str | None, pid: int | None, alive: Callable[[int], bool]) -> bool:
    """Whether the process ``name`` (``host:pid``) is known to be gone: its pid can be checked
    only on its own host."""
    host = worker_name().rsplit(":", 1)[0]
    return (name or "").rsplit(":", 1)[0] == host and pid is not None and not alive(pid)


class JobStore:
    """Jobs in the SQLite file ``path`` (created with its folder on first use)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._initialise()
                return
            except sqlite3.OperationalError as error:
                # Processes that start together (uvicorn workers, the job worker) may all find a
                # new file and switch it to WAL at once: SQLite then answers one of them "database
                # is locked" at once, without waiting out the busy timeout. Try again.
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _initialise(self) -> None:
        with self._connect() as connection:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in columns:
                    try:
                        connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError as error:
                        if "duplicate column" not in str(error):  # another process was first
                            raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose ``with`` commits (or rolls back) and then closes it."""
        with closing(sqlite3.connect(self.path, timeout=self.timeout)) as connection:
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout = 30000")
            with connection:
                yield connection

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id} does not exist")
        return _job(row)

    def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        query, arguments = "SELECT * FROM jobs", []
        if state is not None:
            query, arguments = query + " WHERE state = ?", [state.value]
        with self._connect() as connection:
            rows = connection.execute(query + " ORDER BY id DESC LIMIT ?", (*arguments, limit))
            return [_job(row) for row in rows.fetchall()]

    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state present, zero included)."""
        with self._connect() as connection:
            rows = connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(state): count for state, count in rows})
        return counts

    # -- the API's side -----------------------------------------------------------------------
    def submit(self, kind: str, params: Mapping[str, Any]) -> Job:
        """Queue a new job (no key, no limit: see :meth:`enqueue`)."""
        job, _ = self.enqueue(kind, params)
        return job

    def request(
        self,
        draft: JobDraft,
        fast: JobDraft | None = None,
        supersedes: Collection[str] = (),
        max_queued: int | None = None,
        retry_after: int = 60,
        queue: bool = True,
    ) -> Requested:
        """Queue ``draft`` (and before it ``fast``, the job that answers sooner) in one
        transaction, cancelling the queued and running jobs of the kinds in ``supersedes``.

        A queued or running job of ``draft``'s kind and key answers instead, and then nothing
        is queued or cancelled. ``draft.params`` may be a function of the fast job (None when
        there is none), for a job that must name it. Without ``queue`` nothing is queued: the
        jobs of ``supersedes`` are cancelled for what is served already (``job`` None), unless
        such a job answers.

        Raises:
            QueueFullError: the jobs would take the queue past ``max_queued`` (counted after the
                superseded ones left it); nothing is queued or cancelled.
        """
        now = time.time()
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            found = self._active_with_key(connection, draft.kind, draft.key)
            if found is not None:
                return Requested(found, True, None, ())
            superseded = self._supersede(connection, supersedes, now)
            if not queue:
                self._give_reason(connection, superseded, "superseded: the served model was "
                                  "made for the budget asked last")  # fmt: skip
                return Requested(None, False, None, superseded)
            self._check_room(connection, 1 + (fast is not None), max_queued, retry_after)
            fast_job = None if fast is None else self._insert(connection, fast, None, now)
            job = self._insert(connection, draft, fast_job, now)
            self._give_reason(
                connection, superseded, f"superseded by job {job.id} (a newer budget)"
            )
        return Requested(job, False, fast_job, superseded)

    @staticmethod
    def _give_reason(connection: sqlite3.Connection, ids: Iterable[int], reason: str) -> None:
        """Record why jobs ``ids`` were cancelled: the message of those cancelled already, the
        reason their worker gives when it stops a running one."""
        connection.executemany(
            "UPDATE jobs SET cancel_reason = ?, message = CASE WHEN state = ? THEN ? "
            "ELSE message END WHERE id = ?",
            [(reason, JobState.CANCELLED.value, reason, job_id) for job_id in ids],
        )

    @staticmethod
    def _active_with_key(connection: sqlite3.Connection, kind: str, key: str | None) -> Job | None:
        if key is None:
            return None
        row = connection.execute(
            "SELECT * FROM jobs WHERE kind = ? AND dedupe_key = ? AND state IN (?, ?) "
            "ORDER BY id LIMIT 1",
            (kind, key, JobState.QUEUED.value, JobState.RUNNING.value),
        ).fetchone()
        return None if row is None else _job(row)

    @staticmethod
    def _check_room(
        connection: sqlite3.Connection, adding: int, max_queued: int | None, retry_after: int
    ) -> None:
        if max_queued is None:
            return
        (queued,) = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
        ).fetchone()
        if queued + adding > max_queued:
            raise QueueFullError(
                f"{queued} jobs are queued already and this budget needs {adding} more, past "
                f"the {max_queued} the max_queued_jobs setting allows; try again when one has "
                "started",
                retry_after,
            )

    @staticmethod
    def _insert(
        connection: sqlite3.Connection, draft: JobDraft, fast: Job | None, now: float
    ) -> Job:
        params = draft.params(fast) if callable(draft.params) else draft.params
        row = connection.execute(
            "INSERT INTO jobs (kind, params, state, stage, created_at, updated_at, "
            "dedupe_key) VALUES (?, ?, ?, 'queued', ?, ?, ?) RETURNING *",
            (draft.kind, json.dumps(dict(params)), JobState.QUEUED.value, now, now, draft.key),
        ).fetchone()
        return _job(row)

    @staticmethod
    def _supersede(
        connection: sqlite3.Connection, kinds: Collection[str], now: float
    ) -> tuple[int, ...]:
        """Cancel the queued jobs of ``kinds`` and flag the running ones; their ids."""
        if not kinds:
            return ()
        marks = ", ".join("?" for _ in kinds)
        queued = connection.execute(
            f"UPDATE jobs SET state = ?, stage = 'cancelled', cancel_requested = 1, "
            f"updated_at = ?, finished_at = ? WHERE state = ? AND kind IN ({marks}) RETURNING id",
            (JobState.CANCELLED.value, now, now, JobState.QUEUED.value, *kinds),
        ).fetchall()
        running = connection.execute(
            f"UPDATE jobs SET cancel_requested = 1, updated_at = ? "
            f"WHERE state = ? AND stage != ? AND kind IN ({marks}) RETURNING id",
            (now, JobState.RUNNING.value, PROMOTING_STAGE, *kinds),
        ).fetchall()
        return tuple(sorted(int(row[0]) for row in (*queued, *running)))

    def enqueue(
        self,
        kind: str,
        params: Mapping[str, Any],
        key: str | None = None,
        max_queued: int | None = None,
        retry_after: int = 60,
    ) -> tuple[Job, bool]:
        """Queue a job unless one of the same ``kind`` and ``key`` is queued or running.

        Returns:
            (the job, True if it was there already).

        Raises:
            QueueFullError: ``max_queued`` jobs (of any kind) are queued already (429, with
                ``retry_after`` seconds).
        """
        now = time.time()
        with self._connect() as connection:
            # One write transaction from the first read: a second request with the same key
            # waits here, then finds the job this one inserted.
            connection.execute("BEGIN IMMEDIATE")
            found = self._active_with_key(connection, kind, key)
            if found is not None:
                return found, True
            self._check_room(connection, 1, max_queued, retry_after)
            return self._insert(connection, JobDraft(kind, params, key), None, now), False

    def cancel(self, job_id: int) -> Job:
        """Cancel a queued job now; flag a running one for its worker to stop."""
        now = time.time()
        with self._connect() as connection:
            connection.execute(
                "UPDATE jobs SET state = ?, stage = 'cancelled', message = 'cancelled before it "
                "started', cancel_requested = 1, updated_at = ?, finished_at = ? "
                "WHERE id = ? AND state = ?",
                (JobState.CANCELLED.value, now, now, job_id, JobState.QUEUED.value),
            )
            connection.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ? "
                "WHERE id = ? AND state = ? AND stage != ?",
                (now, job_id, JobState.RUNNING.value, PROMOTING_STAGE),
            )
        job = self.get(job_id)
        if job.state.finished and job.state is not JobState.CANCELLED:
            raise ConflictError(f"job {job_id} already {job.state.value}; nothing to cancel")
        if job.state is JobState.RUNNING and not job.cancel_requested:
            raise ConflictError(f"job {job_id} is being promoted; it can no longer be cancelled")
        return job

    # -- the worker's side --------------------------------------------------------------------
    def claim(self, worker: str, pid: int, first: Collection[str] = ()) -> Job | None:
        """Atomically move the oldest queued job to running for this worker, a job of the kinds
        in ``first`` before any other; None when idle."""
        now = time.time()
        marks = ", ".join("?" for _ in first) or "NULL"
        with self._connect() as connection:
            row = connection.execute(
                "UPDATE jobs SET state = ?, stage = 'starting', worker = ?, worker_pid = ?, "
                "started_at = ?, heartbeat_at = ?, updated_at = ? "
                "WHERE id = (SELECT id FROM jobs WHERE state = ? "
                f"ORDER BY kind IN ({marks}) DESC, id LIMIT 1) AND state = ? RETURNING *",
                (
                    JobState.RUNNING.value,
                    worker,
                    pid,
                    now,
                    now,
                    now,
                    JobState.QUEUED.value,
                    *first,
                    JobState.QUEUED.value,
                ),
            ).fetchone()
        return None if row is None else _job(row)

    def report(self, job_id: int, stage: str, progress: float, message: str | None = None) -> None:
        """Stage and progress (clipped to 0..1) of a running job; also a heartbeat."""
        now = time.time()
        with self._connect() as connection:
            connection.execute(
                "UPDATE jobs SET stage = ?, progress = ?, message = COALESCE(?, message), "
                "heartbeat_at = ?, updated_at = ? WHERE id = ? AND state = ?",
                (
                    stage,
                    min(max(progress, 0.0), 1.0),
                    message,
                    now,
                    now,
                    job_id,
                    JobState.RUNNING.value,
                ),
            )

    def heartbeat(self, job_id: int) -> bool:
        """Refresh the heartbeat; returns whether a cancellation was asked for."""
        now = time.time()
        with self._connect() as connection:
            connection.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND state = ?",
                (now, job_id, JobState.RUNNING.value),
            )
            row = connection.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return bool(row and row[0])

    def set_artifact(self, job_id: int, artifact: Path, version: str) -> None:
        with self._connect() as connection:
            connection.execute(
                "UPDATE jobs SET artifact = ?, version = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (str(artifact), version, time.time(), job_id, JobState.RUNNING.value),
            )

    def start_promotion(self, job_id: int) -> bool:
        """Mark a running job as being promoted, unless a cancel was asked for (False): from
        then on it can no longer be cancelled or superseded."""
        with self._connect() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET stage = ?, updated_at = ? "
                "WHERE id = ? AND state = ? AND cancel_requested = 0",
                (PROMOTING_STAGE, time.time(), job_id, JobState.RUNNING.value),
            )
            return cursor.rowcount == 1

    def finish(self, job_id: int, state: JobState, message: str, stage: str | None = None) -> bool:
        """Move a running job to a final state; False if it was no longer running."""
        if not state.finished:
            raise ValueError(f"{state} is not a final state")
        now = time.time()
        progress = "1.0" if state is JobState.SUCCEEDED else "progress"
        with self._connect() as connection:
            cursor = connection.execute(
                f"UPDATE jobs SET state = ?, stage = COALESCE(?, stage), message = ?, "
                f"progress = {progress}, updated_at = ?, finished_at = ? "
                "WHERE id = ? AND state = ?",
                (state.value, stage, message, now, now, job_id, JobState.RUNNING.value),
            )
            return cursor.rowcount == 1

    def fail_stale(self, stale_after: float, alive: Callable[[int], bool] = pid_alive) -> list[int]:
        """Fail running jobs whose worker died: its pid is gone (same host; at once, whatever
        the heartbeat's age) or its heartbeat is older than ``stale_after`` seconds (a worker on
        another host). ``alive(pid) -> bool`` checks a local pid."""
        now = time.time()
        failed = []
        for job in self.list_jobs(JobState.RUNNING, limit=10_000):
            dead = _gone(job.worker, job.worker_pid, alive)
            silent = job.heartbeat_at is None or now - job.heartbeat_at > stale_after
            if dead or silent:
                why = "process gone" if dead else f"no heartbeat for {stale_after:g} s"
                message = (
                    f"worker died ({why}) during stage {job.stage!r}; the previous model "
                    "keeps serving"
                )
                if self.finish(job.id, JobState.FAILED, message):
                    failed.append(job.id)
        return failed

    # -- workers ------------------------------------------------------------------------------
    def worker_heartbeat(self, name: str, pid: int) -> None:
        """Register worker ``name`` (``host:pid``) or refresh its heartbeat."""
        now = time.time()
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO workers (name, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (name, pid, now, now),
            )

    def remove_worker(self, name: str) -> None:
        with self._connect() as connection:
            connection.execute("DELETE FROM workers WHERE name = ?", (name,))

    def live_workers(
        self, fresh_within: float, alive: Callable[[int], bool] = pid_alive
    ) -> list[WorkerRow]:
        """Workers whose heartbeat is at most ``fresh_within`` seconds old and whose process is
        not known to be gone (a read: rows of dead workers stay until :meth:`forget_dead_workers`).
        """
        with self._connect() as connection:
            rows = [WorkerRow(**dict(row)) for row in connection.execute("SELECT * FROM workers")]
        now = time.time()
        return [
            row
            for row in rows
            if now - row.heartbeat_at <= fresh_within and not _gone(row.name, row.pid, alive)
        ]

    def forget_dead_workers(self, alive: Callable[[int], bool] = pid_alive) -> list[str]:
        """Remove the rows of workers whose process is gone (this host's only); their names."""
        with self._connect() as connection:
            rows = connection.execute("SELECT name, pid FROM workers").fetchall()
            dead = [name for name, pid in rows if _gone(name, pid, alive)]
            connection.executemany("DELETE FROM workers WHERE name = ?", [(n,) for n in dead])
        return dead

    # -- promotions ---------------------------------------------------------------------------
    def record_promotion(self, version: str, path: Path, job_id: int | None = None) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO promotions (version, path, job_id, at) VALUES (?, ?, ?, ?)",
                (version, str(path), job_id, time.time()),
            )

    def promotions(self, limit: int = 1000) -> list[Promotion]:
        """Pointer changes, newest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT * FROM promotions ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Promotion(**dict(row)) for row in rows]

    def forget_promotions(self, paths: Iterable[Path]) -> None:
        """Drop the history of artifacts that were removed."""
        with self._connect() as connection:
            connection.executemany(
                "DELETE FROM promotions WHERE path = ?", [(str(path),) for path in paths]
            )
