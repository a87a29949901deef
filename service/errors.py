"""The service's own errors and the one place where every domain error becomes an HTTP status.

| error                                   | status |
|-----------------------------------------|--------|
| :class:`NotFoundError` (user, job…)     | 404    |
| :class:`ConfigError`, :class:`DataError`, :class:`BudgetError`, :class:`LimitError` | 422 |
| :class:`ConflictError` (job finished)   | 409    |
| :class:`QueueFullError`                 | 429 (with ``Retry-After``) |
| :class:`NotReadyError` (no model)       | 503    |
| :class:`ArtifactError`                  | 503    |
| ``sqlite3.OperationalError`` (job store) | 503 (with ``Retry-After``) |
| :class:`AuthError` (missing / wrong)    | 401 / 403 |
| any other :class:`CiessError`           | 500    |

Bodies follow FastAPI's shape, ``{"detail": "<message>"}``, and FastAPI's list of errors for a
request that fails validation (422). Every body is bounded: a message is cut to
:data:`MAX_MESSAGE_CHARS`, a validation error echoes at most :data:`MAX_ECHO_CHARS` of the value
it refused (a summary for a list or an object) and at most :data:`MAX_ERRORS_SHOWN` errors, so a
request can neither make the answer as large as itself nor put a value in it that JSON cannot
hold (``NaN``, ``Infinity``). A body over the size limit (413) is answered ahead of all this, by
:class:`service.limits.BodySizeLimit`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ciess_core.errors import ArtifactError, CiessError, ConfigError, DataError
from service.schemas import ErrorMessage, ValidationErrors

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1024
MAX_ECHO_CHARS = 64
MAX_ERRORS_SHOWN = 10
_LARGEST_ECHOED_INTEGER = 10**20  # 2**63 - 1, SQLite's largest, still shows


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


class LimitError(ServiceError, ValueError):
    """A request over one of the service's limits (ids per batch, id length): 422."""


class QueueFullError(ServiceError):
    """Too many jobs queued already (429); ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
    if isinstance(error, (BudgetError, ConfigError, DataError, LimitError)):
        return 422
    if isinstance(error, QueueFullError):
        return 429
    if isinstance(error, (NotReadyError, ArtifactError)):
        return 503
    return 500


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and tail around " … "
    (the tail of a message often holds its counts); lone surrogates, which JSON text may carry
    but UTF-8 cannot encode, are shown as escapes."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    tail = max(limit // 4, 1)
    return f"{text[: max(limit - tail - 3, 0)]} … {text[-tail:]}"


def echo(value: Any) -> Any:
    """What an error body may show of a value a request sent: JSON-safe and bounded."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < _LARGEST_ECHOED_INTEGER else _digits(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return bounded(value, MAX_ECHO_CHARS)
    if isinstance(value, (list, tuple)):
        return f"<a list of {len(value)} values>"
    if isinstance(value, dict):
        return f"<an object of {len(value)} fields>"
    return bounded(str(value), MAX_ECHO_CHARS)


def _digits(value: int) -> str:
    """A large integer, described by its digit count: ``str()`` of it costs quadratic time."""
    size = abs(value)
    digits = math.floor(math.log10(size)) + 1
    if 10 ** (digits - 1) > size:  # log10 rounds up just below a power of ten
        digits -= 1
    return f"<an integer of {digits} digits>"


def _validation_error(error: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "type": str(error.get("type", "")),
        "loc": [part if isinstance(part, int) else echo(str(part)) for part in error["loc"]],
        "msg": bounded(str(error.get("msg", "")), 256),
    }
    if "input" in error:
        shown["input"] = echo(error["input"])
    context = error.get("ctx")
    if isinstance(context, dict):
        shown["ctx"] = {bounded(str(key), MAX_ECHO_CHARS): echo(v) for key, v in context.items()}
    return shown


def validation_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's 422 list (type, loc, msg, input, ctx), bounded as the module says."""
    shown = [_validation_error(error) for error in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        hidden = len(errors) - MAX_ERRORS_SHOWN
        shown.append({"type": "more_errors", "loc": [], "msg": f"and {hidden} more error(s)"})
    return shown


async def _handle(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, CiessError):  # registered for CiessError only
        raise error
    status = status_of(error)
    message = bounded(str(error))
    if status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(error, QueueFullError):
        headers = {"Retry-After": str(error.retry_after)}
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


STORE_RETRY_SECONDS = 1


async def _store_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The job store's SQLite file cannot be opened or stays locked (the process is out of
    descriptors, the disk is gone): 503, the request may be retried."""
    if not isinstance(error, sqlite3.OperationalError):  # registered for it only
        raise error
    logger.error("%s %s: job store unavailable: %s", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": f"the job store is unavailable for now ({bounded(str(error), 200)})"},
        status_code=503,
        headers={"Retry-After": str(STORE_RETRY_SECONDS)},
    )


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, RequestValidationError):  # registered for it only
        raise error
    return JSONResponse({"detail": validation_errors(error.errors())}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Map every :class:`CiessError` to its status (see the table above), and answer requests
    that fail validation with a bounded 422."""
    app.add_exception_handler(CiessError, _handle)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(sqlite3.OperationalError, _store_unavailable)


_STATUS_DOCS: dict[int, str] = {
    400: "the body is not UTF-8, or JSON that cannot be read (an integer of over 4,300 digits)",
    401: "no bearer token",
    403: "wrong bearer token",
    404: "no such user, job or route",
    409: "the request does not fit the resource's state",
    413: "the body is larger than the max_body_bytes setting (1 MiB by default); answered "
    "before authentication or parsing reads it, and the connection is closed",
    422: "invalid input: FastAPI's list of errors (each naming its field, echoing at most 64 "
    "characters of the value) or a message (a limit exceeded, an impossible budget)",
    429: "too many jobs queued already (the max_queued_jobs setting); retry after the "
    "Retry-After header's seconds",
    503: "no model loaded yet, or (admin routes) the job store cannot be reached for now; "
    "retry after the Retry-After header's seconds when it is given",
}


def error_responses(
    statuses: Iterable[int], described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error ``statuses``, described as above unless ``described``
    says more for a status."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": (described or {}).get(status, _STATUS_DOCS[status])}
        entry["model"] = ValidationErrors | ErrorMessage if status == 422 else ErrorMessage
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
            }
        documented[status] = entry
    return documented
