"""``ciess serve`` and ``ciess worker`` (service/cli.py, plugged into ``ciess``) parse their flags
into the shared settings."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ciess_core.cli import build_parser
from service import api_processes, cli
from service.api_processes import listening_sockets
from service.cli import (
    _export_settings,
    run_serve_command,
    run_worker_command,
    serve_main,
    worker_main,
)
from service.jobs import worker as worker_module
from service.jobs.store import JobState, JobStore, pid_alive
from service.settings import OTHER_VARIABLES, Settings, load_settings
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


class _Served:
    """What the tests' stand-ins for uvicorn and the listening socket saw: the address
    ``serve`` listened on and the keywords of uvicorn's Config."""

    def __init__(self) -> None:
        self.addresses: list[tuple[str, int]] = []
        self.config: dict[str, Any] = {}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Served]:
    """``serve`` with one API process, listening and serving nothing: its socket and uvicorn
    stand-ins record what they were given. No ``CIESS_*`` variable from the caller, and
    ``os.environ`` a copy (serve exports the flags into it)."""
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(signal, "signal", lambda *arguments: None)
    seen = _Served()

    def listening(host: str, port: int) -> list[socket.socket]:
        seen.addresses.append((host, port))
        return [socket.socket()]  # unbound: only closed

    class Server:
        started = True

        def __init__(self, config: dict[str, Any]) -> None:
            seen.config = config

        def run(self, sockets: list[socket.socket]) -> None:
            assert len(sockets) == 1

    monkeypatch.setattr(cli, "listening_sockets", listening)
    monkeypatch.setattr(uvicorn, "Config", lambda app, **options: {"app": app, **options})
    monkeypatch.setattr(uvicorn, "Server", Server)
    yield seen


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: _Served
) -> None:
    monkeypatch.setitem(os.environ, "CIESS_KEEP_ALIVE_TIMEOUT_SECONDS", "7")
    monkeypatch.setitem(os.environ, "CIESS_HEADER_TIMEOUT_SECONDS", "3")
    arguments = _parse("serve", "--no-worker", "--dev", "--state-dir", str(tmp_path))
    assert run_serve_command(arguments) == 0
    assert served.addresses == [("127.0.0.1", 8000)]
    assert served.config["app"] == "service.main:app_from_environment"
    assert served.config["factory"] is True
    assert served.config["timeout_keep_alive"] == 7
    seen: dict[str, Any] = {}
    protocol = served.config["http"]
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
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: _Served,
) -> None:
    """Its admin endpoints are open: another machine must not reach them. Refused before
    anything starts, in one line; loopback addresses and a token are accepted."""
    base = ["--no-worker", "--dev", "--state-dir", str(tmp_path)]
    for host in ("0.0.0.0", "192.168.1.7", "::", "example.org"):
        assert serve_main([*base, "--host", host]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: --host {host}: development mode without an admin token")
        assert error.count("\n") == 1
    assert served.addresses == []
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert serve_main([*base, "--host", host]) == 0
    monkeypatch.setitem(os.environ, "CIESS_ADMIN_TOKEN", "t" * 32)
    assert serve_main([*base, "--host", "0.0.0.0"]) == 0
    hosts = [host for host, _ in served.addresses]
    assert hosts == ["127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0"]


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


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0", "a port is 1 to 65535, got 0"),
        ("-1", "a port is 1 to 65535, got -1"),
        ("65536", "a port is 1 to 65535, got 65536"),
        ("70000", "a port is 1 to 65535, got 70000"),
        ("http", "not a whole number: 'http'"),
    ],
)
def test_the_port_must_be_1_to_65535(
    given: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn would listen on 70000 mod 65536 while logging 70000, and fail on -1 with a
    resolver's error."""
    with pytest.raises(SystemExit) as exited:
        _parse("serve", f"--port={given}")
    assert exited.value.code == 2
    assert f"--port: {message}" in capsys.readouterr().err
    assert _parse("serve", "--port", "1").port == 1
    assert _parse("serve", "--port", "65535").port == 65535


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line a command ended with (and nothing else on stderr)."""
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error.strip()


def test_a_state_dir_that_is_a_file_is_one_error_line_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: _Served,
) -> None:
    """Not a FileExistsError (or, with --workers 2, NotADirectoryError) traceback; the
    worker is refused the same way."""
    monkeypatch.setattr(worker_module, "main", lambda settings: 0)
    state = tmp_path / "state"
    state.write_text("")
    refusal = (
        f"error: setting state_dir = '{state}' (from --state-dir): it exists and is not a folder"
    )
    for workers in ("1", "2"):
        assert serve_main(["--dev", "--state-dir", str(state), "--workers", workers]) == 2
        assert _one_error_line(capsys) == refusal
    assert served.addresses == []
    assert worker_main(["--state-dir", str(state)]) == 2
    assert _one_error_line(capsys) == refusal
    monkeypatch.setitem(os.environ, "CIESS_STATE_DIR", str(state / "below"))
    assert worker_main([]) == 2
    assert _one_error_line(capsys) == (
        f"error: setting state_dir = '{state / 'below'}' (from CIESS_STATE_DIR): cannot create "
        "the folder: Not a directory"
    )
    fresh = tmp_path / "new" / "state"
    assert serve_main(["--state-dir", str(fresh)]) == 2  # no admin token
    assert _one_error_line(capsys).startswith("error: no admin token")
    assert not fresh.exists()  # a refused start leaves nothing behind
    monkeypatch.setitem(os.environ, "CIESS_STATE_DIR", str(fresh))
    assert worker_main([]) == 0  # a missing folder is created
    assert fresh.is_dir()


def test_a_configured_artifact_dir_must_exist(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: _Served,
) -> None:
    """A missing artifact_dir with nothing promoted is a mistake in the settings, refused at
    start, not a service that starts and is never ready; an artifact that exists but does not
    load is the model holder's to fall back from, as before (the service starts)."""
    monkeypatch.setattr(worker_module, "main", lambda settings: 0)
    missing = tmp_path / "nonexistent"
    base = ["--dev", "--no-worker", "--state-dir", str(tmp_path / "state")]
    assert serve_main([*base, "--artifact-dir", str(missing)]) == 2
    assert _one_error_line(capsys) == (
        f"error: setting artifact_dir = '{missing}' (from --artifact-dir): no such folder; "
        "unset it to start without a model"
    )
    assert served.addresses == []
    a_file = tmp_path / "artifact.txt"
    a_file.write_text("")
    monkeypatch.setitem(os.environ, "CIESS_ARTIFACT_DIR", str(a_file))
    assert worker_main(["--state-dir", str(tmp_path / "state")]) == 2
    assert f"'{a_file}' (from CIESS_ARTIFACT_DIR): it is not a folder" in _one_error_line(capsys)
    monkeypatch.delitem(os.environ, "CIESS_ARTIFACT_DIR")
    config = tmp_path / "ciess.toml"
    config.write_text(f'artifact_dir = "{missing}"\n')
    assert serve_main([*base, "--config", str(config)]) == 2
    assert f"(from config file {config}): no such folder" in _one_error_line(capsys)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    assert serve_main([*base, "--artifact-dir", str(damaged)]) == 0
    assert served.addresses == [("127.0.0.1", 8000)]
    # With a promoted model named in current.json the missing folder is only a warning.
    (tmp_path / "state" / "current.json").write_text('{"path": "elsewhere"}')
    assert serve_main([*base, "--artifact-dir", str(missing)]) == 0
    assert len(served.addresses) == 2


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_port_in_use_is_one_error_line_with_one_api_process_or_several(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    taken_port: int,
) -> None:
    """Refused before anything starts (no worker, no app): exit status 2 and one line naming
    the address, whether uvicorn (exit status 3 before) or the API processes (1) would
    listen."""
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(signal, "signal", lambda *arguments: None)
    base = ["--dev", "--state-dir", str(tmp_path), "--port", str(taken_port)]
    for workers in ("1", "2"):
        assert serve_main([*base, "--workers", workers]) == 2
        assert _one_error_line(capsys) == (
            f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
        )
    assert not (tmp_path / "metrics").exists() or not any((tmp_path / "metrics").iterdir())


def _help(command: str, standalone: bool, capsys: pytest.CaptureFixture[str]) -> str:
    """``ciess <command> --help``, or ``ciess-<command> --help`` if ``standalone``."""
    with pytest.raises(SystemExit) as exited:
        if not standalone:
            _parse(command, "--help")
        elif command == "serve":
            serve_main(["--help"])
        else:
            worker_main(["--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_says_how_settings_are_set_and_lists_each_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    defaults = Settings()
    for command in ("serve", "worker"):
        for standalone in (False, True):
            shown = _help(command, standalone, capsys)
            assert "CIESS_CONFIG" in shown and "CIESS_<NAME>" in shown
            assert "service/settings.py" in shown
            for name in Settings.model_fields:
                assert re.search(rf"^  {name} +=", shown, re.MULTILINE), (command, name)
            assert re.search(r"^  max_queued_jobs += 8$", shown, re.MULTILINE)
            assert re.search(r'^  state_dir += "state" +--state-dir$', shown, re.MULTILINE)
            assert re.search(r"^  artifact_dir += \(unset\)", shown, re.MULTILINE)
            assert f"= {defaults.poll_seconds!r}" in shown
            assert ("--dev" in shown.split("settings:")[-1]) == (command == "serve")


def test_unknown_ciess_variables_are_named_in_a_warning_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "main", lambda settings: 0)
    for variable in [name for name in os.environ if name.startswith("CIESS_")]:
        monkeypatch.delenv(variable)
    for known in OTHER_VARIABLES - {"CIESS_CONFIG"}:
        monkeypatch.setenv(known, "1")
    monkeypatch.setenv("CIESS_POLL_SECONDS", "2")
    with caplog.at_level(logging.WARNING, logger="ciess"):
        assert worker_main(["--state-dir", str(tmp_path)]) == 0
    assert not caplog.records  # neither the settings nor what other parts of the project read
    monkeypatch.setenv("CIESS_STAT_DIR", "x")
    with caplog.at_level(logging.WARNING, logger="ciess"):
        assert worker_main(["--state-dir", str(tmp_path)]) == 0
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "CIESS_STAT_DIR (did you mean CIESS_STATE_DIR?)" in record.getMessage()


def test_one_api_process_listens_on_every_address_of_its_host_name() -> None:
    """As uvicorn did when it bound the host itself: ``localhost`` may be 127.0.0.1 and ::1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = {info[4][0] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    sockets = listening_sockets("localhost", port)
    try:
        assert {bound.getsockname()[0] for bound in sockets} == found
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        with pytest.raises(OSError):  # taken now: nothing is left open by the failed call
            listening_sockets("localhost", port)
    finally:
        for bound in sockets:
            bound.close()
