"""Liveness, readiness and the Prometheus scrape endpoint (unversioned, outside ``/v1``)."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import HolderDep, MetricsDep, SettingsDep
from service.jobs.store import JobStore, worker_fresh_seconds
from service.model_holder import Fallback
from service.schemas import JobsReadiness, ModelFallback, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _jobs(store: JobStore | None, poll_seconds: float) -> JobsReadiness:
    if store is None:
        return JobsReadiness(can_run=False, workers=0)
    try:
        workers = len(store.live_workers(worker_fresh_seconds(poll_seconds)))
    except sqlite3.Error:
        workers = 0
    return JobsReadiness(can_run=workers > 0, workers=workers)


def fallback_view(fallback: Fallback | None) -> ModelFallback | None:
    if fallback is None:
        return None
    return ModelFallback(version=fallback.version, reason=fallback.reason, at=fallback.at)


@router.get(
    "/readyz",
    summary="A model is loaded and answers; the body also says whether jobs can run",
    response_model=Readiness,
    responses={
        200: {
            "description": "a model is loaded; ``jobs.can_run`` is false while no job worker "
            "is alive (budget jobs then wait in the queue), without changing the status",
            "content": {"application/json": {"example": {
                "status": "ready", "model_version": "20250101T120000Z-job3",
                "jobs": {"can_run": True, "workers": 1}, "fallback_from": None}}},
        },
        503: {"description": "no model loaded yet", "model": Readiness},
    },
)  # fmt: skip
async def readyz(request: Request, holder: HolderDep, settings: SettingsDep) -> JSONResponse:
    jobs = await run_in_threadpool(_jobs, request.app.state.store, settings.poll_seconds)
    current = holder.current
    body = Readiness(
        status="not ready" if current is None else "ready",
        model_version=None if current is None else current.version,
        jobs=jobs,
        fallback_from=fallback_view(holder.fallback),
    )
    return JSONResponse(body.model_dump(), status_code=503 if current is None else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    metrics.sync()
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
