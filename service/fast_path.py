"""The single-user top-k route answered straight from ASGI, ahead of FastAPI's routing.

``GET /v1/users/{user_id}/recommendations`` is what a recommender service answers most, and the
ranking itself takes tens of microseconds per user (docs/benchmarks/serving.md); FastAPI's
routing, dependency injection, parameter validation and response handling cost several times
that. This middleware answers the plain form of
that request, a known user with ``k`` and ``exclude_seen`` given as FastAPI itself would accept
them, with the very same body and headers as the FastAPI route (:mod:`service.routers.recommend`),
which stays in place, documented in the OpenAPI schema, and handles everything else: item
filters, pages (``offset``), the popularity fallback, any other query parameter (a 422 there:
never ignored), values the fast path does not recognise, unknown users (404, or the fallback),
out-of-range ``k`` (422), no model (503). The plain request pays for none of these: its query is
parsed as before, and the first name that is not ``k`` or ``exclude_seen`` hands it on.
Requests that arrive in the same event-loop turn are ranked as one batch (:mod:`service.batching`)
unless :func:`service.main.create_app` is told otherwise (``batch_requests=False``, for
benchmarks).
tests/service/test_fast_path.py checks that both give the same answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np
from starlette.types import ASGIApp, Receive, Scope, Send

from service.batching import TurnBatcher
from service.model_holder import ModelHolder
from service.ranking import rank_internal, recommendation_json
from service.routers.recommend import VERSION_HEADER
from service.schemas import MAX_K

ROUTE = "/v1/users/{user_id}/recommendations"
_PATH = re.compile(r"^/v1/users/([^/]+)/recommendations$")
_INTEGER = re.compile(r"^[0-9]{1,7}$")
# What pydantic reads as a bool in a query string (lower-cased), and nothing else.
_BOOLEANS = {
    "true": True, "1": True, "yes": True, "on": True, "t": True, "y": True,
    "false": False, "0": False, "no": False, "off": False, "f": False, "n": False,
}  # fmt: skip


@dataclass(frozen=True)
class _Route:
    """Stands in for the FastAPI route in the scope, so that metrics label it the same way."""

    path: str = ROUTE


_MATCHED = _Route()


def _parse(query: bytes) -> tuple[int, bool] | None:
    """(k, exclude_seen) of a plain query string; None when FastAPI should decide."""
    k, exclude_seen = 20, True
    seen_names = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen_names:
            return None  # repeated parameters: FastAPI's rules
        seen_names.add(name)
        if name == "k" and _INTEGER.match(value) and 1 <= int(value) <= MAX_K:
            k = int(value)
        elif name == "exclude_seen" and value.lower() in _BOOLEANS:
            exclude_seen = _BOOLEANS[value.lower()]
        else:
            return None
    return k, exclude_seen


class TopKFastPath:
    """ASGI middleware: answers plain single-user top-k requests, passes everything else on."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, batcher: TurnBatcher | None) -> None:
        self.app = app
        self.holder = holder
        self.batcher = batcher  # None: each request ranked on its own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.match(scope["path"])
            model = self.holder.current
            if match is not None and model is not None:
                parsed = _parse(scope.get("query_string", b""))
                user_id = match.group(1)
                user = model.scorer.find_user(user_id) if parsed is not None else -1
                if parsed is not None and user >= 0:
                    k, exclude_seen = parsed
                    if self.batcher is None:
                        users = np.array([user], dtype=np.int64)
                        (ranking,) = rank_internal(model, users, k, exclude_seen)
                    else:
                        ranking = await self.batcher.rank(model, user, k, exclude_seen)
                    body = recommendation_json(user_id, ranking, model.version)
                    scope["route"] = _MATCHED
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json"),
                                (VERSION_HEADER.lower().encode(), model.version.encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
