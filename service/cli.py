"""``ciess serve`` and ``ciess worker``: the API (with a worker beside it) and a worker alone.

The core's ``ciess`` command finds these two through the ``ciess.commands`` entry points
(:func:`register_serve`, :func:`register_worker`), so that ``ciess_core`` never imports the
service; ``ciess-serve`` and ``ciess-worker`` (:func:`serve_main`, :func:`worker_main`) are the same
commands as programs of their own.

Both read the service settings (``service.settings``): a TOML file named by ``--config`` or
``CIESS_CONFIG``, then ``CIESS_*`` variables; the flags below set those variables, so the API's
processes and the job worker all see the same settings. Their ``--help`` ends with every setting
and its default (:func:`settings_help`). Before anything starts, both check what a user may have
mistyped (:func:`startup_settings`, :func:`prepare_state_dir`): ``CIESS_*`` variables that
nothing reads are named in a warning, a configured ``artifact_dir`` must exist, and the state
folder must be a folder (it is created if missing); ``serve`` also takes its port before it starts
anything (:func:`_listen`), so that a port in use is one ``error:`` line, exit status 2, with one
API process or several.

``ciess serve`` supervises its job worker (:class:`WorkerSupervisor`): a worker that dies is
restarted after 1 s, then after twice as long each time it dies again, up to 30 s, and its running
job is failed at once. With ``--workers N`` (N > 1) the API runs as N processes, each listening
on a socket of its own (``service.api_processes``: the kernel spreads connections over them), and
they keep their Prometheus metrics in one folder (prometheus-client's multiprocess mode,
:func:`metrics_folder`), so that ``/metrics`` answers for all of them from any of them.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from ciess_core.cli import run_command
from ciess_core.cli_search import at_least_one, whole_number
from ciess_core.errors import ConfigError
from service.api_processes import (
    FIRST_RESTART_DELAY_SECONDS,
    MAX_RESTART_DELAY_SECONDS,
    STARTUP_FAILURE,
    RestartBackoff,
    listening_sockets,
)

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger("ciess")

# flag destination -> settings field (exported as CIESS_<FIELD>)
_SHARED_FLAGS = {
    "config": "CIESS_CONFIG",
    "state_dir": "CIESS_STATE_DIR",
    "artifact_dir": "CIESS_ARTIFACT_DIR",
    "data_dir": "CIESS_DATA_DIR",
}

# the flags that set a setting, by setting (``--dev``: ``serve`` only)
_SETTING_FLAGS = {
    **{name: "--" + name.replace("_", "-") for name in _SHARED_FLAGS if name != "config"},
    "dev_mode": "--dev",
}

HTTP_PROTOCOLS = ("coalescing", "httptools", "h11")
MAX_PORT = 65535

_SUPERVISE_EVERY_SECONDS = 0.2
# prometheus-client's variable for its multiprocess mode (read when it is imported)
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

_SERVE_HELP = "serve top-k over HTTP (FastAPI + onnxruntime) with a job worker beside it"
_SERVE_DESCRIPTION = (
    "Start the API (uvicorn) and, unless --no-worker, one job worker process, restarted when it "
    "dies (after 1 s, doubling to 30 s). The admin token comes from CIESS_ADMIN_TOKEN (or the "
    "config file); --dev starts without one, with open admin endpoints, for local use only."
)
_WORKER_HELP = "run budget jobs from the job store (search, retrain, export, promote)"
_WORKER_DESCRIPTION = (
    "Claim queued jobs from the SQLite job store and run them, one at a time, each in its own "
    "process; stops on SIGTERM. Jobs left running by a crashed worker are marked failed at "
    "start-up."
)


# Stands for the settings list in the parsers' epilog; :class:`_SettingsHelpFormatter` writes it.
_SETTINGS_EPILOG = "settings: (listed when help is shown)"
_SETTINGS_INTRO = (
    "settings: serve and worker read the same settings, each described in service/settings.py "
    "(and in the README, Configuration). Lowest precedence first: the defaults below, a TOML "
    "file named by --config or CIESS_CONFIG (keys: the names below), CIESS_<NAME> environment "
    "variables (CIESS_STATE_DIR, ...), then the flags above."
)


def _toml_value(value: Any) -> str:
    """A default as the TOML file would write it (``(unset)`` for None)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    return repr(value)


def settings_help(flags: Mapping[str, str], width: int = 78) -> str:
    """The settings section of ``--help``: how settings are set, then each setting (from the
    settings model), its default and the flag in ``flags`` (setting -> flag) that sets it."""
    from service.settings import Settings  # here, not at import: ``ciess`` starts faster

    lines = textwrap.wrap(_SETTINGS_INTRO, width)
    names = Settings.model_fields
    name_width = max(len(name) for name in names)
    for name, field in names.items():
        row = f"  {name:<{name_width}} = {_toml_value(field.default)}"
        lines.append(f"{row:<{name_width + 18}}  {flags[name]}" if name in flags else row)
    return "\n".join(lines) + "\n"


class _SettingsHelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, which writes :func:`settings_help` in place of the epilog
    :data:`_SETTINGS_EPILOG`, line by line as it is (a table, not a paragraph to fill). The
    settings model is imported only then, so other ``ciess`` commands start without it."""

    flags: ClassVar[Mapping[str, str]] = _SETTING_FLAGS

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text != _SETTINGS_EPILOG:
            return super()._fill_text(text, width, indent)
        return textwrap.indent(settings_help(self.flags, width), indent)


class _WorkerHelpFormatter(_SettingsHelpFormatter):
    """:class:`_SettingsHelpFormatter` for ``worker``, which has no ``--dev``."""

    flags: ClassVar[Mapping[str, str]] = {
        name: flag for name, flag in _SETTING_FLAGS.items() if flag != "--dev"
    }


#: A ``--port`` flag: a whole number from 1 to 65535.
port_number = whole_number(1, MAX_PORT, f"a port is 1 to {MAX_PORT}")


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (else $CIESS_CONFIG)")
    parser.add_argument("--state-dir", help="job store, artifacts, current.json (CIESS_STATE_DIR)")
    parser.add_argument(
        "--artifact-dir", help="artifact to serve before any job ran (CIESS_ARTIFACT_DIR)"
    )
    parser.add_argument(
        "--data-dir", help="datasets the jobs retrain on (the artifact's dataset; CIESS_DATA_DIR)"
    )


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_shared(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers",
        type=at_least_one,
        default=1,
        help="API processes (default 1); more than one: each on a socket of its own "
        "(SO_REUSEPORT), restarted when it dies",
    )
    parser.add_argument("--no-worker", action="store_true", help="do not start a job worker")
    parser.add_argument("--dev", action="store_true", help="development mode (no admin token)")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="no uvicorn line per request (latency and counts stay in /metrics)",
    )
    parser.add_argument(
        "--http",
        choices=HTTP_PROTOCOLS,
        default="coalescing",
        help="HTTP implementation: coalescing (default; uvicorn's httptools protocol sending "
        "each response in one write), httptools or h11 (uvicorn's own, unchanged)",
    )


def register_serve(subparsers: Any) -> None:
    """Add ``serve`` to ``ciess`` (the ``ciess.commands`` entry point ``serve``)."""
    serve = subparsers.add_parser(
        "serve",
        help=_SERVE_HELP,
        description=_SERVE_DESCRIPTION,
        epilog=_SETTINGS_EPILOG,
        formatter_class=_SettingsHelpFormatter,
    )
    _add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve_command)


def register_worker(subparsers: Any) -> None:
    """Add ``worker`` to ``ciess`` (the ``ciess.commands`` entry point ``worker``)."""
    worker = subparsers.add_parser(
        "worker",
        help=_WORKER_HELP,
        description=_WORKER_DESCRIPTION,
        epilog=_SETTINGS_EPILOG,
        formatter_class=_WorkerHelpFormatter,
    )
    _add_shared(worker)
    worker.set_defaults(handler=run_worker_command)


def uvicorn_http_protocol(name: str = "coalescing") -> Any:
    """uvicorn's ``http`` setting for ``--http``: ``coalescing`` is uvicorn's httptools protocol
    with one write per response (service/http_protocol.py), or uvicorn's choice without httptools.
    """
    if name != "coalescing":
        return name
    try:
        from service.http_protocol import CoalescingHttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's own choice (h11)
        return "auto"
    return CoalescingHttpToolsProtocol


def uvicorn_connection_options(settings: Settings, http: str = "coalescing") -> dict[str, Any]:
    """uvicorn's ``http`` and ``timeout_keep_alive`` for ``settings``: the protocol of ``--http``
    with the ``header_timeout_seconds`` deadline (:func:`service.limits.with_header_timeout`, a
    picklable factory, so ``--workers N`` keeps working), and ``keep_alive_timeout_seconds``."""
    from service.limits import with_header_timeout

    return {
        "http": with_header_timeout(uvicorn_http_protocol(http), settings.header_timeout_seconds),
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
    }


def _export_settings(arguments: argparse.Namespace) -> dict[str, str]:
    """The environment that carries the flags to the app factory and to the worker."""
    environment = dict(os.environ)
    for name, variable in _SHARED_FLAGS.items():
        value = getattr(arguments, name, None)
        if value is not None:
            environment[variable] = str(value)
    if getattr(arguments, "dev", False):
        environment["CIESS_DEV_MODE"] = "1"
    return environment


def _origin(arguments: argparse.Namespace, settings: Settings, name: str) -> str:
    """Where setting ``name`` came from: its flag when given, else :meth:`Settings.origin`."""
    if name in _SETTING_FLAGS and getattr(arguments, name, None) is not None:
        return _SETTING_FLAGS[name]
    return settings.origin(name)


def _path_error(arguments: argparse.Namespace, settings: Settings, name: str, problem: str) -> str:
    """``setting <name> = '<path>' (from <origin>): <problem>``, as the settings' own errors."""
    origin = _origin(arguments, settings, name)
    return f"setting {name} = {str(getattr(settings, name))!r} (from {origin}): {problem}"


def prepare_state_dir(arguments: argparse.Namespace, settings: Settings) -> None:
    """Create the state folder if it is missing (after every other check: a refused start
    leaves nothing behind).

    Raises:
        ConfigError: it exists and is not a folder, or it cannot be created.
    """
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        problem = "it exists and is not a folder"
    except OSError as error:
        problem = f"cannot create the folder: {error.strerror or error}"
    else:
        return
    raise ConfigError(_path_error(arguments, settings, "state_dir", problem))


def _require_artifact_dir(arguments: argparse.Namespace, settings: Settings) -> None:
    """A configured ``artifact_dir`` must be a folder unless ``current.json`` names a promoted
    model (then a warning): a damaged artifact in it is the model holder's to fall back from, a
    missing one with nothing promoted is a mistake in the settings."""
    directory = settings.artifact_dir
    if directory is None or directory.is_dir():
        return
    problem = "it is not a folder" if directory.exists() else "no such folder"
    if settings.current_pointer.is_file():  # a promoted model serves; this one is the fallback
        logger.warning("%s; serving what current.json names",
                       _path_error(arguments, settings, "artifact_dir", problem))  # fmt: skip
        return
    raise ConfigError(
        _path_error(arguments, settings, "artifact_dir", problem)
        + "; unset it to start without a model"
    )


def _warn_unknown_variables(environment: Mapping[str, str]) -> None:
    from service.settings import unknown_variables

    unknown = unknown_variables(environment)
    if unknown:
        logger.warning(
            "ignoring environment variables that are not settings: %s (the settings are listed "
            "by --help)",
            ", ".join(unknown),
        )


def startup_settings(arguments: argparse.Namespace, environment: Mapping[str, str]) -> Settings:
    """The settings of ``serve`` and ``worker`` from ``environment`` (the flags exported into
    it), checked before anything starts: unknown ``CIESS_*`` variables are warned about and a
    configured ``artifact_dir`` must exist (:func:`prepare_state_dir` comes last).

    Raises:
        ConfigError: a bad setting, named with its value and where it came from.
    """
    from service.settings import load_settings

    _warn_unknown_variables(environment)
    settings = load_settings(environment)
    _require_artifact_dir(arguments, settings)
    return settings


def run_worker_command(arguments: argparse.Namespace) -> int:
    from service.jobs.worker import main as worker_main

    settings = startup_settings(arguments, _export_settings(arguments))
    prepare_state_dir(arguments, settings)
    return worker_main(settings)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class WorkerSupervisor:
    """Runs the job worker ``command`` as a child process and restarts it when it dies.

    The first restart comes :data:`FIRST_RESTART_DELAY_SECONDS` after the death, each further
    one twice as late, up to :data:`MAX_RESTART_DELAY_SECONDS`; a worker that has run that long
    counts as healthy again (the delay starts over). When the worker dies, the job it was running
    is failed at once (its recorded pid is gone: :meth:`JobStore.fail_stale`); the job's own
    process stops by itself (it watches its parent). The worker runs in a session of its own:
    a Ctrl-C meant for ``ciess serve`` reaches it through :meth:`stop` only.
    """

    def __init__(
        self,
        command: Sequence[str],
        environment: Mapping[str, str],
        settings: Settings,
        cwd: Path | None = None,
    ) -> None:
        self._command = list(command)
        self._environment = dict(environment)
        self._settings = settings
        self._cwd = cwd
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor")
        self._thread.daemon = True
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop supervising, then the worker (SIGTERM; SIGKILL after ``timeout`` seconds)."""
        self._stop.set()
        with self._lock:
            process = self._process
        if self._thread.is_alive():
            self._thread.join()
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _spawn(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._process = subprocess.Popen(
                self._command, env=self._environment, cwd=self._cwd, start_new_session=True
            )
            self._started = time.monotonic()
        logger.info("job worker started (pid %d)", self._process.pid)

    def _fail_orphaned_jobs(self) -> None:
        from service.jobs.store import JobStore

        try:
            store = JobStore(self._settings.job_db_path)
            failed = store.fail_stale(self._settings.stale_after_seconds)
            store.forget_dead_workers()
        except Exception:  # the store is the API's too: never stop supervising over it
            logger.exception("could not fail the dead worker's jobs")
            return
        if failed:
            logger.error("jobs %s failed: their worker died", failed)

    def _supervise(self) -> None:
        backoff = RestartBackoff(FIRST_RESTART_DELAY_SECONDS, MAX_RESTART_DELAY_SECONDS)
        while not self._stop.wait(_SUPERVISE_EVERY_SECONDS):
            process = self._process
            if process is None:
                continue
            code = process.poll()
            if code is None:
                continue
            delay = backoff.after_death(time.monotonic() - self._started)
            self._fail_orphaned_jobs()
            logger.error(
                "job worker (pid %d) exited with code %d; restarting it in %g s",
                process.pid,
                code,
                delay,
            )
            if self._stop.wait(delay):
                return
            self._spawn()
            self.restarts += 1


def metrics_folder(state_dir: Path) -> Path:
    """A fresh folder for prometheus-client's multiprocess files: ``state_dir/metrics/<pid>``
    of this ``ciess serve``; the folders of earlier starts whose process is gone are removed."""
    from service.jobs.store import pid_alive

    root = state_dir / "metrics"
    if root.is_dir():
        for folder in root.iterdir():
            if not (folder.name.isdigit() and pid_alive(int(folder.name))):
                shutil.rmtree(folder, ignore_errors=True)
    own = root / str(os.getpid())
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True)
    return own


def _address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve_one_process(listening: list[socket.socket], options: Mapping[str, Any]) -> int:
    """One API process: uvicorn serving the app on the sockets ``listening``; 0, or
    :data:`~service.api_processes.STARTUP_FAILURE` (as ``uvicorn.run``) when the app did not
    start."""
    import uvicorn

    from service.api_processes import APP

    for bound in listening:
        host, port = bound.getsockname()[:2]
        logger.info("API listening on http://%s (Press CTRL+C to quit)", _address(host, port))
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, **options))
    try:
        server.run(sockets=listening)
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown, as uvicorn.run takes it
        pass
    finally:
        for bound in listening:
            bound.close()
    return 0 if server.started else STARTUP_FAILURE


def _listen(
    arguments: argparse.Namespace, options: Mapping[str, Any], environment: Mapping[str, str]
) -> Callable[[], int]:
    """Take ``--host``:``--port`` before anything starts and return what serves on it: one API
    process, or with ``--workers N`` (N > 1) N of them, each on a socket of its own
    (SO_REUSEPORT, :class:`~service.api_processes.ApiProcesses`).

    Raises:
        ConfigError: the address is in use or is not one of this machine's.
    """
    from service.api_processes import ApiProcesses

    host, port = arguments.host, arguments.port
    try:
        if arguments.workers > 1:
            return ApiProcesses(arguments.workers, host, port, options, environment).run
        listening = listening_sockets(host, port)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot listen on {_address(host, port)}: {reason}") from None
    return functools.partial(_serve_one_process, listening, options)


def _require_loopback_for_open_admin(settings: Settings, host: str) -> None:
    """Development mode without an admin token leaves the admin endpoints open: it may listen
    on a loopback address only, where no other machine reaches them."""
    if not settings.dev_mode or settings.admin_token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to stay on this machine
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--host {host}: development mode without an admin token leaves the admin endpoints "
            "open, so it listens on a loopback address only (127.0.0.1, ::1, localhost); set "
            f"CIESS_ADMIN_TOKEN to listen on {host}"
        )


def run_serve_command(arguments: argparse.Namespace) -> int:
    environment = _export_settings(arguments)
    settings = startup_settings(arguments, environment)
    settings.require_admin_token()  # fail before starting anything
    _require_loopback_for_open_admin(settings, arguments.host)
    prepare_state_dir(arguments, settings)
    options = {
        "access_log": not arguments.no_access_log,
        **uvicorn_connection_options(settings, arguments.http),
    }
    multiprocess = None
    if arguments.workers > 1:
        multiprocess = metrics_folder(settings.state_dir)
        environment[MULTIPROCESS_VARIABLE] = str(multiprocess)
    try:
        serve = _listen(arguments, options, environment)
    except ConfigError:
        if multiprocess is not None:
            shutil.rmtree(multiprocess, ignore_errors=True)
        raise
    os.environ.update(environment)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the previous handler:
    # make that handler unwind through ``finally`` so that the worker is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    supervisor: WorkerSupervisor | None = None
    if not arguments.no_worker:
        supervisor = WorkerSupervisor(
            [sys.executable, "-m", "service.jobs.worker", "--parent-pid", str(os.getpid())],
            environment,
            settings,
        )
        supervisor.start()
    try:
        return serve()
    finally:
        if supervisor is not None:
            supervisor.stop()
        if multiprocess is not None:
            shutil.rmtree(multiprocess, ignore_errors=True)


def _standalone(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
    formatter: type[argparse.HelpFormatter] = _SettingsHelpFormatter,
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=_SETTINGS_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    add_arguments(parser)
    return run_command(handler, parser.parse_args(argv))


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``ciess-serve``: ``ciess serve`` as a program of its own."""
    return _standalone(
        "ciess-serve", _SERVE_DESCRIPTION, _add_serve_arguments, run_serve_command, argv
    )


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``ciess-worker``: ``ciess worker`` as a program of its own."""
    return _standalone(
        "ciess-worker",
        _WORKER_DESCRIPTION,
        _add_shared,
        run_worker_command,
        argv,
        _WorkerHelpFormatter,
    )
