"""Builds the app: settings in, routers, error handlers and metrics on; resources in lifespan.

``uvicorn --factory service.main:app_from_environment`` or ``ciess serve`` run it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from ciess_core import __version__
from service.access_log import install_access_log_redaction
from service.batching import TurnBatcher
from service.errors import install_error_handlers
from service.fast_path import TopKFastPath
from service.jobs.store import JobStore
from service.limits import BodySizeLimit
from service.metrics import Metrics, MetricsMiddleware
from service.model_holder import ModelHolder, reload_generation
from service.routers import admin, health, models, recommend, versions
from service.routers.docs import install_docs
from service.settings import Settings, load_settings
from service.versions import fallback_candidates

logger = logging.getLogger(__name__)


async def _watch_pointer(app: FastAPI) -> None:
    """Every poll interval: fail running jobs whose worker is gone (its pid, at once; or its
    heartbeat, after ``stale_after_seconds``), swap in a newly promoted artifact
    (``current.json`` changed) or reload one (the reload generation changed: another process
    was asked to reload), and copy the turn batcher's counts into the metrics."""
    settings: Settings = app.state.settings
    holder: ModelHolder = app.state.holder
    metrics: Metrics = app.state.metrics
    store: JobStore = app.state.store
    while True:
        await asyncio.sleep(settings.poll_seconds)
        try:
            failed = await run_in_threadpool(store.fail_stale, settings.stale_after_seconds)
        except sqlite3.Error:
            logger.exception("could not sweep the jobs of dead workers")
        else:
            if failed:
                logger.warning("jobs %s failed: their worker died", failed)
        generation = await run_in_threadpool(reload_generation, settings)
        forced = generation != app.state.reload_generation
        app.state.reload_generation = generation
        try:
            if await run_in_threadpool(holder.refresh, settings, forced):
                metrics.swaps.inc()
        except Exception:
            # The old model keeps serving; the failed version is tried again after a backoff.
            metrics.swap_failures.inc()
            logger.exception("could not load the promoted artifact; the old model keeps serving")
        metrics.sync()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store = app.state.store = JobStore(settings.job_db_path)
    holder: ModelHolder = app.state.holder
    app.state.reload_generation = reload_generation(settings)
    # A pointer to an artifact that does not load falls back to the last good version; with
    # none that loads, the service starts not ready (never a crash loop under a restart policy).
    fallbacks = await run_in_threadpool(fallback_candidates, settings, store)
    await run_in_threadpool(holder.start, settings, fallbacks)
    if holder.current is None and holder.fallback is None:
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
    install_access_log_redaction()
    app = FastAPI(
        title="ciess",
        version=__version__,
        description="Top-k recommendations from CIESS-compressed embeddings, and admin budget "
        "updates that retrain and hot-swap the served model.",
        lifespan=lifespan,
        docs_url=None,  # install_docs: the same pages from local files, not from CDNs
        redoc_url=None,
    )
    holder = ModelHolder()
    app.state.settings = settings
    app.state.holder = holder
    app.state.store = None
    batcher = TurnBatcher() if fast_path and batch_requests else None
    app.state.reload_generation = None
    app.state.metrics = Metrics(holder, lambda: app.state.store, batcher, settings.poll_seconds)
    # Each middleware added runs outside the ones before it: metrics, then the body limit (ahead
    # of everything that could read a body, and counted in the metrics), then the fast path.
    if fast_path:
        app.add_middleware(TopKFastPath, holder=holder, batcher=batcher)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    for router in (health.router, recommend.router, models.router, admin.router, versions.router):
        app.include_router(router)
    install_docs(app)
    return app


def app_from_environment() -> FastAPI:
    """The app with settings from ``CIESS_CONFIG`` and ``CIESS_*`` (for ``uvicorn --factory``)."""
    return create_app(load_settings())
