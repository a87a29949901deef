"""Admin tokens: accepted from the Authorization header only, and never written to the access
log (a query's secrets are redacted, an admin route's query dropped)."""

from __future__ import annotations

import logging

import httpx
import pytest

from service.access_log import REDACTED, redact_target
from service.settings import Settings
from tests.service.conftest import TOKEN, live_server


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/v1/users/u1/recommendations?k=3", "/v1/users/u1/recommendations?k=3"),
        ("/x?k=3&token=abc&access_token=def", f"/x?k=3&token={REDACTED}&access_token={REDACTED}"),
        ("/x?ACCESS%5FTOKEN=abc&api_key=z", f"/x?ACCESS%5FTOKEN={REDACTED}&api_key={REDACTED}"),
        ("/v1/admin/jobs?state=queued&t=abc", f"/v1/admin/jobs?{REDACTED}"),
        ("/v1/admin?x", f"/v1/admin?{REDACTED}"),
        ("/v1/administrator?k=1", "/v1/administrator?k=1"),
        ("/plain", "/plain"),
    ],
)
def test_redact_target(target: str, logged: str) -> None:
    assert redact_target(target) == logged


def test_a_token_in_the_query_string_is_refused_and_never_logged(settings: Settings) -> None:
    access = logging.getLogger("uvicorn.access")
    capture = _Lines()
    with live_server(settings, log_level="info") as url, httpx.Client(base_url=url) as client:
        access.addHandler(capture)  # after uvicorn configured its logging, which resets handlers
        try:
            for name in ("token", "access_token"):
                response = client.get("/v1/admin/jobs", params={name: TOKEN})
                assert response.status_code == 401  # the header is the only way in
            client.get("/v1/users/u1/recommendations", params={"k": 3, "token": TOKEN})
            client.get("/v1/model", params={"access_token": TOKEN})
        finally:
            access.removeHandler(capture)
    logged = "\n".join(capture.lines)
    assert len(capture.lines) == 4, logged
    assert TOKEN not in logged
    assert f'"GET /v1/admin/jobs?{REDACTED} HTTP/1.1" 401' in logged
    assert f"/v1/users/u1/recommendations?k=3&token={REDACTED}" in logged
    assert f"/v1/model?access_token={REDACTED}" in logged
