"""Builds the app: settings in, routers, error handlers and metrics on; resources in lifespan.

``uvicorn --factory service.main:app_from_environment`` or ``ciess serve`` run it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from ciess_core import __version__
from service.batching import TurnBatcher
from service.errors import install_error_handlers
from service.fast_path import TopKFastPath
from service.jobs.store import JobStore
from service.limits import BodySizeLimit
from service.metrics import Metrics, MetricsMiddleware
from service.model_holder import ModelHolder
from service.routers import admin, health, models, recommend
from service.settings import Settings, load_settings

logger = logging.getLogger(__name__)


async def _watch_pointer(app: FastAPI) -> None:
    """Swap in a newly promoted artifact (``current.json`` changed) every poll interval, and fail
    jobs whose worker stopped heartbeating."""
    settings: Settings = app.state.settings
    holder: ModelHolder = app.state.holder
    metrics: Metrics = app.state.metrics
    store: JobStore = app.state.store
    last_sweep = 0.0
    while True:
        await asyncio.sleep(settings.poll_seconds)
        if time.monotonic() - last_sweep > settings.stale_after_seconds / 4:
            # With no worker left to notice, a crashed job would stay "running" forever.
            last_sweep = time.monotonic()
            try:
                await run_in_threadpool(store.fail_stale, settings.stale_after_seconds)
            except sqlite3.Error:
                logger.exception("could not sweep stale jobs")
        try:
            if await run_in_threadpool(holder.refresh, settings):
                metrics.swaps.inc()
        except Exception:
            # The old model keeps serving; the failed version is not retried until a reload.
            metrics.swap_failures.inc()
            logger.exception("could not load the promoted artifact; the old model keeps serving")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.store = JobStore(settings.job_db_path)
    holder: ModelHolder = app.state.holder
    # A configured artifact that does not load stops the start-up (better than serving nothing).
    await run_in_threadpool(holder.refresh, settings)
    if holder.current is None:
        logger.warning("no artifact configured (CIESS_ARTIFACT_DIR): not ready until one is")
    watcher = asyncio.create_task(_watch_pointer(app))
    try:
        yield
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


def create_app(
    settings: Settings, *, fast_path: bool = True, batch_requests: bool = True
) -> FastAPI:
    """The service's app; raises ConfigError without a long enough admin token (unless dev mode).

    Args:
        settings: the service settings.
        fast_path: answer plain single-user top-k requests ahead of FastAPI's routing
            (:mod:`service.fast_path`; same answers, a fraction of the CPU). Off only to measure
            or test the FastAPI route alone.
        batch_requests: rank the fast path's requests of one event-loop turn as one batch
            (:mod:`service.batching`; same rankings, less CPU per request under load). Off only
            to measure it.
    """
    settings.require_admin_token()
    if settings.dev_mode and not settings.admin_token:
        logger.warning("development mode: admin endpoints are open (no CIESS_ADMIN_TOKEN)")
    app = FastAPI(
        title="ciess",
        version=__version__,
        description="Top-k recommendations from CIESS-compressed embeddings, and admin budget "
        "updates that retrain and hot-swap the served model.",
        lifespan=lifespan,
    )
    holder = ModelHolder()
    app.state.settings = settings
    app.state.holder = holder
    app.state.store = None
    batcher = TurnBatcher() if fast_path and batch_requests else None
    app.state.metrics = Metrics(holder, lambda: app.state.store, batcher)
    # Each middleware added runs outside the ones before it: metrics, then the body limit (ahead
    # of everything that could read a body, and counted in the metrics), then the fast path.
    if fast_path:
        app.add_middleware(TopKFastPath, holder=holder, batcher=batcher)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    for router in (health.router, recommend.router, models.router, admin.router):
        app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """The app with settings from ``CIESS_CONFIG`` and ``CIESS_*`` (for ``uvicorn --factory``)."""
    return create_app(load_settings())
