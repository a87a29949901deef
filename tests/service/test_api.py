"""The API in-process (TestClient): top-k parity, bad input, admin auth, budgets, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ciess_core.artifact.reader import read_manifest
from ciess_core.artifact.scorer import load_scorer
from ciess_core.errors import ConfigError
from service.jobs.store import JobState, JobStore
from service.main import create_app
from service.schemas import MAX_BATCH_USERS, MAX_K
from service.settings import Settings
from tests.service.conftest import TOKEN, BaseArtifact, admin_headers, export_lightgcn, live_server


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
    assert body["sparsity"] == 0.0 and body["budget_bytes"] is None  # no byte budget asked
    assert body["num_users"] == 120 and body["num_items"] == 80
    stores = body["bytes"]["embedding_stores_detail"]
    # .npy header + data; every size is 16: one run (size, count) as two uint32
    assert stores == {"values": 128 + 200 * 16 * 4, "sizes": 128 + 2 * 4}
    assert body["bytes"]["embedding_stores"] == sum(stores.values())
    assert body["metrics"]["test"] == {"recall@20": 0.5}
    assert body["created_at"]


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "v1-base"
    empty = settings.replace(artifact_dir=None)
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
    model = client.get("/v1/model").json()["bytes"]
    for kind, value in (
        ("stored", model["embedding_stores"]),
        ("dense_fp32", model["dense_equivalent"]),
        ("resident", model["resident"]),
    ):
        assert f'ciess_model_bytes{{kind="{kind}"}} {float(value)}' in text


def test_metric_labels_stay_few_whatever_methods_and_paths_clients_send(
    client: TestClient,
) -> None:
    """Invented methods (h11 takes any token) count as ``other``; paths count as their route
    template, or ``unmatched``: no label set per user id, path or method."""
    for method in ("BREW", "X-INVENTED-1", "PROPFIND"):
        client.request(method, "/v1/users/u1/recommendations")
        client.request(method, "/nowhere/at-all")
    client.get("/v1/users/someone-new/recommendations")
    client.request("DELETE", "/no/such/path-7")
    text = client.get("/metrics").text
    route = 'route="/v1/users/{user_id}/recommendations"'
    assert f'ciess_requests_total{{method="other",{route},status="405"}} 3.0' in text
    assert 'ciess_requests_total{method="other",route="unmatched",status="404"} 3.0' in text
    assert 'ciess_requests_total{method="DELETE",route="unmatched",status="404"} 1.0' in text
    assert f'ciess_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    for raw in ("BREW", "X-INVENTED-1", "PROPFIND", "someone-new", "at-all", "path-7"):
        assert raw not in text


def test_a_job_store_that_cannot_be_opened_is_a_503_to_retry(
    client: TestClient, settings: Settings
) -> None:
    """As when the process is out of descriptors: SQLite cannot open the file."""
    path = settings.job_db_path
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()  # a folder where the database file was: "unable to open database file"
    answer = client.get("/v1/admin/jobs", headers=admin_headers())
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert "job store is unavailable" in answer.json()["detail"]
    assert client.get("/v1/users/u1/recommendations").status_code == 200  # serving goes on


def test_admin_needs_the_right_token(client: TestClient) -> None:
    assert client.get("/v1/admin/jobs").status_code == 401
    assert client.get("/v1/admin/jobs").headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/admin/jobs", headers=admin_headers("wrong")).status_code == 403
    assert client.get("/v1/admin/jobs", headers=admin_headers()).status_code == 200
    budget = client.post("/v1/admin/budget", json={"target_sparsity": 0.5})
    assert budget.status_code == 401


def test_no_admin_token_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="CIESS_ADMIN_TOKEN"):
        create_app(settings.replace(admin_token=""))
    with pytest.raises(ConfigError, match="at least 32"):
        create_app(settings.replace(admin_token="x" * 31))
    open_app = create_app(settings.replace(admin_token="", dev_mode=True))
    with TestClient(open_app) as dev_client:
        assert dev_client.get("/v1/admin/jobs").status_code == 200


def test_budget_creates_a_job(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/v1/admin/budget", json={"target_sparsity": 0.75}, headers=admin_headers()
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["kind"] == "budget" and job["existing"] is False
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


def test_an_identical_budget_answers_its_job(client: TestClient) -> None:
    first = client.post("/v1/admin/budget", json={"target_sparsity": 0.75}, headers=admin_headers())
    assert first.status_code == 202
    # The same budget in another form (200 · 16 · 0.25 parameters), with the default method
    # (the job_method setting: "search", the product pipeline).
    for body in ({"target_sparsity": 0.75}, {"max_parameters": 800, "method": "search"}):
        again = client.post("/v1/admin/budget", json=body, headers=admin_headers())
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"] and again.json()["existing"] is True
        assert again.headers["Location"] == first.headers["Location"]
    other_method = client.post(
        "/v1/admin/budget",
        json={"target_sparsity": 0.75, "method": "equal"},
        headers=admin_headers(),
    )
    assert other_method.status_code == 202
    assert len(client.get("/v1/admin/jobs", headers=admin_headers()).json()["jobs"]) == 2


def test_a_byte_budget_only_a_narrower_type_meets_is_the_planners_job(client: TestClient) -> None:
    """The served model is float32: 1,000 bytes cannot hold one float32 dimension per entity
    (1,256 bytes) but can in int4-table (686). The search method's byte planner takes it; the
    equal method, which keeps the served type, cannot. Byte jobs are the same job only at the
    same bytes."""
    first = client.post("/v1/admin/budget", json={"max_bytes": 1_000}, headers=admin_headers())
    assert first.status_code == 202, first.text
    assert first.json()["params"]["max_parameters"] == 200  # one dimension each
    again = client.post("/v1/admin/budget", json={"max_bytes": 1_000}, headers=admin_headers())
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/admin/budget", json={"max_bytes": 900}, headers=admin_headers())
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    equal = client.post(
        "/v1/admin/budget", json={"max_bytes": 1_000, "method": "equal"}, headers=admin_headers()
    )
    assert equal.status_code == 422
    assert "below the smallest model, 1256 bytes" in equal.json()["detail"]


def test_the_served_budget_is_a_no_op(client: TestClient) -> None:
    # The base model is full size: sparsity 0, or any budget above its 3,200 parameters.
    for body in ({"target_sparsity": 0.0}, {"max_parameters": 10**9}, {"max_bytes": 2**63 - 1}):
        response = client.post("/v1/admin/budget", json=body, headers=admin_headers())
        assert response.status_code == 200, response.text
        answer = response.json()
        assert "id" not in answer and "no job" in answer["message"]
        assert answer["model_version"] == "v1-base" and answer["max_parameters"] == 3200
    assert client.get("/v1/admin/jobs", headers=admin_headers()).json()["jobs"] == []
    # A different method is asked for on purpose: a job.
    searched = client.post(
        "/v1/admin/budget",
        json={"target_sparsity": 0.0, "method": "search"},
        headers=admin_headers(),
    )
    assert searched.status_code == 202
    # Asking for the served budget (and method) again takes it back: the job is superseded.
    back = client.post(
        "/v1/admin/budget",
        json={"target_sparsity": 0.0, "method": "equal"},
        headers=admin_headers(),
    )
    assert back.status_code == 200, back.text
    assert "no job" in back.json()["message"]
    assert back.json()["superseded"] == [searched.json()["id"]]
    job = client.get(f"/v1/admin/jobs/{searched.json()['id']}", headers=admin_headers()).json()
    assert job["state"] == "cancelled" and "superseded" in job["message"]


def test_a_served_model_is_made_for_a_byte_budget_only_within_its_bytes(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path
) -> None:
    """A float32 model at one dimension per entity (its sizes stored as one run) stores 1,064
    bytes. Fewer bytes resolve to the same parameter count, the floor, which only a narrower
    type meets: a job (the default method, search), not the served model. At its own bytes the
    served model is the answer."""
    # Every user and item keeps one dimension (the smallest budget there is), in float32.
    served = export_lightgcn(
        base_model.data_dir,
        tmp_path / "v1-one-dimension",
        {"target_sparsity": 1 - 1 / 16, "size_scheme": "equal"},
        sizes=torch.ones(200, dtype=torch.long),
    )
    stored = read_manifest(served).memory.stored
    assert stored == 1064
    with TestClient(create_app(settings.replace(artifact_dir=served))) as client:
        own = client.post(
            "/v1/admin/budget",
            json={"max_bytes": stored},
            headers=admin_headers(),
        )
        assert own.status_code == 200, own.text
        assert "no job" in own.json()["message"] and own.json()["max_parameters"] == 200
        fewer = client.post(
            "/v1/admin/budget",
            json={"max_bytes": stored - 64},
            headers=admin_headers(),
        )
        assert fewer.status_code == 202, fewer.text
        assert fewer.json()["params"]["max_parameters"] == 200


def test_the_budget_asked_last_supersedes_the_earlier_ones(settings: Settings) -> None:
    """A new budget cancels the queued jobs of earlier ones (running ones are flagged, and their
    worker stops them); asking again for the budget of a live job answers that job."""
    with TestClient(create_app(settings)) as client:
        ids: list[int] = []
        for sparsity in (0.5, 0.6, 0.7):
            response = client.post(
                "/v1/admin/budget", json={"target_sparsity": sparsity}, headers=admin_headers()
            )
            assert response.status_code == 202, response.text
            assert response.json()["superseded"] == ids[-1:]
            ids.append(response.json()["id"])
        same = client.post(
            "/v1/admin/budget", json={"target_sparsity": 0.7}, headers=admin_headers()
        )
        assert same.status_code == 200 and same.json()["existing"] is True
        assert same.json()["id"] == ids[-1] and same.json()["superseded"] == []
    store = JobStore(settings.job_db_path)
    assert [store.get(i).state for i in ids] == [JobState.CANCELLED] * 2 + [JobState.QUEUED]
    assert store.get(ids[0]).message == f"superseded by job {ids[1]} (a newer budget)"


def test_a_full_queue_is_429_with_retry_after(settings: Settings) -> None:
    store = JobStore(settings.job_db_path)
    for n in range(2):  # jobs of another kind, which a budget does not supersede
        store.submit("other", {"n": n})
    with TestClient(create_app(settings.replace(max_queued_jobs=2))) as client:
        full = client.post(
            "/v1/admin/budget", json={"target_sparsity": 0.7}, headers=admin_headers()
        )
        assert full.status_code == 429
        assert full.headers["Retry-After"] == "60"
        assert "max_queued_jobs" in full.json()["detail"]
    assert store.counts()[JobState.QUEUED] == 2


def test_concurrent_identical_budgets_make_one_job(settings: Settings) -> None:
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def post(_: int) -> httpx.Response:
            return client.post(
                "/v1/admin/budget", json={"target_sparsity": 0.5}, headers=admin_headers()
            )

        with ThreadPoolExecutor(max_workers=32) as pool:
            responses = list(pool.map(post, range(100)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 99 + [202]
        assert len({response.json()["id"] for response in responses}) == 1
    assert JobStore(settings.job_db_path).counts()[JobState.QUEUED] == 1


def test_reload_keeps_serving(client: TestClient) -> None:
    response = client.post("/v1/admin/reload", headers=admin_headers(TOKEN))
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("model_version", "swapped")} == {
        "model_version": "v1-base",
        "swapped": True,
    }
    # Other processes reload at their next poll (0.2 s here), then load.
    assert body["all_processes_within_seconds"] >= 0.2 + body["load_seconds"]


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
    assert "exactly one of ``target_sparsity``" in components["BudgetRequest"]["description"]
    documented = {
        ("post", "/v1/admin/budget"): {"200", "202", "400", "401", "403", "413", "422", "429"},
        ("post", "/v1/recommendations"): {"200", "400", "404", "413", "422", "503"},
        ("get", "/v1/users/{user_id}/recommendations"): {"200", "404", "422", "503"},
        ("post", "/v1/admin/jobs/{job_id}/cancel"): {"200", "404", "409", "413", "422"},
        ("post", "/v1/admin/reload"): {"200", "413", "503"},
    }
    for (method, path), statuses in documented.items():
        assert statuses <= set(paths[path][method]["responses"]), (method, path)
    budget_answers = paths["/v1/admin/budget"]["post"]["responses"]
    assert "Retry-After" in budget_answers["429"]["headers"]
    assert "existing" in components["BudgetJob"]["properties"]
    assert "message" in components["BudgetUnchanged"]["properties"]
