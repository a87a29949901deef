"""A budget job in-process: ES sizes or a tiny CIESS search, retrained and exported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ciess_core.artifact.reader import load_artifact
from ciess_core.errors import ConfigError, DataError
from ciess_core.sizes import sparsity
from service.jobs import runner
from service.jobs.runner import equal_sizes_within, run_budget_job
from service.jobs.store import JobState, JobStore
from service.settings import Settings


def _job(store: JobStore, **params: object):  # type: ignore[no-untyped-def]
    store.submit("budget", params)
    job = store.claim("test", 1)
    assert job is not None
    return job


def test_equal_sizes_never_exceed_the_budget() -> None:
    assert equal_sizes_within(10, 16, 35).tolist() == [3] * 10
    assert equal_sizes_within(10, 16, 5).tolist() == [1] * 10
    assert equal_sizes_within(10, 16, 10**6).tolist() == [16] * 10


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


def _tiny_search(settings: Settings, **overrides: object) -> Settings:
    """Search-job settings small enough for a test."""
    return dataclasses.replace(
        settings,
        search_episodes=1,
        search_iterations=2,
        search_supernet_batches=5,
        job_max_batches=5,
        job_eval_every=5,
        **overrides,  # type: ignore[arg-type]
    )


def _one_search_job(tiny: Settings) -> tuple[Path, Path]:
    """Run one search job at sparsity 0.7 in a fresh state folder: (its artifact, its search's
    folder, the only one)."""
    store = JobStore(tiny.job_db_path)
    out = run_budget_job(tiny, store, _job(store, target_sparsity=0.7, method="search"))
    (search,) = list((tiny.state_dir / "searches").iterdir())
    return out, search


def test_search_job_runs_the_pipeline_once_and_reuses_it(settings: Settings) -> None:
    tiny = _tiny_search(settings)
    store = JobStore(tiny.job_db_path)
    first = run_budget_job(tiny, store, _job(store, target_sparsity=0.7, method="search"))
    manifest = load_artifact(first).manifest
    assert manifest.achieved_sparsity >= 0.7
    assert manifest.dataset["size_scheme"] == "ciess"
    searches = list((tiny.state_dir / "searches").iterdir())
    assert len(searches) == 1 and (searches[0] / "summary.json").is_file()
    summary_time = (searches[0] / "summary.json").stat().st_mtime_ns
    job = _job(store, target_sparsity=0.7, method="search")
    run_budget_job(tiny, store, job)
    assert (searches[0] / "summary.json").stat().st_mtime_ns == summary_time  # reused


def test_a_job_refuses_other_data_than_the_served_models(settings: Settings) -> None:
    other = settings.state_dir.parent / "other.txt"
    other.write_text("a x\nb y\n")
    store = JobStore(settings.job_db_path)
    job = _job(store, target_sparsity=0.5)
    with pytest.raises(DataError, match="fingerprint"):
        run_budget_job(dataclasses.replace(settings, dataset=str(other)), store, job)
    assert json.loads(json.dumps(store.get(job.id).params)) == {"target_sparsity": 0.5}


def test_search_job_with_share_fitting_scores_the_shares_under_its_own_key(
    settings: Settings,
) -> None:
    out, search = _one_search_job(_tiny_search(settings, search_fit_shares=True))
    assert load_artifact(out).manifest.achieved_sparsity >= 0.7
    assert json.loads((search / "job-spec.json").read_text())["fit_shares"] is True
    fit = json.loads((search / "budget-0.7" / "fit.json").read_text())
    assert len(fit) == 15  # the pool's one assignment as it is, then 14 shares
    assert {row["user_share"] for row in fit} >= {None, 0.3, 0.95}


def test_a_search_job_with_an_even_tolerance_retrains_the_evenest_near_tie(
    settings: Settings,
) -> None:
    tiny = _tiny_search(settings, search_fit_shares=True, search_even_tolerance=0.99)
    _, search = _one_search_job(tiny)
    assert json.loads((search / "job-spec.json").read_text())["even_tolerance"] == 0.99
    fit = json.loads((search / "budget-0.7" / "fit.json").read_text())
    best = max(row["valid_ndcg@20"] for row in fit)
    near = [row for row in fit if row["valid_ndcg@20"] >= 0.01 * best]
    assert fit[0]["within_side_spread"] == min(row["within_side_spread"] for row in near)
    with pytest.raises(ConfigError, match="search_even_tolerance"):
        dataclasses.replace(settings, search_even_tolerance=1.5)


def test_a_search_job_fits_spreads_on_validation_its_search_never_saw(
    settings: Settings,
) -> None:
    tiny = _tiny_search(
        settings, search_fit_shares=True, search_fit_spread=True, search_selection_share=0.5
    )
    out, search = _one_search_job(tiny)
    assert load_artifact(out).manifest.achieved_sparsity >= 0.7
    described = json.loads((search / "job-spec.json").read_text())
    assert described["fit_spread"] is True and described["selection_share"] == 0.5
    assert list((search / "full").glob("quality-share0.5-seed*.npz"))
    fit = json.loads((search / "budget-0.7" / "fit.json").read_text())
    assert any("users_spread_factor" in row for row in fit)
    with pytest.raises(ConfigError, match="search_selection_share"):
        dataclasses.replace(settings, search_selection_share=1.0)


def test_a_search_job_with_the_equal_candidate_serves_the_kind_its_pick_kept(
    settings: Settings,
) -> None:
    out, search = _one_search_job(_tiny_search(settings, search_equal_candidate=True))
    assert json.loads((search / "job-spec.json").read_text())["equal_candidate"] is True
    result = json.loads((search / "budget-0.7" / "result.json").read_text())
    assert [candidate["kind"] for candidate in result["candidates"]] == ["search", "equal"]
    manifest = load_artifact(out).manifest
    assert (
        manifest.dataset["size_scheme"]
        == {"search": "ciess", "equal": "equal"}[result["chosen_kind"]]
    )
    kept = np.load(search / "budget-0.7" / "sizes.npy")
    assert manifest.achieved_sparsity == pytest.approx(sparsity(kept, manifest.max_size))


@pytest.mark.parametrize("method", ["equal", "search"])
def test_a_distilling_job_learns_from_a_full_size_teacher(
    settings: Settings, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An equal-sizes job trains its own teacher; a search job reuses the search's full model."""
    trained: list[int] = []
    original = runner.train_bpr

    def counting(model, *arguments, **keywords):  # type: ignore[no-untyped-def]
        trained.append(int(model.embedding_sizes().min()))
        return original(model, *arguments, **keywords)

    monkeypatch.setattr(runner, "train_bpr", counting)
    tiny = _tiny_search(settings, job_distill=True)
    store = JobStore(tiny.job_db_path)
    out = run_budget_job(tiny, store, _job(store, target_sparsity=0.8, method=method))
    manifest = load_artifact(out).manifest
    assert manifest.metrics["distilled"] is True
    assert manifest.achieved_sparsity >= 0.8
    full_size = [size for size in trained if size == manifest.max_size]
    # equal: the teacher, then selection and final; search: the search's full model teaches.
    expected_teachers = 1 if method == "equal" else 0
    assert len(full_size) == expected_teachers and len(trained) == 2 + expected_teachers
