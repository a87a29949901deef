"""Kept versions: start-up on a bad pointer, artifacts of absurd values, listing, rollback,
reload and promotion reaching every process, and the retention rule."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ciess_core.artifact.files import sha256_file
from ciess_core.artifact.ragged import MAX_ABS_VALUE
from ciess_core.errors import ArtifactError
from service import model_holder
from service.jobs.fast_path import REQUANTISE_JOB, TURN_JOB
from service.jobs.store import JobState, JobStore
from service.main import create_app
from service.model_holder import ServedModel, load_served_model, read_pointer, write_pointer
from service.settings import Settings
from service.versions import KEEP_VERSIONS, apply_retention, kept_versions, promote
from tests.service.conftest import BaseArtifact, admin_headers, live_server, wait_for

VALUES = "tables/embedding/values.npy"


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "source":
            manifest["dataset"]["source"] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def copy_artifact(base: BaseArtifact, target: Path, created_at: str | None = None) -> Path:
    """A copy of the base artifact under another name (and export time)."""
    shutil.copytree(base.artifact, target)
    if created_at is not None:
        _edit_manifest(target, created_at=created_at)
    return target


def inflate(directory: Path, value: float = 3e30) -> None:
    """Every stored embedding value set to ``value``, the manifest's hashes fixed to match: only
    the validator's magnitude rule can tell."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"].endswith("values.npy"):
            path = directory / entry["path"]
            values = np.load(path)
            np.save(path, np.full_like(values, value), allow_pickle=False)
            entry["sha256"] = sha256_file(path)
            entry["bytes"] = path.stat().st_size
    (directory / "manifest.json").write_text(json.dumps(manifest))


def damage(directory: Path) -> None:
    path = directory / VALUES
    path.write_bytes(path.read_bytes()[:-8])


def test_start_up_on_a_damaged_pointer_serves_the_last_good_version(
    settings: Settings, base_model: BaseArtifact, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(settings.job_db_path)
    good = copy_artifact(base_model, settings.artifacts_dir / "v2-good")
    bad = copy_artifact(base_model, settings.artifacts_dir / "v3-bad")
    promote(settings, store, good, job_id=2)
    promote(settings, store, bad, job_id=3)
    damage(bad)
    caplog.set_level(logging.WARNING, logger="service.model_holder")
    with TestClient(create_app(settings)) as client:
        model = client.get("/v1/model").json()
        assert model["version"] == "v2-good"
        assert model["fallback_from"]["version"] == "v3-bad"
        assert VALUES in model["fallback_from"]["reason"]
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["fallback_from"]["version"] == "v3-bad"
        assert client.get("/v1/users/u1/recommendations").status_code == 200
    logged = caplog.text
    assert "the promoted artifact v3-bad does not load" in logged
    assert "serving v2-good instead of the promoted v3-bad" in logged

    # A pointer that cannot be read at all: the newest promoted artifact that loads.
    settings.current_pointer.write_text("{not json")
    with TestClient(create_app(settings)) as client:
        model = client.get("/v1/model").json()
        assert model["version"] == "v2-good"
        assert model["fallback_from"]["version"] == "current.json"


def test_with_nothing_that_loads_the_service_starts_not_ready_and_a_promotion_recovers(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path
) -> None:
    broken = copy_artifact(base_model, tmp_path / "configured")
    damage(broken)
    configured = settings.replace(artifact_dir=broken)
    copy_artifact(base_model, configured.artifacts_dir / "v2-good")
    with TestClient(create_app(configured)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["fallback_from"]["version"] == "configured"
        promoted = client.post("/v1/admin/models/v2-good/promote", headers=admin_headers())
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["previous_version"] is None
        assert client.get("/readyz").json()["model_version"] == "v2-good"
        assert client.get("/v1/model").json()["fallback_from"] is None


def test_an_artifact_of_huge_values_is_refused_and_the_old_model_keeps_serving(
    settings: Settings, base_model: BaseArtifact
) -> None:
    huge = copy_artifact(base_model, settings.artifacts_dir / "v9-huge")
    inflate(huge)
    assert MAX_ABS_VALUE < 3e30
    with pytest.raises(ArtifactError, match="exceeds the magnitude bound"):
        load_served_model(huge, threads=1)
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v1/admin/models/v9-huge/promote", headers=admin_headers())
        assert refused.status_code == 409
        assert "magnitude" in refused.json()["detail"]
        assert client.get("/v1/model").json()["version"] == "v1-base"
        assert read_pointer(settings) == base_model.artifact  # nothing was promoted

        write_pointer(settings, huge)  # as a job would promote it

        def noticed() -> bool:
            fallback = client.get("/v1/model").json()["fallback_from"]
            return fallback is not None and fallback["version"] == "v9-huge"

        wait_for(noticed, timeout=10, what="the failed swap")
        assert "magnitude" in client.get("/v1/model").json()["fallback_from"]["reason"]
        reload = client.post("/v1/admin/reload", headers=admin_headers())
        assert reload.status_code == 503
        response = client.get("/v1/users/u1/recommendations")
        assert response.status_code == 200
        assert response.json()["model_version"] == "v1-base"
        assert all(np.isfinite([item["score"] for item in response.json()["items"]]))
        # the refused promotion and the failed swap (a failed reload answers 503 instead)
        assert "ciess_model_swap_failures_total 2.0" in client.get("/metrics").text


def test_kept_versions_are_listed_and_a_rollback_reaches_every_process(
    settings: Settings, base_model: BaseArtifact
) -> None:
    store = JobStore(settings.job_db_path)
    older = copy_artifact(base_model, settings.artifacts_dir / "v2", "2030-01-01T00:00:00+00:00")
    newer = copy_artifact(base_model, settings.artifacts_dir / "v3", "2030-01-02T00:00:00+00:00")
    promote(settings, store, older, job_id=2)
    promote(settings, store, newer, job_id=3)
    # Two apps on one state folder: two processes of `ciess serve --workers 2`.
    with (
        TestClient(create_app(settings)) as client,
        TestClient(create_app(settings)) as other,
    ):
        assert client.get("/v1/admin/models").status_code == 401
        listing = client.get("/v1/admin/models", headers=admin_headers()).json()
        assert listing["served_version"] == "v3" and listing["keep"] == KEEP_VERSIONS
        models = listing["models"]
        assert [m["version"] for m in models] == ["v3", "v2", "v1-base"]
        assert [m["served"] for m in models] == [True, False, False]
        assert [m["current"] for m in models] == [True, False, False]
        assert [m["configured"] for m in models] == [False, False, True]
        assert [m["job_id"] for m in models] == [3, 2, None]
        assert models[1]["bytes"]["embedding_stores"] == (128 + 200 * 16 * 4) + (128 + 2 * 4)
        assert models[1]["max_parameters"] == 200 * 16 and models[1]["sparsity"] == 0.0
        assert models[1]["metrics"]["test"] == {"recall@20": 0.5}
        assert models[1]["created_at"] == "2030-01-01T00:00:00+00:00"

        answer = client.post("/v1/admin/models/v2/promote", headers=admin_headers())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == "v2" and body["previous_version"] == "v3"
        assert body["swapped"] is True
        assert client.get("/v1/model").json()["version"] == "v2"
        assert read_pointer(settings) == older.resolve()
        assert store.promotions()[0].version == "v2"
        deadline = time.monotonic() + body["all_processes_within_seconds"] + 1.0
        wait_for(lambda: other.get("/v1/model").json()["version"] == "v2", timeout=5)
        assert time.monotonic() < deadline
        again = client.post("/v1/admin/models/v2/promote", headers=admin_headers()).json()
        assert again["swapped"] is False

        # A reload in one process reloads the others too.
        before = other.get("/v1/model").json()["loaded_at"]
        reload = client.post("/v1/admin/reload", headers=admin_headers()).json()
        wait_for(
            lambda: other.get("/v1/model").json()["loaded_at"] > before,
            timeout=reload["all_processes_within_seconds"] + 1.0,
            what="the other process's reload",
        )

        assert (
            client.post("/v1/admin/models/nope/promote", headers=admin_headers()).status_code == 404
        )
        for name in ("..", ".hidden", "a" * 300):
            response = client.post(f"/v1/admin/models/{name}/promote", headers=admin_headers())
            assert response.status_code in (404, 422), name
        assert client.post("/v1/admin/models/v2/promote").status_code == 401


def _swaps(client: httpx.Client) -> float:
    line = next(
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("ciess_model_swaps_total ")
    )
    return float(line.split()[1])


def test_a_rollback_during_a_slow_load_answers_at_once_and_stays(
    settings: Settings, base_model: BaseArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's artifact is loading in the pointer watcher (held back here) when an admin
    rolls back: the promotion answers and serves at once, the server keeps answering, and the
    watcher's load, which the pointer no longer names, is never served."""
    from_job = copy_artifact(base_model, settings.artifacts_dir / "v2-job")
    rollback = copy_artifact(base_model, settings.artifacts_dir / "v3-rollback")
    loading, release, loaded = threading.Event(), threading.Event(), threading.Event()

    def held_back(directory: Path, threads: int) -> ServedModel:
        if Path(directory).name == from_job.name:
            loading.set()
            release.wait(timeout=60)
        try:
            return load_served_model(directory, threads)
        finally:
            loaded.set()

    with live_server(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        monkeypatch.setattr(model_holder, "load_served_model", held_back)  # the watcher's
        write_pointer(settings, from_job)  # as a finished job does
        assert loading.wait(timeout=30), "the watcher did not start loading"
        try:
            assert client.get("/healthz").status_code == 200
            answer = client.post("/v1/admin/models/v3-rollback/promote", headers=admin_headers())
            assert answer.status_code == 200, answer.text
            assert answer.json()["previous_version"] == "v1-base"
            assert client.get("/v1/model").json()["version"] == "v3-rollback"
            assert not loaded.is_set()  # all of it while the watcher was still loading
        finally:
            release.set()
        assert loaded.wait(timeout=60)
        time.sleep(5 * settings.poll_seconds)  # the watcher's swap, had it made one, and more
        assert client.get("/v1/model").json()["version"] == "v3-rollback"
        assert _swaps(client) == 1.0  # the promotion's only
    assert read_pointer(settings) == rollback.resolve()


def test_a_promotion_whose_pointer_cannot_be_written_swaps_nothing(
    settings: Settings, base_model: BaseArtifact
) -> None:
    store = JobStore(settings.job_db_path)
    copy_artifact(base_model, settings.artifacts_dir / "v2")
    settings.current_pointer.mkdir(parents=True)  # a folder where the pointer file goes
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.post("/v1/admin/models/v2/promote", headers=admin_headers())
        assert answer.status_code == 500
        assert client.get("/v1/model").json()["version"] == "v1-base"
    assert store.promotions() == []


def test_the_openapi_schema_documents_the_version_routes(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    listing = paths["/v1/admin/models"]["get"]["responses"]
    assert {"200", "401", "403"} <= set(listing)
    assert listing["200"]["content"]["application/json"]["example"]["models"]
    promotion = paths["/v1/admin/models/{version}/promote"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(promotion)
    assert promotion["200"]["content"]["application/json"]["example"]["swapped"] is True
    assert "can_run" in str(paths["/readyz"]["get"]["responses"]["200"])


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything in it ``seconds`` old."""
    then = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))


def test_retention_keeps_the_newest_the_promoted_and_what_jobs_use(
    settings: Settings, base_model: BaseArtifact
) -> None:
    store = JobStore(settings.job_db_path)
    searches = settings.state_dir / "searches"
    used_search = searches / "used"
    (used_search / "budget-0.5" / "run").mkdir(parents=True)
    old_search = searches / "old"
    (old_search / "search").mkdir(parents=True)
    new_search = searches / "interrupted"
    (new_search / "search").mkdir(parents=True)
    versions = [
        copy_artifact(
            base_model, settings.artifacts_dir / f"v{n}", f"2030-01-{n + 1:02d}T00:00:00+00:00"
        )
        for n in range(8)
    ]  # v0 oldest … v7 newest
    _edit_manifest(versions[6], source=str(used_search / "budget-0.5" / "run"))
    _age(old_search, 10 * 365 * 86400)  # older than every kept artifact (2030)
    _age(used_search, 10 * 365 * 86400)
    os.utime(new_search, (4e9, 4e9))  # newer than the oldest kept artifact: may be resumed
    promote(settings, store, versions[0])  # rolled back to the oldest: current.json points at it
    job = store.submit("budget", {"base_artifact": str(versions[1])})
    assert store.claim("host:1", 1) is not None  # running, on v1
    (settings.artifacts_dir / ".v8.staging").mkdir()  # a half-written export: not a version

    removed = apply_retention(settings, store)
    assert sorted(path.name for path in removed) == ["v2"]
    kept = {version.version for version in kept_versions(settings, store)}
    assert kept == {"v0", "v1", "v3", "v4", "v5", "v6", "v7", "v1-base"}
    assert old_search.is_dir()  # a job is running: no pipeline folder is touched

    store.finish(job.id, JobState.FAILED, "done")
    removed = apply_retention(settings, store)
    assert sorted(path.name for path in removed) == ["old", "v1"]
    assert used_search.is_dir() and new_search.is_dir()  # a kept artifact's source; newer
    assert versions[0].is_dir() and base_model.artifact.is_dir()  # promoted; configured
    assert (settings.artifacts_dir / ".v8.staging").is_dir()
    assert [p.version for p in store.promotions()] == ["v0"]


def test_retention_keeps_the_source_of_a_queued_fast_path_job(
    settings: Settings, base_model: BaseArtifact
) -> None:
    store = JobStore(settings.job_db_path)
    versions = [
        copy_artifact(
            base_model, settings.artifacts_dir / f"v{n}", f"2030-01-{n + 1:02d}T00:00:00+00:00"
        )
        for n in range(KEEP_VERSIONS + 2)
    ]  # v0 and v1 are beyond the newest KEEP_VERSIONS
    requantise = store.submit(
        REQUANTISE_JOB,
        {"source": str(versions[0]), "source_version": "v0", "value_type": "int8"},
    )
    turn = store.submit(
        TURN_JOB,
        {"source": str(versions[1]), "source_version": "v1", "value_type": "int4", "width": 8},
    )
    assert apply_retention(settings, store) == []
    assert versions[0].is_dir() and versions[1].is_dir()

    store.cancel(requantise.id)
    store.cancel(turn.id)
    removed = apply_retention(settings, store)
    assert sorted(path.name for path in removed) == ["v0", "v1"]
