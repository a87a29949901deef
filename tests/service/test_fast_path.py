"""The ASGI fast path of single-user top-k answers exactly as the FastAPI route does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.ranking import recommendation_json
from service.settings import Settings

QUERIES = [
    "",
    "k=1",
    "k=7",
    "k=1000",
    "k=0",  # 422
    "k=1001",  # 422
    "k=abc",  # 422
    "k=",  # 422
    "k=%2B5",  # "+5": FastAPI's call
    "k=5&k=6",  # repeated: FastAPI's call
    "exclude_seen=false",
    "exclude_seen=0",
    "exclude_seen=OFF",
    "exclude_seen=True&k=3",
    "exclude_seen=maybe",  # 422
    "item_id=i1&item_id=i2&k=2",  # filters: FastAPI's route
    "item_id=nope",  # 422
    "unknown=1",  # 422 from both: never ignored
    "k=3&ofset=2",  # a misspelt parameter: 422 from both
    "offset=2",  # pagination: FastAPI's route
    "offset=2&k=3&exclude_seen=false",
    "offset=0",
    "offset=-1",  # 422
    "fallback=popular",  # a known user: the model answers; "nobody": popularity, flagged
    "fallback=popular&k=3&offset=1",
    "fallback=nope",  # 422
]
USERS = ["u0", "u5", "nobody", "u%2F1"]


@pytest.fixture
def clients(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(settings)) as fast,
        TestClient(create_app(settings, fast_path=False)) as plain,
    ):
        yield fast, plain


def test_fast_path_answers_like_the_fastapi_route(
    clients: tuple[TestClient, TestClient],
) -> None:
    fast, plain = clients
    answered = 0
    for user in USERS:
        for query in QUERIES:
            url = f"/v1/users/{user}/recommendations" + (f"?{query}" if query else "")
            mine, theirs = fast.get(url), plain.get(url)
            assert mine.status_code == theirs.status_code, url
            assert mine.json() == theirs.json(), url
            assert mine.headers.get("content-type") == theirs.headers.get("content-type"), url
            assert mine.headers.get("x-model-version") == theirs.headers.get("x-model-version")
            answered += mine.status_code == 200
    assert answered >= 2 * 9 + 2 * 5 + 2  # known users' plain queries, pages, fallbacks


def test_fast_path_requests_are_counted_in_the_metrics(
    clients: tuple[TestClient, TestClient],
) -> None:
    fast, _ = clients
    for _ in range(3):
        assert fast.get("/v1/users/u0/recommendations?k=4").status_code == 200
    metrics = fast.get("/metrics").text
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith("ciess_requests_total")
        and 'route="/v1/users/{user_id}/recommendations"' in row
        and 'status="200"' in row
    )
    assert float(line.rsplit(" ", 1)[1]) == 3.0


def test_fast_path_waits_for_a_model(settings: Settings) -> None:
    with TestClient(create_app(settings.replace(artifact_dir=None))) as client:
        assert client.get("/v1/users/u0/recommendations").status_code == 503


def test_a_non_finite_score_is_refused_not_written_as_null() -> None:
    assert recommendation_json("u0", (["i1"], [0.5]), "v1") == (
        b'{"user_id":"u0","items":[{"item_id":"i1","score":0.5}],"model_version":"v1"}'
    )
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="non-finite score"):
            recommendation_json("u0", (["i1", "i2"], [0.5, bad]), "v1")
