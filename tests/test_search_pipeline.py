"""An in-process end-to-end CIESS search on a tiny generated dataset (well under a minute)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.selection_views import budget_rows
from ciess_core import runs
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError, DataError
from ciess_core.json_form import jsonable
from ciess_core.models import BackboneConfig, BackboneKind
from ciess_core.pipeline import claim_pipeline_folder, pipeline_spec
from ciess_core.run_folder import MODEL_FILE, RUN_FORMAT_VERSION, read_run
from ciess_core.runs import Protocol, RunProtocol, Start
from ciess_core.search import ItemQuality, SearchConfig, loop
from ciess_core.search.evaluators import RandomSizeDraws
from ciess_core.search.files import BudgetFolder
from ciess_core.search.fit import within_side_spread
from ciess_core.search.loop import SearchInputs, SearchOutcome, run_search
from ciess_core.search.pipeline import (
    PipelineSpec,
    build_evaluator,
    load_full_model,
    prepare_teachers,
    run_pipeline,
    selection_views,
)
from ciess_core.search.retraining import held_out_metrics
from ciess_core.search.shared_stages import reuse_sibling_stages, stages_identity
from ciess_core.sizes import SizeAssignment, parameter_budget
from ciess_core.training import TrainConfig, checkpoints, evaluate_model
from ciess_core.training.distillation import DistillationConfig, TeacherSource
from ciess_core.training.loop import EvaluationRecord

MAX_SIZE = 16


def tiny_spec() -> PipelineSpec:
    """The paper's pipeline at a tiny scale: no fits, plain BPR, searched candidates only (each
    test turns on what it checks; ``test_the_default_pipeline_…`` runs the product's).
    ``tests/test_bench_experiments.py`` runs the experiments on it."""
    return PipelineSpec(
        dataset="generated",
        backbone=BackboneConfig(max_size=MAX_SIZE),
        training=TrainConfig(
            batch_size=256,
            max_batches=60,
            learning_rate=0.02,
            min_learning_rate=1e-3,
            eval_every=20,
            patience=2,
            seed=1,
        ),
        search=SearchConfig(
            num_episodes=3,
            iterations_per_episode=4,
            max_size=MAX_SIZE,
            hidden_size=32,
            batch_size=256,
            budgets=(0.5, 0.8),
            exploration_scale=3.0,
            walk_radius=2,
            reward_penalty=0.4,
            seed=2,
        ),
        supernet_batches=60,
        retrain_top=2,
        protocol=Protocol.CLEAN,
        share_grid=(),
        spread_grid=(),
        selection_share=0.0,
        distillation=None,
        equal_candidate=False,
    )


def test_search_end_to_end_meets_every_budget(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    summary = run_pipeline(tiny_spec(), clustered_split, tmp_path, progress=False)
    trace = [
        json.loads(line) for line in (tmp_path / "search" / "trace.jsonl").read_text().splitlines()
    ]
    assert len(trace) == 12
    assert {row["episode"] for row in trace} == {1, 2, 3}
    for budget in ("0.5", "0.8"):
        sizes = BudgetFolder(tmp_path / f"budget-{budget}").chosen()
        assert (sizes.num_users, sizes.num_items) == (
            clustered_split.num_users,
            clustered_split.num_items,
        )
        assert sizes.max_size == MAX_SIZE
        assert sizes.sparsity >= float(budget)  # budgets are never exceeded
        result = summary["budgets"][budget]
        assert result["achieved_sparsity"] == pytest.approx(sizes.sparsity)
        assert 0.0 < result["test"]["recall@20"] <= 1.0
        assert len(result["candidates"]) <= 2
    assert set(summary["timings"]) >= {"full_model", "search", "retrain_0.5", "retrain_0.8"}


def test_pipeline_resumes_without_redoing_finished_stages(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    first = run_pipeline(tiny_spec(), clustered_split, tmp_path, progress=False)
    trace_before = (tmp_path / "search" / "trace.jsonl").read_text()
    second = run_pipeline(tiny_spec(), clustered_split, tmp_path, progress=False)
    assert (tmp_path / "search" / "trace.jsonl").read_text() == trace_before
    assert second["budgets"] == first["budgets"]
    assert second["seconds_this_call"] < first["seconds_this_call"]


class _InterruptError(Exception):
    pass


def _search_inputs(split: DatasetSplit) -> SearchInputs:
    """The search's inputs on ``split``'s search phase, with made-up full-model qualities."""
    train, _ = split.phase(Phase.SEARCH)
    rng = np.random.default_rng(0)
    return SearchInputs(
        popularity={
            "users": np.diff(train.indptr).astype(float),
            "items": np.bincount(train.indices, minlength=train.shape[1]).astype(float),
        },
        full_quality={
            "users": rng.uniform(0.2, 0.8, train.shape[0]),
            "items": rng.uniform(0.2, 0.8, train.shape[1]),
        },
    )


_TRACE_FIELDS = (
    "episode",
    "iteration",
    "users_mean_size",
    "items_mean_size",
    "sparsity",
    "mean_quality",
)


def _untimed_rows(trace: list[dict]) -> list[list[object]]:
    return [[row[field] for field in _TRACE_FIELDS] for row in trace]


def _assert_same_pools(
    resumed: SearchOutcome, straight: SearchOutcome, budgets: tuple[float, ...]
) -> None:
    for budget in budgets:
        assert [e.key for e in resumed.pool.top(budget)] == [
            e.key for e in straight.pool.top(budget)
        ]


def test_interrupted_search_resumes_from_its_checkpoint_and_matches(
    clustered_split: DatasetSplit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = tiny_spec()
    inputs = _search_inputs(clustered_split)
    evaluator = build_evaluator(spec, clustered_split)
    straight = run_search(spec.search, inputs, evaluator, progress=False)

    def stop_in_episode_two(row: dict) -> None:
        if row["episode"] == 2 and row["iteration"] == 2:
            raise _InterruptError

    checkpoint, trace = tmp_path / "checkpoint", tmp_path / "trace.jsonl"
    with pytest.raises(_InterruptError):
        run_search(
            spec.search,
            inputs,
            evaluator,
            checkpoint_dir=checkpoint,
            trace_path=trace,
            progress=False,
            on_iteration=stop_in_episode_two,
        )
    assert json.loads((checkpoint / "checkpoint.json").read_text())["episodes_done"] == 1
    with caplog.at_level(logging.INFO, logger="ciess_core.search.loop"):
        resumed = run_search(
            spec.search, inputs, evaluator, checkpoint_dir=checkpoint, trace_path=trace,
            progress=False,
        )  # fmt: skip
    episodes = spec.search.num_episodes
    logged = [line.split(",")[0] for line in caplog.messages if line.startswith("search: ")]
    assert logged == [f"search: episode {e} of {episodes}" for e in range(2, episodes + 1)]
    assert _untimed_rows(resumed.trace) == _untimed_rows(straight.trace)
    assert len(trace.read_text().splitlines()) == len(straight.trace)
    _assert_same_pools(resumed, straight, spec.search.budgets)


def test_a_search_killed_between_its_checkpoint_renames_resumes_and_matches(
    clustered_split: DatasetSplit,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After episode 2 the old checkpoint is renamed to its backup and the process dies before
    the staged one takes its place: a rerun resumes from the staged one (complete), or from the
    backup when the staged one is not; either way the search is the uninterrupted one."""
    spec = tiny_spec()
    inputs = _search_inputs(clustered_split)
    evaluator = build_evaluator(spec, clustered_split)
    straight = run_search(spec.search, inputs, evaluator, progress=False)
    work = tmp_path / "staged"
    checkpoint, trace = work / "checkpoint", work / "trace.jsonl"
    real_replace = os.replace

    def dies_after_episode_two(source: Path, target: Path) -> None:
        staged = Path(source) / "checkpoint.json"
        if Path(target) == checkpoint and json.loads(staged.read_text())["episodes_done"] == 2:
            raise _InterruptError
        real_replace(source, target)

    monkeypatch.setattr(loop.os, "replace", dies_after_episode_two)
    work.mkdir()
    with pytest.raises(_InterruptError):
        run_search(
            spec.search,
            inputs,
            evaluator,
            checkpoint_dir=checkpoint,
            trace_path=trace,
            progress=False,
        )
    monkeypatch.undo()
    assert sorted(path.name for path in work.iterdir()) == [
        "checkpoint.old", "checkpoint.tmp", "trace.jsonl"]  # fmt: skip
    unstaged = tmp_path / "unstaged"  # the same crash with the staged checkpoint incomplete
    shutil.copytree(work, unstaged)
    (unstaged / "checkpoint.tmp" / "checkpoint.json").unlink()
    for folder, first in ((work, 3), (unstaged, 2)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ciess_core.search.loop"):
            resumed = run_search(
                spec.search,
                inputs,
                evaluator,
                checkpoint_dir=folder / "checkpoint",
                trace_path=folder / "trace.jsonl",
                progress=False,
            )
        logged = [line.split(" of ")[0] for line in caplog.messages if line.startswith("search: ")]
        assert logged == [f"search: episode {e}" for e in range(first, 4)]
        assert _untimed_rows(resumed.trace) == _untimed_rows(straight.trace)
        _assert_same_pools(resumed, straight, spec.search.budgets)


def test_search_with_the_items_own_quality(clustered_split: DatasetSplit, tmp_path: Path) -> None:
    spec = tiny_spec()
    spec = dataclasses.replace(
        spec, search=dataclasses.replace(spec.search, item_quality=ItemQuality.OWN)
    )
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    # The full model's item quality is now the items' own ranks: 0 exactly where an item has no
    # validation interaction, and it differs from the training users' mean eval.
    own = np.load(tmp_path / "full" / "item_quality.npy")
    _, valid = clustered_split.phase(Phase.SEARCH)
    no_pairs = np.bincount(valid.indices, minlength=clustered_split.num_items) == 0
    assert np.all(own[no_pairs] == 0.0) and np.all((own >= 0) & (own <= 1))
    assert own[~no_pairs].max() > 0
    for budget in ("0.5", "0.8"):
        assert BudgetFolder(tmp_path / f"budget-{budget}").chosen().sparsity >= float(budget)
        assert summary["budgets"][budget]["test"]["recall@20"] > 0


def test_share_fitting_scores_refitted_variants_and_retrains_the_best(
    clustered_split: DatasetSplit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = dataclasses.replace(tiny_spec(), share_grid=(0.3, 0.5, 0.7), retrain_top=1)
    with caplog.at_level(logging.INFO, logger="ciess_core.search.fit"):
        summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    for budget in ("0.5", "0.8"):
        fit = json.loads((tmp_path / f"budget-{budget}" / "fit.json").read_text())
        pool_variants = [row for row in fit if row["user_share"] is None]
        assert len(fit) == 4 * len(pool_variants)  # the pool's own plus one per share
        count = len(pool_variants)  # one progress line per pool candidate
        progress = [line for line in caplog.messages if line.startswith(f"budget {budget}: fit,")]
        assert [line.split(" scored")[0] for line in progress] == [
            f"budget {budget}: fit, candidate {i} of {count}" for i in range(1, count + 1)
        ]
        scores = [row["valid_ndcg@20"] for row in fit]
        assert scores == sorted(scores, reverse=True)  # best first
        best = fit[0]
        chosen = BudgetFolder(tmp_path / f"budget-{budget}").chosen()
        assert chosen.sparsity >= float(budget)
        assert chosen.user_sizes.mean() == pytest.approx(best["users_mean_size"])
        assert chosen.item_sizes.mean() == pytest.approx(best["items_mean_size"])
        assert summary["budgets"][budget]["test"]["recall@20"] > 0
    with pytest.raises(ConfigError, match="share_grid"):
        dataclasses.replace(spec, share_grid=(1.0,))


def test_within_side_spread_is_zero_for_per_side_equal_sizes_whatever_the_split() -> None:
    assert within_side_spread(SizeAssignment(np.array([9, 9, 9]), np.array([1, 1]), 9)) == 0.0
    # users 1 and 3 around 2, items 4 and 8 around 6: deviations 1, 1, 2, 2.
    spread = within_side_spread(SizeAssignment(np.array([1, 3]), np.array([4, 8]), 8))
    assert spread == pytest.approx(np.sqrt((1 + 1 + 4 + 4) / 4))


def test_held_out_selection_fits_spread_variants_on_validation_the_search_never_saw(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    spec = dataclasses.replace(
        tiny_spec(),
        share_grid=(0.3, 0.5, 0.7),
        retrain_top=1,
        spread_grid=(0.0, 0.5, 1.0),
        selection_share=0.5,
    )
    search_view, fit_view = selection_views(spec, clustered_split)
    # Two disjoint halves of validation; training and test untouched.
    assert search_view.valid.multiply(fit_view.valid).nnz == 0
    assert (search_view.valid + fit_view.valid != clustered_split.valid).nnz == 0
    assert search_view.train is clustered_split.train and fit_view.test is clustered_split.test
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    # The search's denominators: the full model scored on the search's half only.
    quality = np.load(tmp_path / "full" / "quality-share0.5-seed2.npz")
    full_on_all = np.load(tmp_path / "full" / "user_quality.npy")
    assert quality["users"].shape == full_on_all.shape
    assert not np.allclose(quality["users"], full_on_all)
    for budget in ("0.5", "0.8"):
        fit = json.loads((tmp_path / f"budget-{budget}" / "fit.json").read_text())
        scores = [row["valid_ndcg@20"] for row in fit]
        assert scores == sorted(scores, reverse=True)
        shrunk = [row for row in fit if "users_spread_factor" in row]
        assert shrunk, "no spread variant scored"
        # Every users' factor 0 variant has equal users (within one), at an unchanged sparsity.
        for row in shrunk:
            if row["users_spread_factor"] == 0.0 and row["items_spread_factor"] == 0.0:
                assert row["within_side_spread"] < 1.0
        chosen = BudgetFolder(tmp_path / f"budget-{budget}").chosen()
        assert chosen.sparsity >= float(budget) - 1e-12
        assert within_side_spread(chosen) == pytest.approx(fit[0]["within_side_spread"])
        assert summary["budgets"][budget]["chosen"] == 0
    # The fit scored on the half the search never saw: a fresh evaluator there agrees.
    evaluator = build_evaluator(spec, fit_view, cache_dir=tmp_path / "supernet")
    chosen = BudgetFolder(tmp_path / "budget-0.8").chosen()
    fit = json.loads((tmp_path / "budget-0.8" / "fit.json").read_text())
    assert evaluator.evaluate(chosen).metrics["ndcg@20"] == pytest.approx(fit[0]["valid_ndcg@20"])
    with pytest.raises(ConfigError, match="needs share_grid"):
        dataclasses.replace(spec, share_grid=())
    with pytest.raises(ConfigError, match="selection_share"):
        dataclasses.replace(spec, selection_share=1.0)
    with pytest.raises(ConfigError, match="spread_grid"):
        dataclasses.replace(spec, spread_grid=(1.5,))


@pytest.mark.parametrize("shares", [(), (0.3, 0.5, 0.7)], ids=["no-fit", "share-fit"])
def test_the_equal_candidate_is_retrained_beside_the_searched_one_and_the_pick_sees_both(
    clustered_split: DatasetSplit, tmp_path: Path, shares: tuple[float, ...]
) -> None:
    spec = dataclasses.replace(tiny_spec(), share_grid=shares, retrain_top=1, equal_candidate=True)
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    metric = spec.training.selection_metric
    for budget in ("0.5", "0.8"):
        folder = BudgetFolder(tmp_path / f"budget-{budget}")
        result = summary["budgets"][budget]
        assert [candidate["kind"] for candidate in result["candidates"]] == ["search", "equal"]
        best = max(result["candidates"], key=lambda candidate: candidate["valid"][metric])
        assert (result["chosen"], result["chosen_kind"]) == (best["candidate"], best["kind"])
        assert folder.chosen() == folder.candidate(best["candidate"])
        equal = folder.candidate(1)
        # The whole budget, never more, and each side equal within itself.
        assert equal.parameters == parameter_budget(equal.num_entities, MAX_SIZE, float(budget))
        for side in (equal.user_sizes, equal.item_sizes):
            assert side.max() - side.min() <= 1
        if shares:
            fit = json.loads((folder.path / "equal-fit.json").read_text())
            assert len(fit) == 1 + len(shares)
            assert equal.user_sizes.mean() == pytest.approx(fit[0]["users_mean_size"])
        else:
            assert equal.sizes.max() - equal.sizes.min() <= 1
            assert not (folder.path / "equal-fit.json").exists()


def test_distilled_retraining_follows_the_kept_full_model(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """Stage 1 keeps the full model's weights; with distillation the retraining uses them as the
    teacher, the search itself is unchanged, and the retrained models differ from plain BPR's."""
    plain = run_pipeline(tiny_spec(), clustered_split, tmp_path / "plain", progress=False)
    spec = dataclasses.replace(tiny_spec(), distillation=DistillationConfig(top_k=10))
    distilled = run_pipeline(spec, clustered_split, tmp_path / "kd", progress=False)
    for folder in ("plain", "kd"):
        assert (tmp_path / folder / "full" / "model.pt").exists()
    teacher = load_full_model(spec, clustered_split, tmp_path / "kd" / "full")
    train, valid = clustered_split.phase(Phase.SEARCH)
    assert evaluate_model(teacher, train, valid).mean() == pytest.approx(
        distilled["full_valid_metrics"]
    )
    assert _untimed_trace(tmp_path / "kd") == _untimed_trace(tmp_path / "plain")
    assert distilled["budgets"]["0.5"]["test"] != plain["budgets"]["0.5"]["test"]
    (tmp_path / "kd" / "full" / "model.pt").unlink()
    shutil.rmtree(tmp_path / "kd" / "budget-0.8")
    with pytest.raises(ConfigError, match=r"model\.pt is missing"):
        run_pipeline(spec, clustered_split, tmp_path / "kd", progress=False)


def test_retraining_from_the_turned_teachers_resumes_old_folders_and_needs_their_teachers(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """``retrain_start`` TEACHER retrains every candidate from its phase's teacher: the search
    is the random start's, the retrained models are not. A folder written before the setting
    existed resumes as the random start it ran; the setting needs distillation and LightGCN."""
    random_start = dataclasses.replace(tiny_spec(), distillation=DistillationConfig(top_k=10))
    random_start = dataclasses.replace(
        random_start, search=dataclasses.replace(random_start.search, budgets=(0.8,))
    )
    warm_start = dataclasses.replace(random_start, retrain_start=Start.TEACHER)
    claim_pipeline_folder(tmp_path / "old", random_start)
    (tmp_path / "old" / "checkpoints").mkdir()  # a stage has begun: the folder holds work
    (tmp_path / "old" / "checkpoints" / "begun").write_text("")
    stored = json.loads((tmp_path / "old" / "spec.json").read_text())
    del stored["retrain_start"]
    (tmp_path / "old" / "spec.json").write_text(json.dumps(stored))
    claim_pipeline_folder(tmp_path / "old", random_start)  # an older folder resumes
    with pytest.raises(ConfigError, match=r'other settings .*retrain_start: "random" -> "teacher"'):
        claim_pipeline_folder(tmp_path / "old", warm_start)
    reuse_sibling_stages(tmp_path / "old", stages_identity(jsonable(random_start), "data"))
    with pytest.raises(ConfigError, match="one beside it reuses this folder's full model"):
        claim_pipeline_folder(tmp_path / "old", warm_start)  # the budget-free stages are alike
    other_recipe = dataclasses.replace(
        random_start, training=dataclasses.replace(random_start.training, batch_size=64)
    )
    with pytest.raises(ConfigError, match=r"new one$"):
        claim_pipeline_folder(tmp_path / "old", other_recipe)
    scratch = run_pipeline(random_start, clustered_split, tmp_path / "old", progress=False)
    warm = run_pipeline(warm_start, clustered_split, tmp_path / "warm", progress=False)
    assert _untimed_trace(tmp_path / "warm") == _untimed_trace(tmp_path / "old")
    assert warm["budgets"]["0.8"]["test"] != scratch["budgets"]["0.8"]["test"]
    assert warm["budgets"]["0.8"]["achieved_sparsity"] >= 0.8 - 1e-9
    with pytest.raises(ConfigError, match="only a pipeline that distils"):
        dataclasses.replace(tiny_spec(), retrain_start=Start.TEACHER)
    # the shipped recipes: LightGCN starts from its teachers, the others from random weights
    assert pipeline_spec("ml-1m", "lightgcn").retrain_start is Start.TEACHER
    assert {pipeline_spec("ml-1m", kind).retrain_start for kind in ("ngcf", "ncf")} == {
        Start.RANDOM
    }
    with pytest.raises(ConfigError, match="LightGCN only"):
        dataclasses.replace(
            warm_start, backbone=BackboneConfig(kind=BackboneKind.NGCF, max_size=MAX_SIZE)
        )


def check_the_test_phase_teacher_is_trained_once(
    clustered_split: DatasetSplit, tmp_path: Path, protocol: RunProtocol
) -> None:
    """Under ``protocol``, a phase teacher on train and validation, trained once (also run with
    the reference protocol by ``tests/test_bench_experiments.py``)."""
    config = DistillationConfig(top_k=10, teacher=TeacherSource.PHASE)
    spec = dataclasses.replace(tiny_spec(), distillation=config, protocol=protocol)
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    assert summary["timings"]["teacher"] > 0
    teachers, _ = prepare_teachers(spec, clustered_split, tmp_path, progress=False)
    # Each teacher propagates over its own phase's graph: the test one has the validation edges.
    edges = {
        phase: teacher.propagation.matrix.values().numel()  # type: ignore[union-attr,operator]
        for phase, teacher in teachers.items()
    }
    assert edges[Phase.TEST] > edges[Phase.SEARCH]
    weights = (tmp_path / "teacher" / "model.pt").stat().st_mtime_ns
    run_pipeline(spec, clustered_split, tmp_path, progress=False)
    assert (tmp_path / "teacher" / "model.pt").stat().st_mtime_ns == weights  # not retrained
    shutil.rmtree(tmp_path / "teacher")  # every budget is done: no teacher is needed any more
    run_pipeline(spec, clustered_split, tmp_path, progress=False)
    assert not (tmp_path / "teacher").exists()


def test_a_test_phase_teacher_is_trained_once_on_train_and_validation(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    check_the_test_phase_teacher_is_trained_once(clustered_split, tmp_path, Protocol.CLEAN)


def _untimed_trace(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "search" / "trace.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if "seconds" not in key} for row in rows]


def check_two_workers_give_the_same_models_as_one(
    clustered_split: DatasetSplit,
    tmp_path: Path,
    protocol: RunProtocol,
    executor: str = "processes",
    fingerprint: str | None = None,
) -> None:
    """Under ``protocol``, stages run two at a time on ``executor`` (worker processes, or Ray
    tasks in ``tests/test_executors.py``) give the one-process models (also run with the
    reference protocol by ``tests/test_bench_experiments.py``). With ``fingerprint``, each
    budget's deployment model too: the weights an artifact is exported from."""
    config = DistillationConfig(top_k=10, teacher=TeacherSource.PHASE)
    spec = dataclasses.replace(tiny_spec(), distillation=config, protocol=protocol)
    one = run_pipeline(
        spec, clustered_split, tmp_path / "one", progress=False, dataset_fingerprint=fingerprint
    )
    two = run_pipeline(
        spec,
        clustered_split,
        tmp_path / "two",
        progress=False,
        workers=2,
        executor=executor,
        dataset_fingerprint=fingerprint,
    )
    assert two["workers"] == 2 and two["executor"] == executor
    assert set(two["timings"]) == set(one["timings"])  # the teacher's and every budget's
    for budget in ("0.5", "0.8"):
        assert two["budgets"][budget]["test"] == one["budgets"][budget]["test"]
        assert two["budgets"][budget]["valid"] == one["budgets"][budget]["valid"]
        folders = [BudgetFolder.of(tmp_path / side, float(budget)) for side in ("one", "two")]
        assert folders[1].chosen() == folders[0].chosen()
        if fingerprint is not None:
            deployed = [torch.load(folder.run / MODEL_FILE) for folder in folders]
            assert deployed[1].keys() == deployed[0].keys()
            assert all(torch.equal(deployed[1][key], deployed[0][key]) for key in deployed[0])
    assert torch.equal(
        torch.load(tmp_path / "two" / "teacher" / "model.pt")["embedding.weight"],
        torch.load(tmp_path / "one" / "teacher" / "model.pt")["embedding.weight"],
    )
    with pytest.raises(ConfigError, match="workers"):
        run_pipeline(
            spec, clustered_split, tmp_path / "none", progress=False, workers=0, executor=executor
        )


def test_two_workers_give_the_same_models_as_one(
    clustered_split: DatasetSplit, tmp_path: Path, one_thread: None
) -> None:
    check_two_workers_give_the_same_models_as_one(clustered_split, tmp_path, Protocol.CLEAN)


def test_the_default_pipeline_deploys_the_chosen_candidate_trained_on_every_interaction(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """The product's defaults: fits on held-out validation, the searched and the per-side equal
    candidate both distilled, the pick on validation, then the deployment model."""
    product = PipelineSpec(
        dataset="generated",
        backbone=tiny_spec().backbone,
        training=tiny_spec().training,
        search=tiny_spec().search,
    )
    spec = dataclasses.replace(product, supernet_batches=60)
    assert spec.equal_candidate and spec.distillation is not None and spec.selection_share == 0.5
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False, dataset_fingerprint="f")
    for budget in ("0.5", "0.8"):
        result = summary["budgets"][budget]
        assert [c["kind"] for c in result["candidates"]] == ["search", "equal"]
        chosen = result["candidates"][result["chosen"]]
        folder = BudgetFolder(tmp_path / f"budget-{budget}")
        run = read_run(folder.run)
        assert run.metrics["test"] == result["test"] == chosen["test"]
        assert run.metrics["stages"]["deploy"]["batches_run"] == chosen["selected_batches"]
        assert run.config["trained_on"].startswith("all")
        assert run.config["format_version"] == RUN_FORMAT_VERSION
        assert run.sizes == folder.chosen() == folder.candidate(result["chosen"])
        assert summary["timings"][f"deploy_{budget}"] > 0
        for record in result["candidates"]:  # scored on the half the search never saw too
            assert set(record["valid_held_out"]) == set(record["valid"])
    assert {"teacher", "teacher-deploy"} <= set(summary["timings"])
    # Each phase's teacher is a full model of that phase's data.
    teachers, _ = prepare_teachers(spec, clustered_split, tmp_path)
    assert set(teachers) == {Phase.SEARCH, Phase.TEST, Phase.DEPLOY}
    assert teachers[Phase.DEPLOY].num_users == clustered_split.num_users
    # The held-out score is the fits' view: the half of validation the search never saw.
    train, held = selection_views(spec, clustered_split)[1].phase(Phase.SEARCH)
    expected = evaluate_model(teachers[Phase.SEARCH], train, held, 64, value_type="float32").mean()
    measured = held_out_metrics(spec, clustered_split, teachers[Phase.SEARCH], "float32")
    assert measured == pytest.approx(expected)
    assert measured != pytest.approx(summary["full_valid_metrics"])
    # bench/selection_views.py reads both picks of every budget.
    rows = budget_rows(tmp_path)
    assert [row["budget"] for row in rows] == ["0.5", "0.8"]
    for row in rows:
        assert row["picked"] == summary["budgets"][row["budget"]]["chosen"]
        best = max(row["candidates"], key=lambda candidate: candidate["valid_held_out"])
        assert row["agree"] == (best["candidate"] == row["picked"])
    shutil.copytree(tmp_path / "budget-0.5", tmp_path / "bytes-0.05")  # a byte budget's folder
    assert [row["budget"] for row in budget_rows(tmp_path)] == ["0.5", "0.8", "bytes-0.05"]


def test_only_the_pick_is_tested_and_a_resumed_budget_keeps_its_selections(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean protocol: every candidate is selected on validation, only the pick is trained on
    train ∪ validation and tested. A pipeline stopped after the selections trains only what is
    left: the pick's test and its deployment model."""
    spec = dataclasses.replace(tiny_spec(), equal_candidate=True, share_grid=(0.5,), retrain_top=1)
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False, dataset_fingerprint="f")
    for budget in ("0.5", "0.8"):
        result = summary["budgets"][budget]
        assert len(result["candidates"]) == 2
        for record in result["candidates"]:
            picked = record["candidate"] == result["chosen"]
            assert ("test" in record) == picked and ("final" in record["stages"]) == picked
            assert record["stages"]["select"]["best_batch"] >= 1
    folder = BudgetFolder.of(tmp_path, 0.8)
    chosen = summary["budgets"]["0.8"]["chosen"]
    (folder.path / "result.json").unlink()
    shutil.rmtree(folder.run)
    trained: list[int] = []
    original = runs.train_bpr

    def counting(model, train, *arguments, **keywords):  # type: ignore[no-untyped-def]
        trained.append(train.nnz)
        return original(model, train, *arguments, **keywords)

    monkeypatch.setattr(runs, "train_bpr", counting)
    again = run_pipeline(spec, clustered_split, tmp_path, progress=False, dataset_fingerprint="f")
    test_train, _ = clustered_split.phase(Phase.TEST)
    everything, _ = clustered_split.phase(Phase.DEPLOY)
    assert sorted(trained) == sorted([test_train.nnz, everything.nnz])
    assert again["budgets"]["0.8"]["chosen"] == chosen
    assert again["budgets"]["0.8"]["test"] == summary["budgets"]["0.8"]["test"]
    assert read_run(folder.run).sizes == folder.candidate(chosen)
    assert not (folder.path / "deploy").exists()


def test_a_resumed_pipeline_reuses_its_finished_fits_without_scoring_again(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """The fits are kept with the fingerprint of their inputs: a pipeline resumed before its
    retraining finished scores nothing again (NCF's fits took about half an hour on ML-1M), and
    a fit whose kept variants are gone is redone to the same record."""
    spec = dataclasses.replace(tiny_spec(), equal_candidate=True, share_grid=(0.5,), retrain_top=1)
    first = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    scored: list[SizeAssignment] = []

    def counting_evaluator(*arguments):  # type: ignore[no-untyped-def]
        evaluator = build_evaluator(*arguments)
        evaluate = evaluator.evaluate

        def counted(sizes, *rest):  # type: ignore[no-untyped-def]
            scored.append(sizes)
            return evaluate(sizes, *rest)

        evaluator.evaluate = counted  # type: ignore[method-assign]
        return evaluator

    folder = BudgetFolder.of(tmp_path, 0.8)
    fit_before = (folder.path / "fit.json").read_text()
    (folder.path / "result.json").unlink()  # stopped before the pick: its fits run again
    again = run_pipeline(
        spec, clustered_split, tmp_path, progress=False, evaluator_factory=counting_evaluator
    )
    assert scored == []
    assert again["budgets"]["0.8"]["chosen"] == first["budgets"]["0.8"]["chosen"]
    assert again["budgets"]["0.8"]["test"] == first["budgets"]["0.8"]["test"]
    (folder.path / "result.json").unlink()
    (folder.path / "fit.sizes.npz").unlink()
    run_pipeline(
        spec, clustered_split, tmp_path, progress=False, evaluator_factory=counting_evaluator
    )
    # every variant of fit.json scored once more; equal-fit.json's kept
    assert len(scored) == len(json.loads(fit_before))
    assert (folder.path / "fit.json").read_text() == fit_before


class _StopError(Exception):
    """Stands for a stopped session or a lost worker."""


def test_a_pipeline_stopped_inside_a_training_resumes_it_from_its_checkpoint(
    clustered_split: DatasetSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every training of the pipeline keeps a checkpoint (here after each batch): stopped in the
    middle of a candidate's selection, the pipeline resumes that training where it stopped and
    ends with the uninterrupted pipeline's numbers; the finished pipeline removes its checkpoint
    folder, with any checkpoint a training left that will not come back."""
    spec = dataclasses.replace(tiny_spec(), retrain_top=1)
    expected = run_pipeline(spec, clustered_split, tmp_path / "straight", progress=False)
    monkeypatch.setattr(checkpoints, "DEFAULT_EVERY_SECONDS", 0.0)
    original = runs.train_bpr
    evaluated: list[int] = []

    def stopping(model, train, config, held_out=None, **keywords):  # type: ignore[no-untyped-def]
        def stop_at_40(record: EvaluationRecord) -> None:
            evaluated.append(record.batch)
            if record.batch == 40:
                raise _StopError

        if held_out is not None:  # a candidate's selection on validation
            keywords["on_evaluation"] = stop_at_40
        return original(model, train, config, held_out, **keywords)

    monkeypatch.setattr(runs, "train_bpr", stopping)
    out = tmp_path / "stopped"
    with pytest.raises(_StopError):
        run_pipeline(spec, clustered_split, out, progress=False)
    stopped = evaluated.count(40)  # each budget's selection, the units run on after a failure
    assert stopped >= 1 and evaluated == [20, 40] * stopped
    assert len(list((out / "checkpoints").glob("train-*.pt"))) == stopped
    again: list[int] = []

    def recording(model, train, config, held_out=None, **keywords):  # type: ignore[no-untyped-def]
        if held_out is not None:
            keywords["on_evaluation"] = lambda record: again.append(record.batch)
        return original(model, train, config, held_out, **keywords)

    monkeypatch.setattr(runs, "train_bpr", recording)
    (out / "checkpoints" / "train-stale.pt").write_bytes(b"of a training stopped long ago")
    resumed = run_pipeline(spec, clustered_split, out, progress=False)
    assert 20 not in again and again.count(40) == stopped  # resumed at 40, not from batch 1
    for budget, result in expected["budgets"].items():
        after_resume = resumed["budgets"][budget]
        assert after_resume["test"] == result["test"]
        assert [c["valid"] for c in after_resume["candidates"]] == [
            c["valid"] for c in result["candidates"]
        ]
        assert [c["stages"]["select"]["best_batch"] for c in after_resume["candidates"]] == [
            c["stages"]["select"]["best_batch"] for c in result["candidates"]
        ]
    assert not (out / "checkpoints").exists()  # the stale checkpoint went with the folder


def test_a_budget_folder_of_bare_size_vectors_is_refused(tmp_path: Path) -> None:
    folder = BudgetFolder.of(tmp_path, 0.9)
    folder.write_result({"chosen": 0}, SizeAssignment.equal(3, 2, 4, 16))
    assert folder.finished() and folder.chosen() == SizeAssignment.equal(3, 2, 4, 16)
    (folder.path / "sizes.npz").rename(folder.path / "sizes.npy")
    with pytest.raises(DataError, match=r"bare sizes\.npy \(an older ciess\); remove the folder"):
        folder.chosen()


def test_a_pipeline_stopped_inside_the_supernets_training_resumes_it(
    clustered_split: DatasetSplit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The supernet's training keeps its checkpoint in the run's checkpoint folder: a pipeline
    stopped in it resumes at the batch it stopped at and ends with the uninterrupted pipeline's
    numbers."""
    spec = dataclasses.replace(tiny_spec(), retrain_top=1)
    expected = run_pipeline(spec, clustered_split, tmp_path / "straight", progress=False)
    monkeypatch.setattr(checkpoints, "DEFAULT_EVERY_SECONDS", 0.0)
    draw = RandomSizeDraws.__call__
    stopped: list[int] = []

    def stopping_draw(self: RandomSizeDraws, batch_index: int) -> None:
        if batch_index == 15 and not stopped:
            stopped.append(batch_index)
            raise _StopError
        draw(self, batch_index)

    monkeypatch.setattr(RandomSizeDraws, "__call__", stopping_draw)
    out = tmp_path / "stopped"
    with pytest.raises(_StopError):
        run_pipeline(spec, clustered_split, out, progress=False)
    assert len(list((out / "checkpoints").glob("train-*.pt"))) == 1
    with caplog.at_level(logging.INFO, logger="ciess_core.training.checkpoints"):
        resumed = run_pipeline(spec, clustered_split, out, progress=False)
    assert "resuming training at batch 15" in caplog.text
    for budget, result in expected["budgets"].items():
        assert resumed["budgets"][budget]["test"] == result["test"]
        assert [c["valid"] for c in resumed["budgets"][budget]["candidates"]] == [
            c["valid"] for c in result["candidates"]
        ]
