"""``ciess serve --workers 2``: /metrics answers for both processes from either, and a reload
reaches both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from service.api_processes import STARTUP_FAILURE, serve_one
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


def _ask_on_open_connections(url: str, count: int) -> None:
    """Open ``count`` connections at once (the kernel queues them all before either process
    accepts), then send one keep-alive ``GET /healthz`` on each and read its answer."""
    host, port = url.removeprefix("http://").split(":")
    connections = [socket.create_connection((host, int(port)), timeout=30) for _ in range(count)]
    try:
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for connection in connections:
            connection.sendall(request)
        for connection in connections:
            assert connection.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for connection in connections:
            connection.close()


def test_connections_opened_at_once_are_spread_over_the_processes(
    settings: Settings, two_processes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    # Each process listens on a socket of its own (SO_REUSEPORT): the kernel spreads new
    # connections over them. On one shared socket, the process that woke first accepted the
    # whole queue, and a client's keep-alive pool was served by one core.
    url, process = two_processes
    folder = settings.state_dir / "metrics" / str(process.pid)
    _ask_on_open_connections(url, 24)
    counts = _healthz_counts(folder)
    assert sum(counts.values()) == 24
    assert len(counts) == 2, counts  # all 24 on one process: 2 in 2**24 by chance


def _listening_sockets(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def test_a_process_that_dies_is_replaced(
    settings: Settings, two_processes: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, process = two_processes
    folder = settings.state_dir / "metrics" / str(process.pid)
    _ask_on_open_connections(url, 24)
    first, second = _healthz_counts(folder)
    port = int(url.rsplit(":", 1)[1])
    listening = _listening_sockets(port)
    assert len(listening) == 2  # one per process; the parent's holds the port, not listening
    os.kill(int(first), signal.SIGKILL)
    # Connections queued on a process's socket when it goes are reset (SO_REUSEPORT); once the
    # kernel has released the socket (a few milliseconds after the process's exit), it hands
    # new ones to the live processes only.
    wait_for(
        lambda: len(_listening_sockets(port) & listening) == 1,
        timeout=30,
        what="the killed process's socket to go",
    )

    def replaced() -> bool:
        _ask_on_open_connections(url, 8)  # every connection answered
        return len(set(_healthz_counts(folder)) - {first, second}) == 1

    wait_for(replaced, timeout=120, what="a new API process")
    assert process.poll() is None


def test_a_taken_port_is_a_clear_error(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-c", _SERVE, "serve", "--port", str(port), "--workers", "2"]
        finished = subprocess.run(
            [*command, "--no-worker"],
            env=worker_environment(settings),
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert finished.returncode == 2  # as with one API process: a usage error
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_an_api_process_whose_app_fails_to_start_exits_as_a_startup_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the supervisor stops the group instead of starting it again and again."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if "CIESS_" not in k})
    environment = {"CIESS_STATE_DIR": str(tmp_path)}  # no admin token: create_app refuses
    with pytest.raises(SystemExit) as exited:
        serve_one("127.0.0.1", 0, {"access_log": False}, environment)
    assert exited.value.code == STARTUP_FAILURE
