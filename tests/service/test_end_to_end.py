"""Over real HTTP: uvicorn on loopback, a worker process, real budget jobs, hot swaps, crashes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ciess_core.artifact.scorer import load_scorer
from service.jobs.store import JobState, JobStore
from service.jobs.worker import run_worker
from service.settings import Settings
from tests.service.conftest import (
    BaseArtifact,
    admin_headers,
    get_job,
    group_alive,
    live_server,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.slow

# A recipe whose first training (the pipeline's full model) runs until the test stops it.
LONG_RECIPE = """
max_batches = 1000000
batch_size = 256
eval_every = 0
"""


def long_jobs_of(settings: Settings, folder: Path) -> Settings:
    recipe = folder / "long-recipe.toml"
    recipe.write_text(LONG_RECIPE)
    return settings.replace(recipe_file=recipe)


def test_top_k_over_http_equals_the_artifact_scorer(
    settings: Settings, base_model: BaseArtifact
) -> None:
    scorer = load_scorer(base_model.artifact)
    users = [f"u{user}" for user in range(0, 120, 7)]
    items, _ = scorer.recommend(scorer.user_index(users), 20)
    with live_server(settings) as url, httpx.Client(base_url=url) as client:
        for row, user in enumerate(users):
            body = client.get(f"/v1/users/{user}/recommendations").json()
            got = [entry["item_id"] for entry in body["items"]]
            assert got == scorer.item_labels(items[row]).tolist()
        batch = client.post("/v1/recommendations", json={"user_ids": users, "k": 20}).json()
        for row, result in enumerate(batch["results"]):
            assert [e["item_id"] for e in result["items"]] == scorer.item_labels(
                items[row]
            ).tolist()


def test_budget_job_swaps_the_model_without_a_failed_request(settings: Settings) -> None:
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            user = 0
            while not stop.is_set():
                response = client.get(f"/v1/users/u{user % 120}/recommendations", params={"k": 5})
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["model_version"]] += 1
                user += 1

    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, timeout=10) as client,
        worker_process(settings),
    ):
        hammering = threading.Thread(target=hammer, args=(url,))
        hammering.start()
        try:
            response = client.post(
                "/v1/admin/budget", json={"target_sparsity": 0.75}, headers=admin_headers()
            )
            assert response.status_code == 202
            job_id = response.json()["id"]
            seen_stages: set[str] = set()

            def finished() -> bool:
                job = get_job(client, job_id)
                seen_stages.add(str(job["stage"]))
                return job["state"] in ("succeeded", "failed", "cancelled")

            wait_for(finished, timeout=240, every=0.2, what="the budget job")
            job = get_job(client, job_id)
            assert job["state"] == "succeeded", job["message"]
            assert job["progress"] == 1.0
            new_version = job["artifact_version"]
            assert isinstance(new_version, str) and new_version.endswith(f"job{job_id}")
            wait_for(
                lambda: client.get("/v1/model").json()["version"] == new_version,
                timeout=30,
                what="the swap",
            )
            # Keep hammering the new model for a moment.
            wait_for(lambda: versions[new_version] >= 20, timeout=30, what="new-model answers")
        finally:
            stop.set()
            hammering.join()
        model = client.get("/v1/model").json()
        assert model["target_sparsity"] == 0.75
        assert model["sparsity"] == pytest.approx(0.75)
        assert model["bytes"]["embedding_stores_detail"]["values"] == 128 + 200 * 4 * 4
        assert model["metrics"]["test"]["recall@20"] > 0
        metrics = client.get("/metrics").text
        assert f'ciess_model_info{{version="{new_version}"}} 1.0' in metrics
        assert "ciess_model_swaps_total 1.0" in metrics
        assert 'ciess_jobs{state="succeeded"} 1.0' in metrics
    assert set(statuses) == {200}, statuses
    assert versions["v1-base"] > 0 and versions[new_version] > 0
    assert {"full model", "retraining", "exporting"} & seen_stages or "done" in seen_stages


def test_a_job_killed_mid_run_fails_and_the_old_model_keeps_serving(
    settings: Settings, tmp_path: Path
) -> None:
    long_jobs = long_jobs_of(settings, tmp_path)
    with (
        live_server(long_jobs) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        job_id = client.post(
            "/v1/admin/budget", json={"target_sparsity": 0.5}, headers=admin_headers()
        ).json()["id"]
        with worker_process(long_jobs) as worker:

            def training() -> bool:
                return get_job(client, job_id)["stage"] == "full model"

            wait_for(training, timeout=120, what="the job to be training")
            # Kill the worker alone: its orphaned job process must notice and stop by itself.
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            killed = time.monotonic()
            # The API's sweep sees the recorded pid gone: failed at once, not after the
            # heartbeat's 60 s.
            wait_for(lambda: get_job(client, job_id)["state"] == "failed", timeout=5, every=0.05)
            assert time.monotonic() - killed < 5
            wait_for(lambda: not group_alive(worker.pid), timeout=30, what="the orphan to stop")
        assert run_worker(long_jobs, once=True) == 0  # a new worker finds nothing to do
        job = get_job(client, job_id)
        assert job["state"] == "failed"
        assert "worker died (process gone)" in str(job["message"])
        response = client.get("/v1/users/u1/recommendations")
        assert response.status_code == 200
        assert response.json()["model_version"] == "v1-base"


def _training_job(client: httpx.Client, budget: dict[str, int]) -> int:
    """Post ``budget`` and wait until its job trains the pipeline's full model; its id."""
    job_id = int(client.post("/v1/admin/budget", json=budget, headers=admin_headers()).json()["id"])
    wait_for(
        lambda: get_job(client, job_id)["stage"] == "full model",
        timeout=120,
        what="the job to be training",
    )
    return job_id


def test_cancelling_a_running_job_keeps_the_old_model(settings: Settings, tmp_path: Path) -> None:
    long_jobs = long_jobs_of(settings, tmp_path)
    with (
        live_server(long_jobs) as url,
        httpx.Client(base_url=url, timeout=10) as client,
        worker_process(long_jobs),
    ):
        job_id = _training_job(client, {"max_parameters": 1000})
        cancel = client.post(f"/v1/admin/jobs/{job_id}/cancel", headers=admin_headers())
        assert cancel.status_code == 200 and cancel.json()["cancel_requested"]
        wait_for(lambda: get_job(client, job_id)["state"] == "cancelled", timeout=30)
        assert "cancelled by an admin" in str(get_job(client, job_id)["message"])
        assert client.get("/v1/model").json()["version"] == "v1-base"


def test_a_newer_budget_stops_the_running_job_of_an_older_one(
    settings: Settings, tmp_path: Path
) -> None:
    long_jobs = long_jobs_of(settings, tmp_path)
    with (
        live_server(long_jobs) as url,
        httpx.Client(base_url=url, timeout=10) as client,
        worker_process(long_jobs),
    ):
        older = _training_job(client, {"max_parameters": 1000})
        newer = client.post(
            "/v1/admin/budget", json={"max_parameters": 2000}, headers=admin_headers()
        ).json()
        assert newer["superseded"] == [older]
        wait_for(lambda: get_job(client, older)["state"] == "cancelled", timeout=30)
        message = str(get_job(client, older)["message"])
        assert message.startswith(f"superseded by job {newer['id']} (a newer budget) during")
        wait_for(
            lambda: get_job(client, newer["id"])["state"] == "running",
            timeout=30,
            what="the newer budget's job to start",
        )
        assert client.get("/v1/model").json()["version"] == "v1-base"


def test_restart_keeps_job_history(settings: Settings) -> None:
    with live_server(settings) as url, httpx.Client(base_url=url) as client:
        first = client.post(
            "/v1/admin/budget", json={"target_sparsity": 0.5}, headers=admin_headers()
        ).json()
        client.post(f"/v1/admin/jobs/{first['id']}/cancel", headers=admin_headers())
        second = client.post(
            "/v1/admin/budget", json={"target_sparsity": 0.8}, headers=admin_headers()
        ).json()
    with live_server(settings) as url, httpx.Client(base_url=url) as client:
        jobs = client.get("/v1/admin/jobs", headers=admin_headers()).json()["jobs"]
        assert [(job["id"], job["state"]) for job in jobs] == [
            (second["id"], "queued"),
            (first["id"], "cancelled"),
        ]
    assert JobStore(settings.job_db_path).counts()[JobState.QUEUED] == 1
