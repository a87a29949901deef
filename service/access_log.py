"""Keeps secrets out of uvicorn's access log.

Admin tokens are accepted from the ``Authorization`` header only (:mod:`service.deps`), but a
client may still put one in a URL, and uvicorn's access log writes every request's path with its
query string. :class:`RedactQuery` rewrites that line before any handler sees it: the query of an
admin route is dropped whole, and elsewhere the value of every parameter named like a secret
(``token``, ``access_token``, ``api_key``, ``password``…) becomes ``[redacted]``.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
ADMIN_PREFIX = "/v1/admin"
REDACTED = "[redacted]"
SECRET_PARAMETERS = frozenset(
    {"token", "access_token", "id_token", "refresh_token", "api_key", "apikey", "key",
     "password", "secret", "auth", "authorization"}
)  # fmt: skip


def redact_target(target: str) -> str:
    """A request target (path and query, as uvicorn logs it) with its secrets removed."""
    path, separator, query = target.partition("?")
    if not separator:
        return target
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return f"{path}?{REDACTED}"
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactQuery(logging.Filter):
    """A filter for uvicorn's access logger: every argument that looks like a request target
    (a string starting with ``/`` that has a query) goes through :func:`redact_target`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(argument) for argument in record.args)
        return True


def _redacted(value: object) -> object:
    if isinstance(value, str) and value.startswith("/") and "?" in value:
        return redact_target(value)
    return value


def install_access_log_redaction() -> None:
    """Add :class:`RedactQuery` to uvicorn's access logger (once per process)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, RedactQuery) for existing in logger.filters):
        logger.addFilter(RedactQuery())
