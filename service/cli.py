"""``ciess serve`` and ``ciess worker``: the API (with a worker beside it) and a worker alone.

The core's ``ciess`` command finds these two through the ``ciess.commands`` entry points
(:func:`register_serve`, :func:`register_worker`), so that ``ciess_core`` never imports the
service; ``ciess-serve`` and ``ciess-worker`` (:func:`serve_main`, :func:`worker_main`) are the same
commands as programs of their own.

Both read the service settings (``service.settings``): a TOML file named by ``--config`` or
``CIESS_CONFIG``, then ``CIESS_*`` variables; the flags below set those variables, so the API, its
uvicorn workers and the job worker all see the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from ciess_core.cli import run_command

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

HTTP_PROTOCOLS = ("coalescing", "httptools", "h11")

_SERVE_HELP = "serve top-k over HTTP (FastAPI + onnxruntime) with a job worker beside it"
_SERVE_DESCRIPTION = (
    "Start the API (uvicorn) and, unless --no-worker, one job worker process. The admin token "
    "comes from CIESS_ADMIN_TOKEN (or the config file); --dev starts without one, with open "
    "admin endpoints, for local use only."
)
_WORKER_HELP = "run budget jobs from the job store (search, retrain, export, promote)"
_WORKER_DESCRIPTION = (
    "Claim queued jobs from the SQLite job store and run them, one at a time, each in its own "
    "process; stops on SIGTERM. Jobs left running by a crashed worker are marked failed at "
    "start-up."
)


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
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
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
    serve = subparsers.add_parser("serve", help=_SERVE_HELP, description=_SERVE_DESCRIPTION)
    _add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve_command)


def register_worker(subparsers: Any) -> None:
    """Add ``worker`` to ``ciess`` (the ``ciess.commands`` entry point ``worker``)."""
    worker = subparsers.add_parser("worker", help=_WORKER_HELP, description=_WORKER_DESCRIPTION)
    _add_shared(worker)
    worker.set_defaults(handler=run_worker_command)


def add_service_parsers(subparsers: Any) -> None:
    """Register ``serve`` and ``worker``."""
    register_serve(subparsers)
    register_worker(subparsers)


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


def run_worker_command(arguments: argparse.Namespace) -> int:
    from service.jobs.worker import main as worker_main
    from service.settings import load_settings

    return worker_main(load_settings(_export_settings(arguments)))


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_serve_command(arguments: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import load_settings

    environment = _export_settings(arguments)
    settings = load_settings(environment)
    settings.require_admin_token()  # fail before starting anything
    os.environ.update(environment)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the previous handler:
    # make that handler unwind through ``finally`` so that the worker is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    worker: subprocess.Popen[bytes] | None = None
    if not arguments.no_worker:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.jobs.worker", "--parent-pid", str(os.getpid())],
            env=environment,
        )
        logger.info("job worker started (pid %d)", worker.pid)
    try:
        uvicorn.run(
            "service.main:app_from_environment",
            factory=True,
            host=arguments.host,
            port=arguments.port,
            workers=arguments.workers,
            access_log=not arguments.no_access_log,
            **uvicorn_connection_options(settings, arguments.http),
        )
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return 0


def _standalone(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
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
    return _standalone("ciess-worker", _WORKER_DESCRIPTION, _add_shared, run_worker_command, argv)
