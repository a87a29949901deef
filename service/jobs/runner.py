"""What a budget job does, in the worker's job process (imports torch; never the web process).

A job is "load the base model's data → the product pipeline → export", the same pipeline and
recipe as ``ciess search`` (:mod:`ciess_core.pipeline`; the recipe file of the ``recipe_file``
setting overrides the shipped one, as ``--config`` does). Stages and their share of the progress
bar: ``loading`` (dataset, split, the base model's manifest), the pipeline's stages up to 0.9
(``search``: the CIESS pipeline, reused when a finished one of the same data, recipe and budget
exists, else started at its search with the budget-free stages of an earlier one of the same
data and recipe; ``equal``: equal sizes under the same recipe, protocol and deployment), then
``exporting`` the deployment model (trained on every interaction) as a new artifact under
``state_dir/artifacts/<version>``, checked against the model before it is renamed into place.
The worker promotes the artifact when this returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ciess_core.artifact.export import (
    ExportMetadata,
    ExportOptions,
    backbone_config_from_dict,
    export_deployed,
    export_run,
)
from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import read_manifest
from ciess_core.data import DatasetSplit, InteractionData, load_dataset, split_per_user
from ciess_core.data.registry import resolve_data_dir
from ciess_core.errors import CiessError, ConfigError, DataError
from ciess_core.executors import DEFAULT_WORKERS
from ciess_core.json_form import jsonable
from ciess_core.models import BackboneKind
from ciess_core.pipeline import DEFAULT_SPARSITY_BUDGETS, PipelineSpec, pipeline_spec
from ciess_core.run_folder import RUN_FORMAT_VERSION
from ciess_core.runs import TRAINED_ON_ALL, RunSpec, execute_and_deploy
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.files import BudgetFolder
from ciess_core.search.pipeline import run_pipeline
from ciess_core.search.shared_stages import reuse_sibling_stages, stages_identity
from ciess_core.search.teachers import keeps_phase_teachers
from ciess_core.search.turned_full import export_turnable_full
from ciess_core.sizes import SizeAssignment, SizeScheme, equal_sizes_within, highest_sparsity
from ciess_core.storage import dense_fp32_bytes
from service.jobs.fast_path import new_version
from service.jobs.store import Job, JobStore
from service.model_holder import read_pointer
from service.settings import Settings

logger = logging.getLogger(__name__)

_PIPELINE_START, _PIPELINE_END = 0.05, 0.9


@dataclass
class Reporter:
    """Writes a job's stage and progress to the store, at most every ``every`` seconds."""

    store: JobStore
    job_id: int
    every: float = 0.5
    _last: float = 0.0
    _stage: str = ""
    _pipeline_progress: float = 0.0

    def __call__(self, stage: str, progress: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.store.report(self.job_id, stage, progress)

    def pipeline_stage(self, stage: str, fraction: float) -> None:
        """The pipeline's progress (``run_pipeline``'s ``on_stage``: a stage's name and the
        pipeline's fraction done in [0, 1]), mapped into the job's share of the bar.

        Written at once when the stage changes; within a stage (the pipeline may report every
        search iteration, every training epoch) at most every ``every`` seconds. Never moves
        the bar backwards (a resumed pipeline may report a stage it had passed)."""
        fraction = min(max(fraction, 0.0), 1.0)
        progress = _PIPELINE_START + (_PIPELINE_END - _PIPELINE_START) * fraction
        self._pipeline_progress = max(self._pipeline_progress, progress)
        changed = stage != self._stage
        self._stage = stage
        self(stage, self._pipeline_progress, force=changed)


def _dataset_name(manifest: Manifest) -> str:
    name = str(manifest.dataset.get("name") or "")
    if not name:
        raise ConfigError("the served artifact records no dataset, so a job cannot retrain it")
    return name


def _load_data(settings: Settings, manifest: Manifest) -> InteractionData:
    name = _dataset_name(manifest)
    data = load_dataset(name, resolve_data_dir(settings.data_dir))
    recorded = str(manifest.dataset.get("fingerprint") or "")
    if recorded and data.fingerprint() != recorded:
        raise DataError(
            f"dataset {name!r} has fingerprint {data.fingerprint()[:16]}…, the served model was "
            f"trained on {recorded[:16]}…: a job must retrain on the served model's data"
        )
    if (data.num_users, data.num_items) != (manifest.num_users, manifest.num_items):
        raise DataError(
            f"dataset {name!r} has {data.num_users} users and {data.num_items} items, the served "
            f"model {manifest.num_users} and {manifest.num_items}"
        )
    return data


def _pipeline_folder(settings: Settings, spec: PipelineSpec, fingerprint: str) -> Path:
    """The folder of the pipeline for ``spec`` on the data of ``fingerprint`` and this run
    format: a finished one is reused, an interrupted one resumed."""
    described = {"fingerprint": fingerprint, "spec": jsonable(spec), "format": RUN_FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return settings.state_dir / "searches" / key


def job_executor() -> tuple[str, int]:
    """Where a search job's pipeline runs its units, and how many at a time: as Ray tasks on the
    cluster of the ``RAY_ADDRESS`` environment variable (Ray's own) when it is set, two at a
    time as ``ciess search`` runs them, else one after another in the job's process (beside the
    API). The job's process is the Ray driver: when the worker stops it (a cancellation), Ray
    ends the tasks it owns; a task whose Ray worker dies is not retried, so the job fails with
    Ray's reason and the served model stays."""
    if os.environ.get("RAY_ADDRESS"):
        return "ray", DEFAULT_WORKERS
    return "local", 1


def _search_job(
    settings: Settings,
    spec: PipelineSpec,
    split: DatasetSplit,
    fingerprint: str,
    split_seed: int,
    out: Path,
    report: Reporter,
) -> Path:
    """The product pipeline at one budget (its byte budget when it has one, else its sparsity),
    its deployment model exported to ``out`` in the value type it was selected in; returns the
    pipeline's folder."""
    directory = _pipeline_folder(settings, spec, fingerprint)
    (budget,) = [ByteBudget(ratio) for ratio in spec.byte_ratios] or spec.search.budgets
    run_dir = BudgetFolder.of(directory, budget).run
    if (directory / "summary.json").is_file() and run_dir.is_dir():
        logger.info("job reuses the finished pipeline %s", directory)
    else:
        # the full model, teachers and supernet of an earlier job of the same data and recipe
        reuse_sibling_stages(directory, stages_identity(jsonable(spec), fingerprint))
        executor, workers = job_executor()
        run_pipeline(
            spec,
            split,
            directory,
            progress=False,
            dataset_fingerprint=fingerprint,
            on_stage=report.pipeline_stage,
            executor=executor,
            workers=workers,
        )
    report("exporting", _PIPELINE_END, force=True)
    export_run(
        run_dir,
        out,
        resolve_data_dir(settings.data_dir),
        ExportOptions(verify_users=64, threads=1),
    )
    return directory


def _keep_full(
    settings: Settings,
    spec: PipelineSpec,
    split: DatasetSplit,
    directory: Path,
    fingerprint: str,
    split_seed: int,
) -> None:
    """Keep the full model of the pipeline in ``directory`` as the artifact
    ``artifacts_dir/full-<key>`` (the key: what its budget-free stages depend on, so one per
    data and recipe), with its turned cuts measured on validation
    (:func:`~ciess_core.search.turned_full.export_turnable_full`): a later byte budget that no
    kept model meets by its stored type is then met at once by turning and cutting it. An
    artifact of the same key is kept as it is. A failure here is logged, not the job's: its
    model is exported already."""
    identity = stages_identity(jsonable(spec), fingerprint)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    out = settings.artifacts_dir / f"full-{key}"
    if out.is_dir():
        return
    options = ExportOptions(verify_users=64, threads=1)
    try:
        export_turnable_full(spec, split, directory, out, fingerprint, split_seed, options)
    except CiessError as error:
        logger.warning("the full model is not kept for turned budget changes: %s", error)
        return
    except Exception:  # a bug here must not fail a job whose model is exported already
        logger.exception("the full model is not kept for turned budget changes")
        return
    logger.info("kept the full model of %s as %s", directory, out)


def _equal_job(
    spec: PipelineSpec,
    split: DatasetSplit,
    fingerprint: str,
    split_seed: int,
    sizes: SizeAssignment,
    out: Path,
    report: Reporter,
    job_id: int,
) -> None:
    """Equal sizes under the pipeline's recipe and protocol (no search, no distillation): the
    protocol's numbers, then the deployment model on every interaction, exported to ``out``."""
    run_spec = RunSpec(
        dataset=spec.dataset,
        backbone=spec.backbone,
        training=spec.training,
        size_scheme=SizeScheme.EQUAL,
        target_sparsity=spec.search.budgets[0],
        protocol=spec.protocol,
        split_seed=split_seed,
    )
    report("training", _PIPELINE_START, force=True)
    model, outcome, _ = execute_and_deploy(run_spec, split, sizes, progress=False)
    report("exporting", _PIPELINE_END, force=True)
    metadata = ExportMetadata(
        dataset=spec.dataset,
        dataset_fingerprint=fingerprint,
        split_seed=split_seed,
        target_sparsity=run_spec.target_sparsity,
        size_scheme="equal",
        metrics={
            "protocol": spec.protocol.value,
            "valid": outcome.valid_metrics,
            "test": outcome.test_metrics,
        },
        source=f"job {job_id}",
        trained_on=TRAINED_ON_ALL,
    )
    export_deployed(model, split, out, metadata, ExportOptions(verify_users=64, threads=1))


def _job_spec(settings: Settings, manifest: Manifest, targets: tuple[float, ...]) -> PipelineSpec:
    """The pipeline for the base model's architecture (d_max, layers), trained by the recipe
    (the shipped one, then the ``recipe_file`` setting's), its search steered to ``targets``."""
    spec = pipeline_spec(
        _dataset_name(manifest), manifest.backbone, targets, config_file=settings.recipe_file
    )
    base = backbone_config_from_dict(manifest.backbone_config)
    return dataclasses.replace(
        spec,
        backbone=dataclasses.replace(base, weight_decay=spec.backbone.weight_decay),
        search=dataclasses.replace(spec.search, max_size=base.max_size),
    )


def _byte_job_steering(max_size: int, target: float) -> tuple[float, ...]:
    """The sparsities a byte budget job's search is steered to: those ``ciess search`` steers
    it to with byte budgets (the measured configuration), where a table of ``max_size`` columns
    holds them (every entity keeps a column), else the job's own ``target``."""
    held = tuple(c for c in DEFAULT_SPARSITY_BUDGETS if c <= highest_sparsity(max_size))
    return held or (target,)


def _byte_budget_spec(spec: PipelineSpec, split: DatasetSplit, max_bytes: int) -> PipelineSpec:
    """``spec`` serving the byte budget ``max_bytes`` (at most the dense float32 tables')."""
    rows, width, tables = (
        split.num_users + split.num_items,
        spec.search.max_size,
        spec.backbone_tables,
    )
    budget = min(max_bytes, dense_fp32_bytes(rows, width, tables))
    ratio = ByteBudget.of_bytes(budget, rows, width, tables).ratio
    return dataclasses.replace(spec, byte_ratios=(ratio,))


def run_budget_job(settings: Settings, store: JobStore, job: Job) -> Path:
    """Run one budget job to its exported artifact; returns the artifact directory.

    ``job.params``: ``target_sparsity`` and ``max_parameters`` (resolved by the API), ``method``
    ("search": the product pipeline, or "equal"), optionally ``requested`` (the admin's own
    words: with ``max_bytes``, a search job serves that byte budget through the byte planner)
    and ``base_artifact`` (the model whose data and backbone to reuse; default: the one served
    now).
    """
    report = Reporter(store, job.id)
    report("loading", 0.0, force=True)
    params = job.params
    base = params.get("base_artifact") or read_pointer(settings)
    if base is None:
        raise ConfigError("no served model to take the dataset and backbone from")
    manifest = read_manifest(Path(base))
    data = _load_data(settings, manifest)
    split_seed = int(manifest.dataset.get("split_seed") or 42)
    split = split_per_user(data, seed=split_seed)
    target = float(params["target_sparsity"])
    method = str(params.get("method") or settings.job_method)
    max_bytes = (params.get("requested") or {}).get("max_bytes") if method == "search" else None
    steering = (target,) if max_bytes is None else _byte_job_steering(manifest.max_size, target)
    spec = _job_spec(settings, manifest, steering)
    version = new_version(job.id)
    out = settings.artifacts_dir / version
    pipeline = None
    if method == "search":
        if max_bytes is not None:  # the byte planner chooses the value type and sizes
            spec = _byte_budget_spec(spec, split, int(max_bytes))
        pipeline = _search_job(settings, spec, split, data.fingerprint(), split_seed, out, report)
    elif method == "equal":
        num_entities = split.num_users + split.num_items
        max_parameters = int(params.get("max_parameters") or 0) // len(manifest.tables)
        per_table = max_parameters or int((1.0 - target) * num_entities * spec.backbone.max_size)
        shape = (split.num_users, split.num_items, spec.backbone.max_size)
        sizes = equal_sizes_within(*shape, per_table)
        achieved = sizes.sparsity
        if achieved < target - 1e-9:
            raise ConfigError(f"sizes of sparsity {achieved:.6f} miss the budget {target:.6f}")
        _equal_job(spec, split, data.fingerprint(), split_seed, sizes, out, report, job.id)
    else:
        raise ConfigError(f"unknown sizing method {method!r}; use 'search' or 'equal'")
    store.set_artifact(job.id, out, version)  # known from here on: a stopped job removes it
    logger.info("job %d exported %s", job.id, out)
    lightgcn = spec.backbone.kind is BackboneKind.LIGHTGCN
    if pipeline is not None and lightgcn and keeps_phase_teachers(spec):
        report("keeping the full model", 0.95, force=True)
        _keep_full(settings, spec, split, pipeline, data.fingerprint(), split_seed)
    report("exported", 1.0, force=True)
    return out
