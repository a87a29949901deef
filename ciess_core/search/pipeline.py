"""The whole CIESS pipeline for one dataset and backbone, resumable stage by stage.

Stages, each writing its results under the output directory and skipped when already there:

1. ``full/``: the full-size model trained on the search split (early stopping on validation);
   its per-user and per-item validation quality are the denominators of the quality ratio, and
   its weights (``model.pt``) are the teacher when retraining distils.
2. the evaluator's one-off preparation (the supernet, for the default evaluator).
3. ``search/``: the episode loop with checkpoints, ``trace.jsonl`` and the assignment pool.
4. ``budget-<c>/`` (:class:`~ciess_core.search.files.BudgetFolder`): optionally the share fit
   (:mod:`ciess_core.search.fit`, ``fit.json``, see ``PipelineSpec.share_grid``),
   then selective retraining of the best assignments for each budget (with
   ``PipelineSpec.equal_candidate``, per-side equal sizes too), the pick on validation and the
   final test under the chosen protocol.
5. ``budget-<c>/run``: with a dataset fingerprint, the chosen candidate's deployment model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ciess_core.artifact.manifest import TABLES_BY_KIND
from ciess_core.data import DatasetSplit, Phase, hold_out_per_user
from ciess_core.errors import ConfigError
from ciess_core.executors import DEFAULT_EXECUTOR
from ciess_core.models import BackboneConfig, BackboneKind
from ciess_core.runs import Protocol, RunProtocol, Start
from ciess_core.search.budgets import Budget, ByteBudget, budget_label, check_within
from ciess_core.search.config import SearchConfig
from ciess_core.search.evaluators import QualityEvaluator, SupernetEvaluator, quality_signal
from ciess_core.search.files import BudgetFolder, checkpoint_folder, read_cached, write_json
from ciess_core.search.fit import (
    DEFAULT_SHARE_GRID,
    DEFAULT_SPREAD_GRID,
    equal_split_candidate,
    fit_shares,
)
from ciess_core.search.loop import SearchHooks, SearchInputs, run_search
from ciess_core.search.parallel import stage_runner
from ciess_core.search.planner import check_byte_budgets, plan_candidates, search_budgets
from ciess_core.search.pool import AssignmentPool
from ciess_core.search.retraining import (
    Candidate,
    deploy_budget,
    retrain_budget,
    retrain_budgets,
)
from ciess_core.search.teachers import (
    TEACHER_DIRECTORIES,
    full_size_model,
    keeps_phase_teachers,
    load_full_model,
    prepare_teachers,
    train_phase_teacher,
)
from ciess_core.staged_files import staged_file
from ciess_core.training import TrainConfig, train_bpr
from ciess_core.training.checkpoints import training_checkpoints
from ciess_core.training.distillation import DistillationConfig

__all__ = [
    "ByteBudget",
    "Candidate",
    "EvaluatorFactory",
    "PipelineSpec",
    "StageReport",
    "build_evaluator",
    "deploy_budget",
    "load_full_model",
    "prepare_teachers",
    "retrain_budget",
    "run_pipeline",
    "selection_views",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that defines a CIESS pipeline run; the defaults are the best recipe measured
    (docs/benchmarks/ciess-ml-1m.md): the supernet evaluator, the share and spread fits scored
    on held-out validation, one searched candidate retrained beside per-side equal sizes, both
    distilled from a full model of their phase, under the clean protocol.

    Attributes:
        dataset: dataset name or path (recorded, the split is passed in).
        backbone: the backbone's hyper-parameters.
        training: schedule of the full model and of the retraining runs.
        search: the search's hyper-parameters, budgets included.
        supernet_batches: training batches of the supernet (supernet evaluator).
        finetune_batches: batches under a candidate's masks before it is scored (supernet).
        retrain_top: how many of each budget's best assignments are retrained (≤ pool size).
        protocol: how the retrained models are tested (the core's: clean).
        share_grid: users' shares of the budget to try for every pool assignment before
            retraining (empty: off, the paper's). Each assignment is refitted to the budget at
            each share (:func:`~ciess_core.search.pool.split_budget`), every variant (the
            assignment as the pool gives it included) is scored by the evaluator on validation
            with ``training.selection_metric``, and the best ``retrain_top`` are retrained. The
            search's per-entity rewards cannot see how one side's sizes cost the other side's
            quality; this step weighs the two sides against each other on the metric itself.
        distillation: when set, selective retraining also distils from the full model of stage 1
            (:mod:`ciess_core.training.distillation`); None: plain BPR, the paper's.
        equal_candidate: also retrain per-side equal sizes at each budget
            (:func:`~ciess_core.search.fit.equal_split_candidate`) beside the search's
            assignments, and let the protocol's pick choose among them all. The pick then never
            keeps a searched assignment that retrains worse than equal sizes fitted the same
            way; the result records which kind it kept. Off: the paper's, only searched
            assignments.
        spread_grid: with the share fit, factors by which each side's spread around its mean is
            shrunk (:func:`~ciess_core.search.pool.shrink_spread`; 1 keeps the search's sizes,
            0 makes the side equal). Every pair (users' factor, items' factor) is tried on the
            ``retrain_top`` best share-fitted variants and scored like them (empty: off).
        selection_share: the fraction of every user's validation interactions that the search
            never sees (0: off, the paper's: one validation set for everything). The search's
            rewards and the full model's quality ratios use the rest; the share and spread fits
            score every variant on this held-out part only. The search fits its per-entity
            sizes to the validation interactions it is rewarded on, noise included, so its
            picks score higher there than on unseen data (session 16 of the notes); scores on
            interactions it never saw tell the spread that generalises from the spread that
            fits noise.
        byte_ratios: byte budgets, each a ratio of the dense float32 bytes of the embedding
            tables (:class:`~ciess_core.search.budgets.ByteBudget`). When set, these are the
            pipeline's budgets instead of ``search.budgets``: the byte planner
            (:mod:`ciess_core.search.planner`) chooses each one's value type and sizes, and
            ``search.budgets`` only add assignments to the pool.
        retrain_start: where every candidate's retraining starts in each phase
            (:class:`~ciess_core.runs.Start`): from random weights (the paper's), or from that
            phase's teacher turned to its principal axes and cut to the candidate's sizes
            (LightGCN only; it needs ``distillation``, whose teachers it starts from).
            :func:`ciess_core.pipeline.pipeline_spec` gives each backbone its measured best
            (``RETRAIN_START``: the teacher for LightGCN).
    """

    dataset: str
    backbone: BackboneConfig
    training: TrainConfig
    search: SearchConfig
    supernet_batches: int = 2000
    finetune_batches: int = 0
    retrain_top: int = 1
    protocol: RunProtocol = Protocol.CLEAN
    share_grid: tuple[float, ...] = DEFAULT_SHARE_GRID
    distillation: DistillationConfig | None = DistillationConfig()  # noqa: RUF009 (frozen)
    equal_candidate: bool = True
    spread_grid: tuple[float, ...] = DEFAULT_SPREAD_GRID
    selection_share: float = 0.5
    byte_ratios: tuple[float, ...] = ()
    retrain_start: Start = Start.RANDOM

    @property
    def backbone_tables(self) -> int:
        """How many embedding tables the backbone stores (NCF: two, its GMF and MLP tables)."""
        return len(TABLES_BY_KIND[self.backbone.kind.value])

    def __post_init__(self) -> None:
        if self.spread_grid and not self.share_grid:
            raise ConfigError("spread_grid adds variants to the share fit and needs share_grid")
        for factor in self.spread_grid:
            if not 0.0 <= factor <= 1.0:
                raise ConfigError(f"spread_grid values must lie in [0, 1], got {factor}")
        if not 0.0 <= self.selection_share < 1.0:
            raise ConfigError(f"selection_share must lie in [0, 1), got {self.selection_share}")
        if self.selection_share and not self.share_grid:
            raise ConfigError(
                "selection_share holds validation out for the share fit and needs share_grid"
            )
        for share in self.share_grid:
            if not 0.0 < share < 1.0:
                raise ConfigError(f"share_grid values must lie in (0, 1), got {share}")
        for ratio in self.byte_ratios:
            ByteBudget(ratio)  # raises ConfigError outside (0, 1]
        if len(set(self.byte_ratios)) != len(self.byte_ratios):
            raise ConfigError(f"byte_ratios must be distinct, got {list(self.byte_ratios)}")
        if not 1 <= self.retrain_top <= self.search.pool_size:
            raise ConfigError(
                f"retrain_top must lie in [1, pool size {self.search.pool_size}], "
                f"got {self.retrain_top}"
            )
        if self.retrain_start is Start.TEACHER and self.backbone.kind is not BackboneKind.LIGHTGCN:
            raise ConfigError(
                "retrain_start 'teacher' turns the teachers' tables, which keeps the scores of "
                f"LightGCN only; this pipeline's backbone is {self.backbone.kind.value}"
            )
        if self.retrain_start is Start.TEACHER and self.distillation is None:
            raise ConfigError(
                "retrain_start 'teacher' starts from the phases' teachers, which only a "
                "pipeline that distils keeps"
            )
        if self.backbone.max_size != self.search.max_size:
            raise ConfigError(
                f"the backbone's max_size {self.backbone.max_size} and the search's "
                f"{self.search.max_size} differ"
            )


def _full_model_quality(
    spec: PipelineSpec, split: DatasetSplit, directory: Path, progress: bool
) -> dict[str, Any]:
    """Stage 1: train the full model on the search split; cache its validation quality."""
    summary_path = directory / "summary.json"
    if (cached := read_cached(summary_path)) is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    train, valid = split.phase(Phase.SEARCH)
    started = time.perf_counter()
    model = full_size_model(spec, train)
    with training_checkpoints(checkpoint_folder(directory.parent)):
        result = train_bpr(model, train, spec.training, held_out=valid, progress=progress)
    signal = quality_signal(model, train, valid, started, spec.search.item_quality)
    np.save(directory / "user_quality.npy", signal.user_eval)
    np.save(directory / "item_quality.npy", signal.item_eval)
    torch.save(model.state_dict(), directory / "model.pt")
    summary = {
        "valid_metrics": signal.metrics,
        "best_batch": result.best_batch,
        "batches_run": result.batches_run,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(summary_path, summary)
    return summary


def selection_views(spec: PipelineSpec, split: DatasetSplit) -> tuple[DatasetSplit, DatasetSplit]:
    """(the search's view, the fits' view) of ``split``: the same split, or with
    ``spec.selection_share`` each holding its own part of every user's validation interactions
    (:func:`~ciess_core.data.hold_out_per_user`, seeded by the search's seed). Training and test
    matrices are untouched, so the test phase still trains on train ∪ all of validation."""
    if not spec.selection_share:
        return split, split
    kept, held = hold_out_per_user(split.valid, spec.selection_share, spec.search.seed)
    return dataclasses.replace(split, valid=kept), dataclasses.replace(split, valid=held)


def _search_quality(spec: PipelineSpec, search_split: DatasetSplit, out: Path) -> dict[str, Any]:
    """The full model's per-user and per-item quality on the search's validation interactions,
    the denominators of the search's quality ratios: stage 1's arrays, or with
    ``spec.selection_share`` the full model scored again on the search's part (kept in
    ``full/``, one file per share and seed)."""
    directory = out / "full"
    if not spec.selection_share:
        return {
            "users": np.load(directory / "user_quality.npy"),
            "items": np.load(directory / "item_quality.npy"),
        }
    path = directory / f"quality-share{spec.selection_share:g}-seed{spec.search.seed}.npz"
    if not path.exists():
        train, valid = search_split.phase(Phase.SEARCH)
        model = load_full_model(spec, search_split, directory)
        signal = quality_signal(model, train, valid, time.perf_counter(), spec.search.item_quality)
        with staged_file(path) as staging, staging.open("wb") as handle:
            np.savez(handle, users=signal.user_eval, items=signal.item_eval)
    with np.load(path) as arrays:
        return {"users": arrays["users"], "items": arrays["items"]}


def search_inputs(spec: PipelineSpec, search_split: DatasetSplit, out: Path) -> SearchInputs:
    """What the search of the pipeline folder ``out`` knows of the data: the training
    interactions per user and item, and the full model's quality on the search's validation
    (stage 1's, :func:`selection_views`' search view). Also what a search of other settings
    from the same full model starts from (``bench/sensitivity.py``)."""
    train, _ = search_split.phase(Phase.SEARCH)
    return SearchInputs(
        popularity={
            "users": np.diff(train.indptr).astype(np.float64),
            "items": np.bincount(train.indices, minlength=search_split.num_items).astype(
                np.float64
            ),
        },
        full_quality=_search_quality(spec, search_split, out),
    )


def build_evaluator(
    spec: PipelineSpec, split: DatasetSplit, cache_dir: Path | None = None
) -> SupernetEvaluator:
    """The supernet evaluator of ``spec`` on the search split; its weights are kept in
    ``cache_dir`` when given."""
    train, valid = split.phase(Phase.SEARCH)
    supernet_training = dataclasses.replace(spec.training, max_batches=spec.supernet_batches)
    return SupernetEvaluator(
        train,
        valid,
        spec.backbone,
        supernet_training,
        finetune_batches=spec.finetune_batches,
        item_quality=spec.search.item_quality,
        cache_path=None if cache_dir is None else cache_dir / "supernet.pt",
    )


EvaluatorFactory = Callable[[PipelineSpec, DatasetSplit, Path | None], QualityEvaluator]
"""Builds the search's evaluator from (spec, the split it scores on, a cache folder):
:func:`build_evaluator` by default, another one for an experiment (``bench/experiments``)."""


StageReport = Callable[[str, float], None]
"""Called with a stage's name and the pipeline's progress in [0, 1] when a stage starts."""


def run_pipeline(
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    progress: bool = True,
    dataset_fingerprint: str | None = None,
    workers: int = 1,
    on_stage: StageReport | None = None,
    evaluator_factory: EvaluatorFactory = build_evaluator,
    hooks: SearchHooks | None = None,
    executor: str = DEFAULT_EXECUTOR,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns and writes ``summary.json``.

    With ``dataset_fingerprint`` (the data's :meth:`InteractionData.fingerprint`), each budget's
    chosen candidate is trained once more on every interaction and kept as a run directory
    ``out/budget-<c>/run`` for ``ciess export``.

    ``workers`` > 1 runs independent stages side by side, that many at a time, on ``executor``
    (:func:`~ciess_core.search.parallel.stage_runner`: local processes by default, or Ray
    tasks): the phases' teachers beside the search, and the retraining's units
    (:func:`~ciess_core.search.retraining.retrain_budgets`) beside each other. Results are the
    same as with one worker;
    ``summary["timings"]`` still holds each stage's own seconds, so with workers their sum
    exceeds the wall time (``summary["seconds_this_call"]``).
    ``on_stage`` hears of every stage as it starts (a budget job's progress).
    ``evaluator_factory`` and ``hooks``: the search's evaluator and its exploration and penalty,
    the product's by default (experiments: ``bench/experiments``).
    """
    check_byte_budgets(spec, split.num_users + split.num_items)
    report: StageReport = on_stage or (lambda stage, fraction: None)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    served: list[Budget] = (
        [ByteBudget(ratio) for ratio in spec.byte_ratios]
        if spec.byte_ratios
        else list(spec.search.budgets)
    )
    folders = {budget: BudgetFolder.of(out, budget) for budget in served}
    # the budgets whose retraining has not finished in an earlier call
    pending = {budget: not folder.finished() for budget, folder in folders.items()}
    deploying = dataset_fingerprint is not None and not all(
        folder.deployed() for folder in folders.values()
    )
    teacher_phases: list[Phase] = []
    if keeps_phase_teachers(spec):
        teacher_phases += [Phase.TEST] if any(pending.values()) else []
        teacher_phases += [Phase.DEPLOY] if deploying else []
    with stage_runner(executor, workers) as runner:
        report("full model", 0.0)  # alone, so with every thread whatever the workers
        full = _full_model_quality(spec, split, out / "full", progress)
        with runner.sharing_cores():
            stage_progress = progress and not runner.parallel  # no bars from worker processes
            teachers = {  # they need the full model's batch count
                phase: runner.submit(train_phase_teacher, spec, split, out, stage_progress, phase)
                for phase in teacher_phases
            }
            search_split, fit_split = selection_views(spec, split)
            report("search", 0.15)
            pool, evaluator = _search_stage(
                spec, search_split, out, progress, timings, evaluator_factory, hooks, report
            )
            timings = {"full_model": full["seconds"], **timings}
            if spec.selection_share:  # the fits score on the held-out part: their own evaluator
                evaluator = None
            report("fits", 0.4)
            candidates = {}
            for budget in served:
                candidates[budget], evaluator = _budget_candidates(
                    spec,
                    fit_split,
                    out,
                    pool,
                    evaluator,
                    budget,
                    pending[budget],
                    timings,
                    evaluator_factory,
                )
            report("retraining", 0.5)
            retrained = retrain_budgets(
                runner,
                spec,
                split,
                out,
                candidates,
                teachers,
                stage_progress,
                dataset_fingerprint,
                report,
            )
            for phase, teacher in teachers.items():
                timings[TEACHER_DIRECTORIES[phase]] = teacher.result()
    budgets = {}
    for budget, result in retrained.items():
        deploy_seconds = result.pop("deploy_seconds")
        label = budget_label(budget)
        budgets[label] = result
        timings[f"retrain_{label}"] = result["seconds"]
        if deploy_seconds:
            timings[f"deploy_{label}"] = deploy_seconds
        chosen_type = result.get("value_type", "float32")
        check_within(budget, folders[budget].chosen(), chosen_type, spec.backbone_tables)
    summary = {
        "dataset": spec.dataset,
        "backbone": spec.backbone.kind.value,
        "protocol": spec.protocol.value,
        "num_users": split.num_users,
        "num_items": split.num_items,
        "full_valid_metrics": full["valid_metrics"],
        "budgets": budgets,
        "timings": timings,
        "workers": workers,
        "executor": executor,
        "seconds_this_call": round(time.perf_counter() - started, 2),
    }
    write_json(out / "summary.json", summary)
    # every training has finished: what is left there is from trainings that will not come back
    # (stopped under settings since changed)
    shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
    return summary


def _search_stage(
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    progress: bool,
    timings: dict[str, float],
    evaluator_factory: EvaluatorFactory,
    hooks: SearchHooks | None,
    report: StageReport,
) -> tuple[AssignmentPool, QualityEvaluator | None]:
    """Stages 2–3: the evaluator's preparation and the search, or the pool an earlier call left.
    ``split``: the search's view (:func:`selection_views`). ``report`` hears of every search
    iteration (progress 0.2 to 0.4 of the pipeline).

    Returns the pool and the evaluator when this call built one (None: not needed yet)."""
    search_dir = out / "search"
    search_dir.mkdir(exist_ok=True)
    pool_dir = search_dir / "pool"
    if (search_dir / "done.json").exists():
        timings.update(json.loads((search_dir / "done.json").read_text())["timings"])
        return AssignmentPool.load(pool_dir), None
    inputs = search_inputs(spec, split, out)
    stage_started = time.perf_counter()
    report("supernet", 0.15)
    evaluator = _prepared_evaluator(evaluator_factory, spec, split, out)
    timings["evaluator_prepare"] = round(time.perf_counter() - stage_started, 2)
    stage_started = time.perf_counter()
    iterations = spec.search.num_episodes * spec.search.iterations_per_episode

    def searched(row: dict[str, Any]) -> None:
        done = (row["episode"] - 1) * spec.search.iterations_per_episode + row["iteration"]
        report(f"search: episode {row['episode']}", 0.2 + 0.2 * min(done / iterations, 1.0))

    search_config = dataclasses.replace(
        spec.search, budgets=search_budgets(spec, split.num_users + split.num_items)
    )
    outcome = run_search(
        search_config,
        inputs,
        evaluator,
        hooks=hooks,
        on_iteration=searched,
        checkpoint_dir=search_dir / "checkpoint",
        trace_path=search_dir / "trace.jsonl",
        progress=progress,
    )
    timings["search"] = round(time.perf_counter() - stage_started, 2)
    outcome.pool.save(pool_dir)
    write_json(search_dir / "done.json", {"timings": dict(timings)})
    return outcome.pool, evaluator


def _prepared_evaluator(
    evaluator_factory: EvaluatorFactory, spec: PipelineSpec, split: DatasetSplit, out: Path
) -> QualityEvaluator:
    """The run's evaluator, prepared (its supernet trained or loaded from ``out/supernet``); a
    training it needs keeps checkpoints in the run's checkpoint folder, so that an interrupted
    preparation resumes where it stopped."""
    evaluator = evaluator_factory(spec, split, out / "supernet")
    with training_checkpoints(checkpoint_folder(out)):
        evaluator.prepare()
    return evaluator


def _budget_candidates(
    spec: PipelineSpec,
    split: DatasetSplit,
    out: Path,
    pool: AssignmentPool,
    evaluator: QualityEvaluator | None,
    budget: Budget,
    pending: bool,
    timings: dict[str, float],
    evaluator_factory: EvaluatorFactory,
) -> tuple[list[Candidate], QualityEvaluator | None]:
    """One budget's candidates to retrain: the pool's (share-fitted with ``spec.share_grid``),
    the best ``spec.retrain_top``, plus the equal candidate if asked; for a byte budget, the
    planner's (:func:`~ciess_core.search.planner.plan_candidates`). ``split``: the fits' view
    (:func:`selection_views`); ``evaluator`` must score on it.

    Returns the evaluator too, built here when a fit needs it and no earlier stage built it."""
    folder = BudgetFolder.of(out, budget)
    if isinstance(budget, ByteBudget):
        if not pending:  # the retraining has finished: its candidates are on disk
            return [], evaluator
        if evaluator is None:
            evaluator = _prepared_evaluator(evaluator_factory, spec, split, out)
        stage_started = time.perf_counter()
        planned = plan_candidates(
            spec, evaluator, pool, budget, split.num_users, split.num_items, folder
        )
        timings[f"plan_{budget.label}"] = round(time.perf_counter() - stage_started, 2)
        return planned, evaluator
    candidates = pool.selection(budget)
    if not candidates:
        raise ConfigError(f"the search found no assignment for budget {budget}")
    if spec.share_grid and pending:
        if evaluator is None:  # the search was done by an earlier call
            evaluator = _prepared_evaluator(evaluator_factory, spec, split, out)
        stage_started = time.perf_counter()
        candidates = [
            fitted.sizes for fitted in fit_shares(spec, evaluator, budget, candidates, folder)
        ]
        timings[f"fit_{budget:g}"] = round(time.perf_counter() - stage_started, 2)
    listed = [Candidate(sizes) for sizes in candidates[: spec.retrain_top]]
    if spec.equal_candidate and pending:
        stage_started = time.perf_counter()
        equal = equal_split_candidate(
            spec, evaluator, split.num_users, split.num_items, budget, folder
        )
        listed.append(Candidate(equal, "equal"))
        timings[f"equal_fit_{budget:g}"] = round(time.perf_counter() - stage_started, 2)
    return listed, evaluator
