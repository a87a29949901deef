"""``ciess serve --workers 2``: /metrics answers for both processes from either, and a reload
reaches both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from service.settings import Settings
from tests.service.conftest import (
    REPOSITORY,
    admin_headers,
    free_port,
    wait_for,
    worker_environment,
)

pytestmark = pytest.mark.slow

_SERVE = """
import sys
from ciess_core.cli import main
sys.exit(main(sys.argv[1:]))
"""
HEALTHZ = 'ciess_requests_total{method="GET",route="/healthz",status="200"}'


def _healthz_counts(folder: Path) -> dict[str, float]:
    """Requests to /healthz each process counted (by the pid in its counter file's name)."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in metric.samples:
                if sample.name == "ciess_requests_total" and sample.labels["route"] == "/healthz":
                    counts[path.stem.split("_")[-1]] = sample.value
    return counts


def _scrape(url: str, line: str) -> float | None:
    for row in httpx.get(f"{url}/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return None


@pytest.fixture
def two_processes(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [sys.executable, "-c", _SERVE, "serve", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--no-worker", "--no-access-log"],
        env=worker_environment(settings),
        cwd=REPOSITORY,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=120, what="ciess serve --workers 2")
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_metrics_add_up_every_process_and_a_reload_reaches_each(
    settings: Settings, two_processes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, process = two_processes
    folder = settings.state_dir / "metrics" / str(process.pid)
    assert folder.is_dir()
    sent = 0
    # One connection per request: the kernel hands them to either process.
    while len(_healthz_counts(folder)) < 2 and sent < 500:
        assert httpx.get(f"{url}/healthz").status_code == 200
        sent += 1
    counts = _healthz_counts(folder)
    assert len(counts) == 2, counts  # both processes answered some
    wait_for(lambda: _scrape(url, HEALTHZ) == sent, timeout=10, what="the sum")
    for _ in range(10):  # whichever process answers the scrape, it reports both
        assert _scrape(url, HEALTHZ) == sent

    def loaded_at() -> set[float]:
        """The load times the processes report (until both have answered, 20 answers at least)."""
        seen: set[float] = set()
        for asked in range(500):
            seen.add(httpx.get(f"{url}/v1/model").json()["loaded_at"])
            if len(seen) >= 2 and asked >= 20:
                break
        return seen

    before = loaded_at()
    assert len(before) == 2  # one load per process, at its start
    asked = time.time()
    answer = httpx.post(f"{url}/v1/admin/reload", headers=admin_headers()).json()
    assert answer["swapped"] is True
    time.sleep(answer["all_processes_within_seconds"])
    after = loaded_at()
    assert len(after) == 2 and min(after) > asked, (before, after, answer)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not folder.exists()  # the multiprocess folder goes with the service
