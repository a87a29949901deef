"""``python -m service.jobs.health``: the job worker container's health check.

The worker has no port. It is healthy when a worker of this container (the host part of
:func:`~service.jobs.store.worker_name`: the host name and pid namespace, the pid aside, so a
worker restarted in the container counts) has written its heartbeat lately: its heartbeat thread
writes every poll, busy or idle, so a worker that is wedged or gone stops being healthy. Exit
status 0 when healthy, 1 when not (with one line saying why).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from ciess_core.errors import CiessError
from service.jobs.store import worker_fresh_seconds, worker_name
from service.settings import load_settings

#: The least age at which a heartbeat counts as stale: a minute, whatever the poll interval.
LEAST_STALE_SECONDS = 60.0


def newest_heartbeat(store: Path, host: str) -> float | None:
    """The newest heartbeat time of the workers of ``host`` (``name~ns``) in the job store at
    ``store``, read-only; None when there is none (or no store yet)."""
    if not store.is_file():
        return None
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5.0)
    try:
        row = connection.execute(
            "SELECT MAX(heartbeat_at) FROM workers WHERE substr(name, 1, ?) = ?",
            (len(host) + 1, f"{host}:"),
        ).fetchone()
    finally:
        connection.close()
    return None if row is None or row[0] is None else float(row[0])


def main() -> int:
    try:
        settings = load_settings(os.environ)
        host = worker_name().rsplit(":", 1)[0]
        stale = max(LEAST_STALE_SECONDS, worker_fresh_seconds(settings.poll_seconds))
        beat = newest_heartbeat(settings.job_db_path, host)
    except (CiessError, sqlite3.Error) as error:  # bad settings, a locked or older store
        print(f"unhealthy: {error}")
        return 1
    if beat is None:
        print(f"unhealthy: no worker of {host} in {settings.job_db_path}")
        return 1
    age = time.time() - beat
    if age > stale:
        print(f"unhealthy: the newest heartbeat of {host} is {age:.0f} s old (over {stale:.0f} s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
