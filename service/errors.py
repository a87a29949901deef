"""The service's own errors and the one place where every domain error becomes an HTTP status.

| error                                   | status |
|-----------------------------------------|--------|
| :class:`NotFoundError` (user, job…)     | 404    |
| :class:`ConfigError`, :class:`DataError`, :class:`BudgetError` | 422 |
| :class:`ConflictError` (job finished)   | 409    |
| :class:`NotReadyError` (no model)       | 503    |
| :class:`ArtifactError`                  | 503    |
| :class:`AuthError` (missing / wrong)    | 401 / 403 |
| any other :class:`CiessError`           | 500    |

Bodies follow FastAPI's shape, ``{"detail": "<message>"}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ciess_core.errors import ArtifactError, CiessError, ConfigError, DataError

logger = logging.getLogger(__name__)


class ServiceError(CiessError):
    """Base class of the errors the service raises on purpose."""


class NotFoundError(ServiceError):
    """A user, item or job that the request names does not exist."""


class BudgetError(ServiceError, ValueError):
    """A budget that cannot be met (e.g. less than one dimension per entity)."""


class ConflictError(ServiceError):
    """The request does not fit the resource's state (cancelling a finished job)."""


class NotReadyError(ServiceError):
    """No model is loaded yet."""


class AuthError(ServiceError):
    """Admin credentials missing (``missing=True``: 401) or wrong (403)."""

    def __init__(self, message: str, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def status_of(error: CiessError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(error, AuthError):
        return 401 if error.missing else 403
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, (BudgetError, ConfigError, DataError)):
        return 422
    if isinstance(error, (NotReadyError, ArtifactError)):
        return 503
    return 500


async def _handle(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, CiessError):  # registered for CiessError only
        raise error
    status = status_of(error)
    if status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every :class:`CiessError` to its status (see the table above)."""
    app.add_exception_handler(CiessError, _handle)
