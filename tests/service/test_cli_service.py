"""``ciess serve`` and ``ciess worker`` (service/cli.py, plugged into ``ciess``) parse their flags
into the shared settings."""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ciess_core.cli import build_parser
from service import api_processes
from service.cli import (
    _export_settings,
    run_serve_command,
    run_worker_command,
    serve_main,
    worker_main,
)
from service.jobs.store import JobState, JobStore, pid_alive
from service.settings import Settings, load_settings
from tests.service.conftest import (
    REPOSITORY,
    BaseArtifact,
    free_port,
    group_alive,
    wait_for,
    worker_environment,
)


def _parse(*argv: str) -> argparse.Namespace:
    """``argv`` as ``ciess`` parses it: serve and worker come from its entry points."""
    return build_parser().parse_args(argv)


def test_flags_become_the_settings_of_api_and_worker(tmp_path: Path) -> None:
    arguments = _parse(
        "serve", "--state-dir", str(tmp_path), "--artifact-dir", "/a", "--dev", "--port", "9"
    )
    assert arguments.port == 9 and not arguments.no_worker
    settings = load_settings(_export_settings(arguments))
    assert settings.state_dir == tmp_path
    assert settings.artifact_dir == Path("/a")
    assert settings.dev_mode
    worker = _parse("worker", "--data-dir", "/d")
    assert load_settings(_export_settings(worker)).data_dir == Path("/d")


def test_ciess_finds_serve_and_worker_through_its_entry_points() -> None:
    serve = _parse("serve", "--state-dir", "/s", "--port", "9", "--http", "h11", "--no-worker")
    assert serve.handler is run_serve_command
    assert (serve.state_dir, serve.port, serve.http, serve.no_worker) == ("/s", 9, "h11", True)
    worker = _parse("worker", "--data-dir", "/d")
    assert worker.handler is run_worker_command and worker.data_dir == "/d"


def test_serve_passes_the_connection_timeouts_to_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("CIESS_KEEP_ALIVE_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("CIESS_HEADER_TIMEOUT_SECONDS", "3")
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve exports the flags into it
    monkeypatch.setattr(signal, "signal", lambda *arguments: None)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options, app=app))
    arguments = _parse("serve", "--no-worker", "--dev", "--state-dir", str(tmp_path))
    assert run_serve_command(arguments) == 0
    assert seen["app"] == "service.main:app_from_environment" and seen["port"] == 8000
    assert seen["timeout_keep_alive"] == 7
    protocol = seen["http"]
    assert isinstance(protocol, functools.partial) and 3.0 in protocol.args
    assert pickle.loads(pickle.dumps(protocol)).args == protocol.args  # for --workers N

    class Recorded:
        """Stands for ApiProcesses: records what each API process would be given."""

        def __init__(self, *given: Any) -> None:
            seen["processes"] = given

        def run(self) -> int:
            return 0

    monkeypatch.setattr(api_processes, "ApiProcesses", Recorded)
    arguments = _parse(
        "serve", "--no-worker", "--dev", "--state-dir", str(tmp_path), "--workers", "3"
    )
    assert run_serve_command(arguments) == 0
    count, host, port, options, environment = seen["processes"]
    assert (count, host, port) == (3, "127.0.0.1", 8000)
    assert options["timeout_keep_alive"] == 7 and options["access_log"] is True
    assert environment["CIESS_DEV_MODE"] == "1"  # each process reads the flags' settings
    assert environment["PROMETHEUS_MULTIPROC_DIR"]  # and keeps its metrics with the others'


def test_ciess_serve_and_ciess_worker_programs_end_user_mistakes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    assert serve_main(["--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no admin token")
    assert worker_main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_development_mode_without_a_token_listens_on_loopback_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its admin endpoints are open: another machine must not reach them. Refused before
    anything starts, in one line; loopback addresses and a token are accepted."""
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve exports the flags into it
    monkeypatch.setattr(signal, "signal", lambda *arguments: None)
    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options["host"]))
    base = ["--no-worker", "--dev", "--state-dir", str(tmp_path)]
    for host in ("0.0.0.0", "192.168.1.7", "::", "example.org"):
        assert serve_main([*base, "--host", host]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: --host {host}: development mode without an admin token")
        assert error.count("\n") == 1
    assert served == []
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert serve_main([*base, "--host", host]) == 0
    monkeypatch.setenv("CIESS_ADMIN_TOKEN", "t" * 32)
    assert serve_main([*base, "--host", "0.0.0.0"]) == 0
    assert served == ["127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0"]


# `ciess serve` as the console script runs it: through the core's main and the entry point.
_SERVE = """
import sys
from ciess_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_serve_starts_the_api_and_a_worker_and_stops_both(
    settings: Settings, base_model: BaseArtifact
) -> None:
    port = free_port()
    environment = worker_environment(settings)
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, "serve", "--port", str(port)],
        env=environment,
        cwd=REPOSITORY,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60, what="ciess serve")
        store = JobStore(settings.job_db_path)
        job = store.submit("budget", {"target_sparsity": 0.5, "method": "equal"})
        wait_for(lambda: store.get(job.id).state is JobState.SUCCEEDED, timeout=120)
        workers = [row.pid for row in store.live_workers(fresh_within=60.0)]
        assert len(workers) == 1  # the supervised worker, in a session of its own
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        wait_for(lambda: not pid_alive(workers[0]), timeout=30, what="the worker to stop")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    wait_for(lambda: not group_alive(process.pid), timeout=30, what="the worker to stop")


def test_an_api_process_that_keeps_dying_waits_twice_as_long_each_time() -> None:
    slot = api_processes._Slot(process=None)  # type: ignore[arg-type]
    slot.started = 0.0
    waits = []
    now = 0.0
    for _ in range(7):  # each dies 0.5 s after its start
        now += 0.5
        slot.died(now)
        waits.append(slot.delay)
        assert slot.restart_at == now + slot.delay
        now = slot.restart_at
        slot.restarted(None, now)  # type: ignore[arg-type]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    slot.died(now + api_processes.MAX_RESTART_DELAY_SECONDS)  # it had served that long
    assert slot.delay == api_processes.FIRST_RESTART_DELAY_SECONDS


@pytest.mark.parametrize(
    ("given", "message"), [("0", "at least 1 process, got 0"), ("two", "not a whole number: 'two'")]
)
def test_workers_must_be_a_whole_number_of_one_or_more(
    given: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse("serve", "--workers", given)
    assert exited.value.code == 2
    assert f"--workers: {message}" in capsys.readouterr().err
