"""Liveness, readiness and the Prometheus scrape endpoint (unversioned, outside ``/v1``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import HolderDep, MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="A model is loaded and answers",
    responses={503: {"description": "no model loaded yet"}},
)
async def readyz(holder: HolderDep) -> JSONResponse:
    current = holder.current
    if current is None:
        return JSONResponse({"status": "not ready", "model_version": None}, status_code=503)
    return JSONResponse({"status": "ready", "model_version": current.version})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
