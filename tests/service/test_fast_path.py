"""The fast path of a byte budget: a kept model stored in fewer bits is served within seconds;
the planner's job replaces it only if it validates better; a failing fast path changes nothing."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import load_artifact, read_manifest
from ciess_core.artifact.requantise import requantise_artifact, requantised_bytes
from ciess_core.artifact.turned import turned_bytes
from ciess_core.storage import VALUE_TYPES
from service.jobs.fast_path import REQUANTISE_JOB, TURN_JOB
from service.jobs.store import JobState, JobStore
from service.jobs.worker import _better_served, execute, run_worker
from service.main import create_app
from service.model_holder import read_pointer
from service.settings import Settings
from tests.service.conftest import BaseArtifact, admin_headers

# What the selected twin of the base model validated at in each type (test input, made up).
MEASURED = {
    "float32": 0.300, "float16": 0.300, "int8": 0.299, "int4": 0.290,
    "int8-table": 0.298, "int4-table": 0.285,
}  # fmt: skip


def _with_metrics(source: Path, out: Path, metrics: dict[str, object]) -> Path:
    """A copy of the artifact ``source`` whose manifest says ``metrics`` (files unchanged)."""
    shutil.copytree(source, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metrics"] = {**manifest["metrics"], **metrics}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def measured(settings: Settings, base_model: BaseArtifact, tmp_path: Path) -> Settings:
    """Settings serving a base model that recorded its validation in every value type."""
    by_type = {value_type: {"ndcg@20": value} for value_type, value in MEASURED.items()}
    base = _with_metrics(
        base_model.artifact,
        tmp_path / "v1-measured",
        {"valid": by_type["float32"], "valid_by_value_type": by_type},
    )
    return settings.replace(artifact_dir=base)


@pytest.fixture
def client(measured: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(measured)) as test_client:
        yield test_client


def test_a_byte_budget_is_served_at_once_by_the_best_fitting_type(
    client: TestClient, measured: Settings
) -> None:
    manifest = read_manifest(measured.artifact_dir)  # type: ignore[arg-type]
    budget = requantised_bytes(manifest, "int8")  # int8 fits, float16 does not
    started = time.perf_counter()
    answer = client.post(
        "/v1/admin/budget", json={"max_bytes": budget, "method": "search"}, headers=admin_headers()
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    fast = body["fast_path"]
    assert fast["kind"] == REQUANTISE_JOB and fast["id"] < body["id"]
    assert fast["params"]["value_type"] == "int8"  # the best validation among the fitting
    assert body["params"]["replace_if_better"] == {
        "job_id": fast["id"], "metric": "ndcg@20", "valid": 0.299}  # fmt: skip
    store = JobStore(measured.job_db_path)
    job = store.claim("test", 1)
    assert job is not None and job.id == fast["id"]  # the fast path runs first
    assert execute(measured, store, job, threading.Event()) is JobState.SUCCEEDED
    served = read_pointer(measured)
    assert served is not None and read_manifest(served).value_dtype == "int8"
    assert read_manifest(served).memory.stored <= budget
    deadline = time.monotonic() + 10
    while client.get("/v1/model").json()["version"] != served.name:
        assert time.monotonic() < deadline, "the API did not swap the fast path's model in"
        time.sleep(0.1)
    assert time.perf_counter() - started < 10.0
    assert client.get("/v1/model").json()["budget_bytes"] == budget  # the budget it was made for
    assert client.get("/v1/users/u3/recommendations").status_code == 200


def test_no_fast_path_without_a_measured_type_that_fits(
    client: TestClient, measured: Settings
) -> None:
    answer = client.post(
        "/v1/admin/budget", json={"max_bytes": 1_900, "method": "search"}, headers=admin_headers()
    )
    assert answer.status_code == 202 and answer.json()["fast_path"] is None
    manifest = read_manifest(measured.artifact_dir)  # type: ignore[arg-type]
    int8 = requantised_bytes(manifest, "int8")  # the search method's fast path would take it
    equal = client.post(
        "/v1/admin/budget", json={"max_bytes": int8, "method": "equal"}, headers=admin_headers()
    )
    assert equal.status_code == 202, equal.text
    assert equal.json()["fast_path"] is None  # the fast path serves the planner's budgets only


def test_a_budget_whose_two_jobs_do_not_fit_the_queue_queues_neither(
    measured: Settings,
) -> None:
    manifest = read_manifest(measured.artifact_dir)  # type: ignore[arg-type]
    budget = requantised_bytes(manifest, "int8")
    with TestClient(create_app(measured.replace(max_queued_jobs=1))) as client:
        answer = client.post(
            "/v1/admin/budget", json={"max_bytes": budget, "method": "search"},
            headers=admin_headers(),
        )  # fmt: skip
        assert answer.status_code == 429, answer.text
        assert "needs 2 more" in answer.json()["detail"]
    assert JobStore(measured.job_db_path).list_jobs() == []


def test_the_same_budget_after_its_fast_path_served_is_the_same_job(
    client: TestClient, measured: Settings
) -> None:
    """The fast path changes the served version within seconds; asking again for the budget
    then answers the planner's job still running, and queues no second fast path."""
    manifest = read_manifest(measured.artifact_dir)  # type: ignore[arg-type]
    body = {"max_bytes": requantised_bytes(manifest, "int8"), "method": "search"}
    first = client.post("/v1/admin/budget", json=body, headers=admin_headers()).json()
    store = JobStore(measured.job_db_path)
    fast = store.claim("test", 1)
    assert fast is not None and fast.id == first["fast_path"]["id"]
    assert execute(measured, store, fast, threading.Event()) is JobState.SUCCEEDED
    served = read_pointer(measured)
    assert served is not None
    deadline = time.monotonic() + 10
    while client.get("/v1/model").json()["version"] != served.name:
        assert time.monotonic() < deadline, "the API did not swap the fast path's model in"
        time.sleep(0.1)
    again = client.post("/v1/admin/budget", json=body, headers=admin_headers())
    assert again.status_code == 200, again.text
    assert again.json()["existing"] is True and again.json()["id"] == first["id"]
    assert again.json()["fast_path"]["id"] == fast.id and again.json()["superseded"] == []
    assert [job.id for job in store.list_jobs()] == [first["id"], fast.id]


def test_a_served_quantised_model_offers_only_its_own_type(
    measured: Settings, tmp_path: Path
) -> None:
    # Served as int8, nothing else kept: float16 validated higher in its run, but from int8
    # codes it would be int8's model in twice the bytes; int4 would round the codes a second
    # time; int8 itself is the served model, nothing to serve sooner.
    served = tmp_path / "v2-int8"
    requantise_artifact(measured.artifact_dir, "int8", served)  # type: ignore[arg-type]
    settings = measured.replace(artifact_dir=served)
    manifest = read_manifest(served)
    budgets = {
        value_type: requantised_bytes(manifest, value_type) for value_type in ("float16", "int4")
    }

    def fast_path(client: TestClient, budget: int) -> str | None:
        answer = client.post(
            "/v1/admin/budget",
            json={"max_bytes": budget, "method": "search"},
            headers=admin_headers(),
        )
        assert answer.status_code in (200, 202), answer.text  # 200: its budget job is queued
        fast = answer.json()["fast_path"]
        return (
            None
            if fast is None
            else f"{fast['params']['source_version']} {fast['params']['value_type']}"
        )

    with TestClient(create_app(settings)) as client:
        assert fast_path(client, budgets["float16"]) is None
        assert fast_path(client, manifest.memory.stored + 1) is None
        assert fast_path(client, budgets["int4"]) is None
        # A kept float32 model (an earlier job's) offers every type it measured.
        shutil.copytree(measured.artifact_dir, settings.artifacts_dir / "v1-float32")  # type: ignore[arg-type]
        assert fast_path(client, budgets["float16"] + 1) == "v1-float32 float16"
        assert fast_path(client, budgets["int4"] + 1) == "v1-float32 int4"


def test_a_failing_fast_path_leaves_the_old_model_serving(
    measured: Settings, tmp_path: Path
) -> None:
    store = JobStore(measured.job_db_path)
    job = store.submit(
        REQUANTISE_JOB,
        {"source": str(tmp_path / "gone"), "value_type": "int8", "max_bytes": 10**6},
    )
    assert run_worker(measured, once=True) == 1
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED and "is gone" in failed.message
    assert read_pointer(measured) == measured.artifact_dir
    too_small = store.submit(
        REQUANTISE_JOB,
        {"source": str(measured.artifact_dir), "value_type": "int8", "max_bytes": 100},
    )
    assert run_worker(measured, once=True) == 1
    assert "over the budget of 100" in store.get(too_small.id).message
    assert read_pointer(measured) == measured.artifact_dir
    assert [p for p in measured.artifacts_dir.iterdir()] == []  # nothing half-written


@pytest.mark.parametrize(("planner_valid", "promoted"), [(0.31, True), (0.29, False)])
def test_the_planners_pick_replaces_the_fast_path_only_if_it_validates_better(
    measured: Settings, base_model: BaseArtifact, tmp_path: Path, planner_valid: float,
    promoted: bool,
) -> None:  # fmt: skip
    store = JobStore(measured.job_db_path)
    fast = store.submit(REQUANTISE_JOB, {"value_type": "int8"})
    assert store.claim("test", 1) is not None
    assert store.finish(fast.id, JobState.SUCCEEDED, "promoted")
    pick = _with_metrics(
        base_model.artifact, tmp_path / "pick", {"valid": {"ndcg@20": planner_valid}}
    )
    job = store.submit(
        "budget",
        {"replace_if_better": {"job_id": fast.id, "metric": "ndcg@20", "valid": 0.30}},
    )
    assert store.claim("test", 1) is not None  # running: its artifact is written
    store.set_artifact(job.id, pick, "pick")
    why = _better_served(store, store.get(job.id))
    assert (why is None) is promoted
    if not promoted:
        assert "not promoted: validates ndcg@20 0.29" in str(why)


# What the full model's twin validated at turned and cut to equal sizes (test input, made up):
# value type -> size -> metrics, as a search job's kept full model records it.
TURNED = {
    "int8": {"8": {"ndcg@20": 0.280}, "4": {"ndcg@20": 0.230}},
    "int4-table": {"16": {"ndcg@20": 0.301}, "6": {"ndcg@20": 0.260}, "3": {"ndcg@20": 0.200}},
}


@pytest.fixture
def turnable(measured: Settings, tmp_path: Path) -> Settings:
    """``measured``, its served full float32 LightGCN also recording its turned cuts."""
    base = _with_metrics(
        measured.artifact_dir,  # type: ignore[arg-type]
        tmp_path / "v1-turnable",
        {"valid_turned": TURNED},
    )
    return measured.replace(artifact_dir=base)


@pytest.mark.parametrize(
    ("budget_of", "expected"),
    [
        # below every type the model can be stored in: the best fitting turned cut
        (lambda m: min(requantised_bytes(m, t) for t in VALUE_TYPES) - 1, ("int4-table", 6)),
        # int8 fits (0.299), and so does the int4-table cut at full width, which validated better
        (lambda m: requantised_bytes(m, "int8"), ("int4-table", 16)),
    ],
)
def test_a_turned_cut_of_the_full_model_serves_a_byte_budget_at_once(
    turnable: Settings, budget_of: Callable[[Manifest], int], expected: tuple[str, int]
) -> None:
    manifest = read_manifest(turnable.artifact_dir)  # type: ignore[arg-type]
    budget = budget_of(manifest)
    value_type, width = expected
    assert turned_bytes(manifest, width, value_type) <= budget
    started = time.perf_counter()
    with TestClient(create_app(turnable)) as client:
        answer = client.post(
            "/v1/admin/budget",
            json={"max_bytes": budget, "method": "search"},
            headers=admin_headers(),
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        fast = body["fast_path"]
        assert fast["kind"] == TURN_JOB
        assert (fast["params"]["value_type"], fast["params"]["width"]) == expected
        valid = TURNED[value_type][str(width)]["ndcg@20"]
        assert body["params"]["replace_if_better"]["valid"] == valid
        store = JobStore(turnable.job_db_path)
        job = store.claim("test", 1)
        assert job is not None and job.id == fast["id"]  # the fast path runs first
        assert execute(turnable, store, job, threading.Event()) is JobState.SUCCEEDED
        served = read_pointer(turnable)
        assert served is not None
        new = load_artifact(served)
        assert new.manifest.value_dtype == value_type and new.manifest.memory.stored <= budget
        assert set(new.tables["embedding"].sizes.tolist()) == {width}
        assert new.manifest.metrics["valid"] == TURNED[value_type][str(width)]
        assert new.manifest.verification["turned_from"] == manifest_version(turnable)
        deadline = time.monotonic() + 10
        while client.get("/v1/model").json()["version"] != served.name:
            assert time.monotonic() < deadline, "the API did not swap the turned model in"
            time.sleep(0.1)
        assert time.perf_counter() - started < 10.0
        assert client.get("/v1/users/u3/recommendations").status_code == 200


def manifest_version(settings: Settings) -> str:
    return Path(str(settings.artifact_dir)).name


def test_turned_cuts_recorded_in_another_shape_are_no_candidates(
    measured: Settings, tmp_path: Path
) -> None:
    odd = {"int8": "8", "float64": {"4": {"ndcg@20": 0.3}},
           "int4": {"abc": {"ndcg@20": 0.3}, "0": {"ndcg@20": 0.3}, "4": {"ndcg@20": "high"}}}  # fmt: skip
    base = _with_metrics(measured.artifact_dir, tmp_path / "v1-odd", {"valid_turned": odd})  # type: ignore[arg-type]
    settings = measured.replace(artifact_dir=base)
    below = min(requantised_bytes(read_manifest(base), t) for t in VALUE_TYPES) - 1
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/admin/budget",
            json={"max_bytes": below, "method": "search"},
            headers=admin_headers(),
        )
        assert answer.status_code == 202 and answer.json()["fast_path"] is None


def test_the_budget_options_list_what_each_budget_gets_at_once(turnable: Settings) -> None:
    manifest = read_manifest(turnable.artifact_dir)  # type: ignore[arg-type]
    with TestClient(create_app(turnable)) as client:
        assert client.get("/v1/admin/budget/options").status_code == 401
        answer = client.get("/v1/admin/budget/options", headers=admin_headers())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["metric"] == "ndcg@20" and body["dense_fp32_bytes"] == manifest.memory.dense
        options = body["options"]
        assert [o["bytes"] for o in options] == sorted(o["bytes"] for o in options)
        assert all(a["valid"] < b["valid"] for a, b in itertools.pairwise(options))
        # every recorded cut and type, the best within each size (the served float32 aside)
        expected = [("int4-table", 3, 0.200), ("int4-table", 6, 0.260), ("int4-table", 16, 0.301)]
        assert [(o["value_type"], o["width"], o["valid"]) for o in options] == expected
        assert options[0]["bytes"] == turned_bytes(manifest, 3, "int4-table")
        assert options[0]["kind"] == TURN_JOB and options[0]["source_version"] == "v1-turnable"
        assert options[0]["byte_ratio"] == pytest.approx(
            options[0]["bytes"] / manifest.memory.dense
        )
        # a budget between two options gets the smaller one, as its job's fast path
        between = options[1]["bytes"] + (options[2]["bytes"] - options[1]["bytes"]) // 2
        budget = client.post(
            "/v1/admin/budget",
            json={"max_bytes": between, "method": "search"},
            headers=admin_headers(),
        )
        fast = budget.json()["fast_path"]["params"]
        assert (fast["value_type"], fast["width"]) == ("int4-table", 6)


def test_the_budget_options_of_each_stored_type_and_of_none(
    client: TestClient, settings: Settings
) -> None:
    answer = client.get("/v1/admin/budget/options", headers=admin_headers()).json()
    # the served float32 aside, each type validated better than every smaller one
    expected = ["int4-table", "int4", "int8-table", "int8", "float16"]
    assert [o["value_type"] for o in answer["options"]] == expected
    assert {(o["kind"], o["width"]) for o in answer["options"]} == {(REQUANTISE_JOB, None)}
    assert [o["valid"] for o in answer["options"]] == [MEASURED[t] for t in expected]
    with TestClient(create_app(settings)) as unmeasured:  # its manifest records no validation
        answer = unmeasured.get("/v1/admin/budget/options", headers=admin_headers()).json()
        assert answer["options"] == []
