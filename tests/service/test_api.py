"""The API in-process (TestClient): top-k parity, bad input, admin auth, budgets, metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ciess_core.artifact.scorer import load_scorer
from ciess_core.errors import ConfigError
from service.jobs.store import JobState, JobStore
from service.main import create_app
from service.schemas import MAX_BATCH_USERS, MAX_K
from service.settings import Settings
from tests.service.conftest import TOKEN, BaseArtifact, admin_headers


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_top_k_equals_the_artifact_scorer(client: TestClient, base_model: BaseArtifact) -> None:
    scorer = load_scorer(base_model.artifact)
    users = ["u0", "u5", "u77"]
    items, scores = scorer.recommend(scorer.user_index(users), 10)
    for row, user in enumerate(users):
        response = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
        assert response.status_code == 200
        body = response.json()
        assert body["model_version"] == "v1-base"
        assert response.headers["X-Model-Version"] == "v1-base"
        assert [entry["item_id"] for entry in body["items"]] == scorer.item_labels(
            items[row]
        ).tolist()
        np.testing.assert_allclose([e["score"] for e in body["items"]], scores[row], rtol=1e-6)
    batch = client.post("/v1/recommendations", json={"user_ids": users, "k": 10})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["user_id"] for r in results] == users
    for row, result in enumerate(results):
        labels = scorer.item_labels(items[row]).tolist()
        assert [entry["item_id"] for entry in result["items"]] == labels


def test_seen_items_are_excluded_unless_asked(client: TestClient, base_model: BaseArtifact) -> None:
    scorer = load_scorer(base_model.artifact)
    user = int(scorer.user_index(["u3"])[0])
    seen = set(scorer.item_labels(scorer.seen[user].indices).tolist())
    k = scorer.num_items
    kept = client.get("/v1/users/u3/recommendations", params={"k": k}).json()["items"]
    assert {entry["item_id"] for entry in kept}.isdisjoint(seen)
    assert len(kept) == scorer.num_items - len(seen)  # empty slots are dropped
    everything = client.get(
        "/v1/users/u3/recommendations", params={"k": k, "exclude_seen": False}
    ).json()["items"]
    assert len(everything) == scorer.num_items


def test_item_filter_ranks_only_the_given_items(
    client: TestClient, base_model: BaseArtifact
) -> None:
    scorer = load_scorer(base_model.artifact)
    user = scorer.user_index(["u1"])
    allowed = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"]
    response = client.get(
        "/v1/users/u1/recommendations",
        params={"k": 3, "item_id": allowed, "exclude_seen": False},
    )
    assert response.status_code == 200
    got = [entry["item_id"] for entry in response.json()["items"]]
    internal = np.asarray([list(scorer.external_item_ids).index(item) for item in allowed])
    scores = scorer.score_all(user)[0, internal]
    expected = [allowed[i] for i in np.argsort(-scores, kind="stable")[:3]]
    assert got == expected
    batch = client.post(
        "/v1/recommendations", json={"user_ids": ["u1"], "k": 3, "item_ids": ["nope"]}
    )
    assert batch.status_code == 422
    assert "unknown item" in batch.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "phrase"),
    [
        ("get", "/v1/users/nobody/recommendations", None, 404, "unknown user"),
        ("get", "/v1/users/u1/recommendations?k=0", None, 422, ""),
        ("get", f"/v1/users/u1/recommendations?k={MAX_K + 1}", None, 422, ""),
        ("post", "/v1/recommendations", {"user_ids": ["u1", "ghost"]}, 404, "ghost"),
        ("post", "/v1/recommendations", {"user_ids": []}, 422, ""),
        ("post", "/v1/recommendations", {"user_ids": ["u1"] * (MAX_BATCH_USERS + 1)}, 422, ""),
        ("post", "/v1/recommendations", {"user_ids": ["u1"], "k": 0}, 422, ""),
    ],
)
def test_bad_input(
    client: TestClient, method: str, path: str, payload: object, status: int, phrase: str
) -> None:
    response = client.request(method.upper(), path, json=payload)
    assert response.status_code == status, response.text
    assert phrase in str(response.json()["detail"])


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/recommendations",
        content=b'{"user_ids": ["u1"',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_model_information(client: TestClient) -> None:
    body = client.get("/v1/model").json()
    assert body["version"] == "v1-base"
    assert body["backbone"] == "lightgcn"
    assert body["max_size"] == 16
    assert body["sparsity"] == 0.0
    assert body["num_users"] == 120 and body["num_items"] == 80
    assert body["bytes"]["embedding_values"] == 200 * 16 * 4
    assert body["metrics"]["test"] == {"recall@20": 0.5}
    assert body["created_at"]


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "v1-base"
    empty = dataclasses.replace(settings, artifact_dir=None)
    with TestClient(create_app(empty)) as not_ready:
        assert not_ready.get("/readyz").status_code == 503
        assert not_ready.get("/v1/users/u1/recommendations").status_code == 503
        assert not_ready.get("/healthz").status_code == 200


def test_metrics_report_latency_status_version_and_jobs(client: TestClient) -> None:
    client.get("/v1/users/u1/recommendations")
    client.get("/v1/users/nobody/recommendations")
    text = client.get("/metrics").text
    route = 'route="/v1/users/{user_id}/recommendations"'
    assert f'ciess_request_duration_seconds_bucket{{le="0.01",method="GET",{route}}}' in text
    assert f'ciess_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert f'ciess_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert 'ciess_model_info{version="v1-base"} 1.0' in text
    assert 'ciess_jobs{state="queued"} 0.0' in text


def test_admin_needs_the_right_token(client: TestClient) -> None:
    assert client.get("/v1/admin/jobs").status_code == 401
    assert client.get("/v1/admin/jobs").headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/admin/jobs", headers=admin_headers("wrong")).status_code == 403
    assert client.get("/v1/admin/jobs", headers=admin_headers()).status_code == 200
    budget = client.post("/v1/admin/budget", json={"target_sparsity": 0.5})
    assert budget.status_code == 401


def test_no_admin_token_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="CIESS_ADMIN_TOKEN"):
        create_app(dataclasses.replace(settings, admin_token=""))
    open_app = create_app(dataclasses.replace(settings, admin_token="", dev_mode=True))
    with TestClient(open_app) as dev_client:
        assert dev_client.get("/v1/admin/jobs").status_code == 200


def test_budget_creates_a_job(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/v1/admin/budget", json={"target_sparsity": 0.75}, headers=admin_headers()
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["kind"] == "budget"
    assert job["params"]["target_sparsity"] == 0.75
    assert job["params"]["max_parameters"] == 200 * 4
    assert response.headers["Location"] == f"/v1/admin/jobs/{job['id']}"
    listed = client.get("/v1/admin/jobs", headers=admin_headers()).json()["jobs"]
    assert [entry["id"] for entry in listed] == [job["id"]]
    by_bytes = client.post(
        "/v1/admin/budget", json={"max_bytes": 8_000}, headers=admin_headers()
    ).json()
    assert by_bytes["params"]["requested"] == {"max_bytes": 8_000.0}
    assert 0 < by_bytes["params"]["target_sparsity"] < 1
    cancelled = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin_headers())
    assert cancelled.json()["state"] == "cancelled"
    again = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin_headers())
    assert again.status_code == 200  # cancelling a cancelled job is idempotent
    store = JobStore(settings.job_db_path)
    assert store.get(job["id"]).state is JobState.CANCELLED
    store.finish(store.claim("test", 1).id, JobState.SUCCEEDED, "done")  # type: ignore[union-attr]
    finished = client.post(f"/v1/admin/jobs/{by_bytes['id']}/cancel", headers=admin_headers())
    assert finished.status_code == 409
    assert client.get("/v1/admin/jobs/999", headers=admin_headers()).status_code == 404
    # Past SQLite's 64-bit integers (found by the schemathesis run in docs/benchmarks/serving.md).
    huge = f"/v1/admin/jobs/{2**64}"
    assert client.get(huge, headers=admin_headers()).status_code == 422
    assert client.post(huge + "/cancel", headers=admin_headers()).status_code == 422


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        ({"target_sparsity": 0.99}, "at least 1 of 16"),
        ({"max_parameters": 10}, "below the minimum 200"),
        ({"max_bytes": 100}, "below the smallest model"),
        ({"target_sparsity": 0.5, "max_bytes": 10**6}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_budget_that_cannot_be_met_is_422(
    client: TestClient, payload: dict[str, float], phrase: str
) -> None:
    response = client.post("/v1/admin/budget", json=payload, headers=admin_headers())
    assert response.status_code == 422
    assert phrase in response.json()["detail"]


def test_reload_keeps_serving(client: TestClient) -> None:
    response = client.post("/v1/admin/reload", headers=admin_headers(TOKEN))
    assert response.status_code == 200
    assert response.json() == {"model_version": "v1-base", "swapped": True}


def test_openapi_documents_versioned_endpoints_with_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/model",
        "/v1/admin/budget",
        "/v1/admin/jobs/{job_id}/cancel",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    components = schema["components"]["schemas"]
    assert components["BudgetRequest"]["examples"]
    assert components["RecommendationResponse"]["examples"]
