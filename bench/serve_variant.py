"""``ciess serve --no-worker`` with the serving switches that are not settings, for benchmarks.

The fast path (service/fast_path.py) and the turn batching (service/batching.py) are always on in
the product; :func:`service.main.create_app` takes them as arguments so that bench/serving.py can
measure each change's share. This launcher builds the app exactly as ``ciess serve`` does (settings
from ``CIESS_*`` and ``CIESS_CONFIG``, the same uvicorn connection options) with the switches its
flags turn off:

    CIESS_ARTIFACT_DIR=... CIESS_STATE_DIR=... CIESS_ADMIN_TOKEN=... \\
        python -m bench.serve_variant --no-batching --http httptools --port 8001 --workers 2

Each combination is a factory of its own, named in uvicorn's import string, so that every uvicorn
worker process builds the same variant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI

from ciess_core.errors import ConfigError
from service.cli import HTTP_PROTOCOLS, uvicorn_connection_options
from service.main import create_app
from service.settings import load_settings


def shipped_app() -> FastAPI:
    """As ``ciess serve``: fast path and batching."""
    return create_app(load_settings())


def unbatched_app() -> FastAPI:
    """The fast path, each request ranked on its own."""
    return create_app(load_settings(), batch_requests=False)


def routed_app() -> FastAPI:
    """FastAPI's routing for every request (no fast path, hence no batching)."""
    return create_app(load_settings(), fast_path=False)


def factory_name(fast_path: bool, batch_requests: bool) -> str:
    if not fast_path:
        return routed_app.__name__
    return shipped_app.__name__ if batch_requests else unbatched_app.__name__


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.serve_variant", description=__doc__)
    parser.add_argument("--no-fast-path", action="store_true", help="FastAPI routes everything")
    parser.add_argument("--no-batching", action="store_true", help="no turn batching")
    parser.add_argument("--http", choices=HTTP_PROTOCOLS, default="coalescing")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-access-log", action="store_true")
    arguments = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.require_admin_token()  # fail before uvicorn starts
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    factory = factory_name(not arguments.no_fast_path, not arguments.no_batching)
    uvicorn.run(
        f"bench.serve_variant:{factory}",
        factory=True,
        host=arguments.host,
        port=arguments.port,
        workers=arguments.workers,
        access_log=not arguments.no_access_log,
        **uvicorn_connection_options(settings, arguments.http),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
