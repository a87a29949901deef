"""A budget job in-process: equal sizes or the product pipeline (a tiny recipe), exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ciess_core import runs
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer
from ciess_core.data import DatasetSplit, load_pairs, split_per_user
from ciess_core.errors import DataError
from ciess_core.runs import TRAINED_ON_ALL
from ciess_core.search import evaluators, teachers
from ciess_core.search import pipeline as pipeline_module
from ciess_core.search.files import BudgetFolder
from ciess_core.search.shared_stages import COPIED_STAGES_FILE, SHARED_STAGES
from ciess_core.search.turned_full import turned_widths
from ciess_core.storage import VALUE_TYPES
from service.jobs.runner import run_budget_job
from service.jobs.store import JobState, JobStore
from service.settings import Settings
from tests.service.conftest import DATASET_FILE, BaseArtifact


def _job(store: JobStore, **params: object):  # type: ignore[no-untyped-def]
    store.submit("budget", params)
    job = store.claim("test", 1)
    assert job is not None
    return job


def test_equal_sizes_job_exports_an_artifact_within_the_budget(settings: Settings) -> None:
    store = JobStore(settings.job_db_path)
    job = _job(store, target_sparsity=0.8, max_parameters=640, method="equal")
    out = run_budget_job(settings, store, job)
    artifact = load_artifact(out)
    assert artifact.manifest.achieved_sparsity >= 0.8
    assert artifact.manifest.target_sparsity == 0.8
    assert artifact.manifest.dataset["size_scheme"] == "equal"
    assert set(artifact.manifest.metrics) == {"protocol", "valid", "test"}
    recorded = store.get(job.id)
    assert recorded.artifact == str(out) and recorded.version == out.name
    assert recorded.stage == "exported" and recorded.progress == 1.0
    assert recorded.state is JobState.RUNNING  # the worker promotes and finishes it


def _one_search_job(settings: Settings) -> tuple[Path, Path]:
    """Run one search job at sparsity 0.7 in a fresh state folder: (its artifact, its
    pipeline's folder, the only one)."""
    store = JobStore(settings.job_db_path)
    out = run_budget_job(settings, store, _job(store, target_sparsity=0.7, method="search"))
    (search,) = list((settings.state_dir / "searches").iterdir())
    return out, search


def test_search_job_runs_the_pipeline_once_and_reuses_it(settings: Settings) -> None:
    store = JobStore(settings.job_db_path)
    first = run_budget_job(settings, store, _job(store, target_sparsity=0.7, method="search"))
    manifest = load_artifact(first).manifest
    assert manifest.achieved_sparsity >= 0.7
    assert manifest.dataset["size_scheme"] in {"ciess", "equal"}
    assert manifest.dataset["trained_on"] == TRAINED_ON_ALL
    searches = list((settings.state_dir / "searches").iterdir())
    assert len(searches) == 1 and (searches[0] / "summary.json").is_file()
    summary = json.loads((searches[0] / "summary.json").read_text())
    assert (summary["executor"], summary["workers"]) == ("local", 1)  # beside the API: one unit
    summary_time = (searches[0] / "summary.json").stat().st_mtime_ns
    (kept,) = settings.artifacts_dir.glob("full-*")  # the full model, for turned budgets
    full = load_artifact(kept).manifest
    assert (full.value_dtype, full.achieved_sparsity, full.dataset["size_scheme"]) == (
        "float32", 0.0, "full")  # fmt: skip
    assert full.dataset["trained_on"] == TRAINED_ON_ALL and full.verification["users"] > 0
    widths = turned_widths(full.num_users, full.num_items, full.max_size)
    turned = full.metrics["valid_turned"]
    assert {t: [int(w) for w in turned[t]] for t in turned} == widths
    assert set(full.metrics["valid_by_value_type"]) == set(VALUE_TYPES)
    kept_time = (kept / "manifest.json").stat().st_mtime_ns
    job = _job(store, target_sparsity=0.7, method="search")
    run_budget_job(settings, store, job)
    assert (searches[0] / "summary.json").stat().st_mtime_ns == summary_time  # reused
    assert (kept / "manifest.json").stat().st_mtime_ns == kept_time  # kept once


def test_a_byte_budget_search_job_serves_the_planners_pick_within_its_bytes(
    settings: Settings, base_model: BaseArtifact
) -> None:
    dense = load_artifact(base_model.artifact).manifest.memory.dense
    max_bytes = dense // 5
    store = JobStore(settings.job_db_path)
    job = _job(
        store, target_sparsity=0.7, method="search", requested={"max_bytes": float(max_bytes)}
    )
    out = run_budget_job(settings, store, job)
    (search,) = list((settings.state_dir / "searches").iterdir())
    (folder,) = list(search.glob("bytes-*"))
    result = json.loads((folder / "result.json").read_text())
    manifest = load_artifact(out).manifest
    assert manifest.value_dtype == result["value_type"]
    assert manifest.memory.stored <= max_bytes
    assert manifest.metrics["test"] == result["test"]


def test_a_second_byte_budget_starts_at_its_search(
    settings: Settings, base_model: BaseArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full model, the teachers and the supernet do not depend on the budget: a job for
    another byte budget copies them from the first job's pipeline and trains none of them."""
    dense = load_artifact(base_model.artifact).manifest.memory.dense
    store = JobStore(settings.job_db_path)
    for fifth in (5, 4):
        requested = {"max_bytes": float(dense // fifth)}
        run_budget_job(settings, store, _job(store, target_sparsity=0.7, requested=requested))

        def refuse(*arguments: object, **keywords: object) -> None:
            raise AssertionError("a budget-free stage trained again")

        for module, name in (
            (pipeline_module, "full_size_model"),
            (evaluators, "train_bpr"),
            (teachers, "execute_run"),
            (teachers, "train_deployment"),
        ):
            monkeypatch.setattr(module, name, refuse)  # the second job must not need them
    first, second = sorted(
        (settings.state_dir / "searches").iterdir(), key=lambda path: path.stat().st_mtime
    )
    assert [path.name for path in first.glob("bytes-*")] != [p.name for p in second.glob("bytes-*")]
    for stage, last in SHARED_STAGES.items():
        assert (second / stage / last).read_bytes() == (first / stage / last).read_bytes()
    assert (second / "supernet" / "supernet.pt").read_bytes() == (
        first / "supernet" / "supernet.pt"
    ).read_bytes()
    copied = json.loads((second / COPIED_STAGES_FILE).read_text())
    assert copied == {stage: str(first) for stage in SHARED_STAGES}
    spec = json.loads((second / "summary.json").read_text())
    assert "search" in spec["timings"]  # its own search: the pool keeps its budget's best


def test_a_job_refuses_other_data_than_the_served_models(settings: Settings) -> None:
    (settings.data_dir / DATASET_FILE).write_text("a x\nb y\n")  # type: ignore[operator]
    store = JobStore(settings.job_db_path)
    job = _job(store, target_sparsity=0.5)
    try:
        with pytest.raises(DataError, match="fingerprint"):
            run_budget_job(settings, store, job)
    finally:
        _restore_dataset(settings)
    assert json.loads(json.dumps(store.get(job.id).params)) == {"target_sparsity": 0.5}


def _restore_dataset(settings: Settings) -> None:
    from tests.service.conftest import write_dataset

    write_dataset(settings.data_dir / DATASET_FILE)  # type: ignore[operator]


def test_a_search_job_serves_the_candidate_its_pick_kept(settings: Settings) -> None:
    out, search = _one_search_job(settings)
    result = json.loads((search / "budget-0.7" / "result.json").read_text())
    assert [candidate["kind"] for candidate in result["candidates"]] == ["search", "equal"]
    manifest = load_artifact(out).manifest
    assert (
        manifest.dataset["size_scheme"]
        == {"search": "ciess", "equal": "equal"}[result["chosen_kind"]]
    )
    assert (
        manifest.metrics["test"] == result["test"]
    )  # the protocol's numbers, not the deployment's
    kept = BudgetFolder.of(search, 0.7).chosen()
    assert manifest.achieved_sparsity == pytest.approx(kept.sparsity)


def _phase_of(matrix: object, split: DatasetSplit) -> str:
    """Which phase's training matrix ``matrix`` is, by its number of interactions."""
    counts = {
        split.train.nnz: "search",
        split.train.nnz + split.valid.nnz: "test",
        split.train.nnz + split.valid.nnz + split.test.nnz: "deploy",
    }
    return counts[matrix.nnz]  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["equal", "search"])
def test_a_job_trains_each_candidate_once_per_protocol_phase(
    settings: Settings, base_model: BaseArtifact, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean protocol: every retrained candidate once on train (selection on validation); only
    the pick once on train ∪ validation (its one test) and once on everything (served). Nothing
    is trained twice."""
    split = split_per_user(load_pairs(base_model.data_dir / DATASET_FILE), seed=42)
    trained: list[tuple[str, bytes]] = []
    original = runs.train_bpr

    def counting(model, train, *arguments, **keywords):  # type: ignore[no-untyped-def]
        sizes = model.embedding_sizes().numpy().tobytes()
        trained.append((_phase_of(train, split), sizes))
        return original(model, train, *arguments, **keywords)

    monkeypatch.setattr(runs, "train_bpr", counting)
    store = JobStore(settings.job_db_path)
    out = run_budget_job(settings, store, _job(store, target_sparsity=0.8, method=method))
    served = load_artifact(out)
    served_sizes = next(iter(served.tables.values())).sizes.astype(np.int64)
    # The phases' full-size teachers (distillation's) are trained once each, not candidates.
    full = np.full(split.num_users + split.num_items, served.manifest.max_size).tobytes()
    teachers = sorted(phase for phase, sizes in trained if sizes == full)
    assert teachers == ([] if method == "equal" else ["deploy", "test"])
    trained = [(phase, sizes) for phase, sizes in trained if sizes != full]
    candidates = {sizes for _, sizes in trained}
    assert len(candidates) == (1 if method == "equal" else 2)  # the searched and the equal one
    for sizes in candidates:
        phases = sorted(phase for phase, seen in trained if seen == sizes)
        deployed = np.array_equal(np.frombuffer(sizes, dtype=np.int64), served_sizes)
        expected = ["deploy", "search", "test"] if deployed else ["search"]
        assert phases == expected
    assert sum(phase == "deploy" for phase, _ in trained) == 1


@pytest.mark.parametrize("method", ["equal", "search"])
def test_a_served_model_never_recommends_what_a_user_already_has(
    settings: Settings, base_model: BaseArtifact, method: str
) -> None:
    """The deployment model has seen every split, and so has the artifact's seen-item list."""
    data = load_pairs(base_model.data_dir / DATASET_FILE)
    store = JobStore(settings.job_db_path)
    out = run_budget_job(settings, store, _job(store, target_sparsity=0.8, method=method))
    scorer = ArtifactScorer(load_artifact(out))
    users = np.arange(data.num_users)
    top_items, _ = scorer.recommend(users, 10)
    everything = data.to_csr()
    for user in users:
        had = set(everything.indices[everything.indptr[user] : everything.indptr[user + 1]])
        assert had, "every generated user has interactions"
        assert not had & set(top_items[user][top_items[user] >= 0].tolist())
    assert scorer.seen.nnz == everything.nnz


class _Reports:
    """A stand-in store that keeps what a job reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, float]] = []

    def report(self, job_id: int, stage: str, progress: float, message: str | None = None) -> None:
        self.reports.append((stage, round(progress, 4)))


def test_pipeline_progress_moves_within_a_stage_throttled_and_never_back() -> None:
    from service.jobs.runner import Reporter

    every_call = _Reports()
    reporter = Reporter(every_call, job_id=1, every=0.0)  # type: ignore[arg-type]
    for done in range(5):  # e.g. the search's iterations, reported as they finish
        reporter.pipeline_stage("search", 0.15 + 0.25 * done / 4)
    assert every_call.reports == [
        ("search", 0.1775),
        ("search", 0.2306),
        ("search", 0.2838),
        ("search", 0.3369),
        ("search", 0.39),
    ]
    throttled = _Reports()
    reporter = Reporter(throttled, job_id=1, every=3600.0)  # type: ignore[arg-type]
    reporter.pipeline_stage("full model", 0.0)
    reporter.pipeline_stage("full model", 0.1)  # within a stage: at most every `every` seconds
    reporter.pipeline_stage("search", 0.15)  # a new stage: at once
    reporter.pipeline_stage("full model", 0.05)  # a resumed pipeline: the bar never goes back
    reporter.pipeline_stage("retraining", 2.0)  # clipped to the pipeline's share
    assert throttled.reports == [
        ("full model", 0.05),
        ("search", 0.1775),
        ("full model", 0.1775),
        ("retraining", 0.9),
    ]
