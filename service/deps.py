"""Dependencies as named ``Annotated`` types, and the admin routers they guard; resources live on
``app.state`` (see lifespan)."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import AuthError, NotReadyError, error_responses
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.model_holder import ModelHolder, ServedModel
from service.settings import Settings

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="the admin token (CIESS_ADMIN_TOKEN)")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def get_model(request: Request) -> ServedModel:
    """The model of this request: taken once, so a concurrent swap cannot change it midway."""
    holder: ModelHolder = request.app.state.holder
    return holder.require()


def get_store(request: Request) -> JobStore:
    store: JobStore | None = getattr(request.app.state, "store", None)
    if store is None:
        raise NotReadyError("the job store is not open")
    return store


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    if not settings.admin_token:
        return  # dev mode (settings refuse an empty token otherwise)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("admin endpoints need 'Authorization: Bearer <token>'", missing=True)
    given = credentials.credentials.encode()
    if not hmac.compare_digest(given, settings.admin_token.encode()):
        raise AuthError("the admin token is not valid", missing=False)


def admin_router() -> APIRouter:
    """A router of ``/v1/admin`` endpoints: every one needs the admin token
    (:func:`require_admin`: 401, 403) and may answer 503 (no model loaded, or no job store)."""
    return APIRouter(
        prefix="/v1/admin",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        responses=error_responses((401, 403, 503)),
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
StoreDep = Annotated[JobStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
AdminDep = Annotated[None, Depends(require_admin)]
