"""``ciess serve`` and ``ciess worker``: the API (with a worker beside it) and a worker alone.

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
from types import FrameType
from typing import Any

logger = logging.getLogger("ciess")

# flag destination -> settings field (exported as CIESS_<FIELD>)
_SHARED_FLAGS = {
    "config": "CIESS_CONFIG",
    "state_dir": "CIESS_STATE_DIR",
    "artifact_dir": "CIESS_ARTIFACT_DIR",
    "data_dir": "CIESS_DATA_DIR",
    "dataset": "CIESS_DATASET",
}


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (else $CIESS_CONFIG)")
    parser.add_argument("--state-dir", help="job store, artifacts, current.json (CIESS_STATE_DIR)")
    parser.add_argument(
        "--artifact-dir", help="artifact to serve before any job ran (CIESS_ARTIFACT_DIR)"
    )
    parser.add_argument("--data-dir", help="datasets the jobs retrain on (CIESS_DATA_DIR)")
    parser.add_argument("--dataset", help="dataset of the jobs (default: the artifact's)")


def add_service_parsers(subparsers: Any) -> None:
    """Register ``serve`` and ``worker``."""
    serve = subparsers.add_parser(
        "serve",
        help="serve top-k over HTTP (FastAPI + onnxruntime) with a job worker beside it",
        description="Start the API (uvicorn) and, unless --no-worker, one job worker process. "
        "The admin token comes from CIESS_ADMIN_TOKEN (or the config file); --dev starts "
        "without one, with open admin endpoints, for local use only.",
    )
    _add_shared(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--no-worker", action="store_true", help="do not start a job worker")
    serve.add_argument("--dev", action="store_true", help="development mode (no admin token)")
    serve.add_argument(
        "--no-access-log",
        action="store_true",
        help="no uvicorn line per request (latency and counts stay in /metrics)",
    )
    serve.add_argument(
        "--http",
        choices=HTTP_PROTOCOLS,
        default="coalescing",
        help="HTTP implementation: coalescing (default; uvicorn's httptools protocol sending "
        "each response in one write), httptools or h11 (uvicorn's own, unchanged)",
    )
    worker = subparsers.add_parser(
        "worker",
        help="run budget jobs from the job store (search, retrain, export, promote)",
        description="Claim queued jobs from the SQLite job store and run them, one at a time, "
        "each in its own process; stops on SIGTERM. Jobs left running by a crashed worker are "
        "marked failed at start-up.",
    )
    _add_shared(worker)


HTTP_PROTOCOLS = ("coalescing", "httptools", "h11")


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
            http=uvicorn_http_protocol(arguments.http),
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
