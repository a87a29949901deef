"""What a budget job does, in the worker's job process (imports torch; never the web process).

Stages and their share of the progress bar: ``loading`` (dataset, split, the base model's
manifest), ``sizing`` (ES sizes, or the CIESS pipeline: reused when a finished search of the same
data, backbone and settings already covers the budget), ``training`` (select the number of batches
on validation, then train on train ∪ validation and test once: the clean protocol) and
``exporting`` (a new artifact under ``state_dir/artifacts/<version>``, checked against the model
before it is renamed into place). The worker promotes the artifact when this returns. With the
``job_distill`` setting, the training stage distils from a full-size model (the search's own, or
one trained for the job on the search split, with early stopping on validation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ciess_core.artifact.export import (
    ExportMetadata,
    ExportOptions,
    backbone_config_from_dict,
    export_model,
)
from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import read_manifest
from ciess_core.data import DatasetSplit, InteractionData, Phase, load_dataset, split_per_user
from ciess_core.data.registry import resolve_data_dir
from ciess_core.errors import ConfigError, DataError
from ciess_core.models import Backbone, BackboneConfig, build_backbone
from ciess_core.sizes import sparsity
from ciess_core.training import TrainConfig, evaluate_model, train_bpr
from ciess_core.training.distillation import DistillationConfig, Distiller
from service.jobs.store import Job, JobStore
from service.model_holder import read_pointer
from service.settings import Settings

logger = logging.getLogger(__name__)

# Progress bar shares: loading 0..0.05, sizing ..0.35 (search) or ..0.06 (ES), training ..0.9.
_SIZING_END = {"equal": 0.06, "search": 0.35}
_TRAINING_END = 0.9


@dataclass
class Reporter:
    """Writes a job's stage and progress to the store, at most every ``every`` seconds."""

    store: JobStore
    job_id: int
    every: float = 0.5
    _last: float = 0.0

    def __call__(self, stage: str, progress: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.store.report(self.job_id, stage, progress)


def new_version(job_id: int) -> str:
    """A sortable, unique artifact name: UTC time and the job id."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-job{job_id}"


def _load_data(settings: Settings, manifest: Manifest) -> InteractionData:
    name = settings.dataset or str(manifest.dataset.get("name") or "")
    if not name:
        raise ConfigError(
            "the served artifact records no dataset; set CIESS_DATASET to the one jobs retrain on"
        )
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


def equal_sizes_within(num_entities: int, max_size: int, max_parameters: int) -> np.ndarray:
    """ES sizes that never exceed the budget: floor(budget / entities), clipped to [1, d_max]."""
    size = min(max_size, max(1, max_parameters // num_entities))
    return np.full(num_entities, size, dtype=np.int64)


def _training(settings: Settings, seed: int) -> TrainConfig:
    return TrainConfig(
        batch_size=settings.job_batch_size,
        max_batches=settings.job_max_batches,
        eval_every=settings.job_eval_every,
        seed=seed,
    )


def _search_sizes(
    settings: Settings,
    split: DatasetSplit,
    dataset: str,
    fingerprint: str,
    backbone: BackboneConfig,
    target: float,
    report: Reporter,
) -> tuple[np.ndarray, Path, str]:
    """The CIESS pipeline's sizes for ``target``, its folder and the kind of sizes it kept
    ("ciess", or "equal" when its equal candidate retrained better), reusing a finished search
    that covers it."""
    from ciess_core.search.config import SearchConfig
    from ciess_core.search.fit import DEFAULT_SHARE_GRID, DEFAULT_SPREAD_GRID
    from ciess_core.search.pipeline import PipelineSpec, run_pipeline

    described = {
        "fingerprint": fingerprint,
        "backbone": json.loads(json.dumps(dataclasses.asdict(backbone), default=str)),
        "episodes": settings.search_episodes,
        "iterations": settings.search_iterations,
        "supernet_batches": settings.search_supernet_batches,
        "max_batches": settings.job_max_batches,
        "budget": f"{target:.6g}",
    }
    if settings.search_fit_shares:  # only when on, so that earlier searches keep their keys
        described["fit_shares"] = True
    if settings.search_equal_candidate:
        described["equal_candidate"] = True
    if settings.search_fit_shares and settings.search_even_tolerance:
        described["even_tolerance"] = settings.search_even_tolerance
    if settings.search_fit_shares and settings.search_fit_spread:
        described["fit_spread"] = True
    if settings.search_fit_shares and settings.search_selection_share:
        described["selection_share"] = settings.search_selection_share
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    directory = settings.state_dir / "searches" / key
    sizes_path = directory / f"budget-{target:g}" / "sizes.npy"
    if (directory / "summary.json").is_file() and sizes_path.is_file():
        logger.info("job reuses the finished search %s for budget %g", directory, target)
        report("sizing: reusing a finished search", _SIZING_END["search"], force=True)
        return _kept_sizes(directory, target)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "job-spec.json").write_text(json.dumps(described, indent=1) + "\n")
    spec = PipelineSpec(
        dataset=dataset,
        backbone=backbone,
        training=_training(settings, seed=42),
        search=SearchConfig(
            num_episodes=settings.search_episodes,
            iterations_per_episode=settings.search_iterations,
            max_size=backbone.max_size,
            budgets=(target,),
            pool_size=1,
        ),
        supernet_batches=settings.search_supernet_batches,
        retrain_top=1,
        share_grid=DEFAULT_SHARE_GRID if settings.search_fit_shares else (),
        equal_candidate=settings.search_equal_candidate,
        even_tolerance=settings.search_even_tolerance if settings.search_fit_shares else 0.0,
        spread_grid=(
            DEFAULT_SPREAD_GRID if settings.search_fit_shares and settings.search_fit_spread else ()
        ),
        selection_share=settings.search_selection_share if settings.search_fit_shares else 0.0,
    )
    report("sizing: CIESS search", 0.06, force=True)
    run_pipeline(spec, split, directory, progress=False)
    return _kept_sizes(directory, target)


def _kept_sizes(directory: Path, target: float) -> tuple[np.ndarray, Path, str]:
    budget_dir = directory / f"budget-{target:g}"
    result = json.loads((budget_dir / "result.json").read_text())
    kind = "equal" if result.get("chosen_kind") == "equal" else "ciess"
    return np.asarray(np.load(budget_dir / "sizes.npy"), dtype=np.int64), directory, kind


def _teacher(
    backbone: BackboneConfig,
    split: DatasetSplit,
    config: TrainConfig,
    search_dir: Path | None,
    report: Reporter,
    progress: float,
) -> Backbone:
    """The full-size model a job distils from: the search's (``full/model.pt``) when there is
    one, else one trained now on the search split, early-stopped on validation."""
    search_train, valid = split.phase(Phase.SEARCH)
    model = build_backbone(backbone, search_train, torch.Generator().manual_seed(config.seed))
    kept = None if search_dir is None else search_dir / "full" / "model.pt"
    if kept is not None and kept.is_file():
        model.load_state_dict(torch.load(kept))
        return model
    report("training: full-size teacher", progress, force=True)
    train_bpr(model, search_train, config, held_out=valid, progress=False)
    return model


def _train(
    backbone: BackboneConfig,
    split: DatasetSplit,
    sizes: np.ndarray,
    config: TrainConfig,
    report: Reporter,
    start: float,
    teacher: Backbone | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The clean protocol: pick the batch count on validation, retrain on train ∪ valid, test.

    With ``teacher``, both trainings distil from it (the default :class:`DistillationConfig`).
    """

    def distiller(train: Any) -> Distiller | None:
        if teacher is None:
            return None
        return Distiller(teacher, train, DistillationConfig(), config.eval_users_per_chunk)

    span = _TRAINING_END - start
    selecting = config.eval_every > 0
    valid_metrics: dict[str, float] = {}
    batches = config.max_batches
    if selecting:
        search_train, valid = split.phase(Phase.SEARCH)
        model = _fresh(backbone, search_train, sizes, config.seed)

        def selection_progress(batch: int) -> None:
            report("training: selecting on validation", start + span / 2 * batch / batches)

        selection = train_bpr(
            model,
            search_train,
            config,
            held_out=valid,
            progress=False,
            before_batch=selection_progress,
            distiller=distiller(search_train),
        )
        valid_metrics = selection.best_metrics
        batches = max(selection.best_batch, 1)
        start, span = start + span / 2, span / 2
    final_config = dataclasses.replace(config, max_batches=batches, eval_every=0)
    test_train, test = split.phase(Phase.TEST)
    model = _fresh(backbone, test_train, sizes, config.seed)

    def final_progress(batch: int) -> None:
        report("training: final model", start + span * batch / batches)

    train_bpr(
        model,
        test_train,
        final_config,
        progress=False,
        before_batch=final_progress,
        distiller=distiller(test_train),
    )
    test_metrics = evaluate_model(model, test_train, test, config.eval_users_per_chunk).mean()
    metrics: dict[str, Any] = {"protocol": "clean", "valid": valid_metrics, "test": test_metrics}
    if teacher is not None:
        metrics["distilled"] = True
    return model, metrics


def _fresh(backbone: BackboneConfig, train: Any, sizes: np.ndarray, seed: int) -> Backbone:
    model = build_backbone(backbone, train, torch.Generator().manual_seed(seed))
    model.set_embedding_sizes(torch.from_numpy(sizes))
    return model


def run_budget_job(settings: Settings, store: JobStore, job: Job) -> Path:
    """Run one budget job to its exported artifact; returns the artifact directory.

    ``job.params``: ``target_sparsity`` and ``max_parameters`` (resolved by the API), ``method``
    ("equal" or "search"), optionally ``base_artifact`` (the model whose data and backbone to
    reuse; default: the one served now).
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
    backbone = backbone_config_from_dict(manifest.backbone_config)
    target = float(params["target_sparsity"])
    num_entities = split.num_users + split.num_items
    tables = len(manifest.tables)
    max_parameters = int(params.get("max_parameters") or 0) // tables or None
    method = str(params.get("method") or settings.job_method)
    report("sizing", 0.05, force=True)
    search_dir: Path | None = None
    size_scheme = "equal"
    if method == "search":
        sizes, search_dir, size_scheme = _search_sizes(
            settings,
            split,
            str(manifest.dataset.get("name")),
            data.fingerprint(),
            backbone,
            target,
            report,
        )
    elif method == "equal":
        per_table = max_parameters or int((1.0 - target) * num_entities * backbone.max_size)
        sizes = equal_sizes_within(num_entities, backbone.max_size, per_table)
    else:
        raise ConfigError(f"unknown sizing method {method!r}; use 'equal' or 'search'")
    achieved = sparsity(sizes, backbone.max_size)
    if achieved < target - 1e-9:
        raise ConfigError(f"sizes of sparsity {achieved:.6f} miss the budget {target:.6f}")
    start = _SIZING_END.get(method, 0.06)
    report("training", start, force=True)
    config = _training(settings, 42)
    teacher = (
        _teacher(backbone, split, config, search_dir, report, start)
        if settings.job_distill
        else None
    )
    model, metrics = _train(backbone, split, sizes, config, report, start, teacher)
    report("exporting", _TRAINING_END, force=True)
    version = new_version(job.id)
    out = settings.artifacts_dir / version
    train, _ = split.phase(Phase.TEST)
    metadata = ExportMetadata(
        dataset=str(manifest.dataset.get("name") or ""),
        dataset_fingerprint=data.fingerprint(),
        split_seed=split_seed,
        target_sparsity=target,
        size_scheme=size_scheme,
        metrics=metrics,
        source=f"job {job.id}",
    )
    export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        out,
        metadata,
        ExportOptions(verify_users=64, threads=1),
    )
    store.set_artifact(job.id, out, version)
    report("exported", 1.0, force=True)
    logger.info("job %d exported %s (sparsity %.4f)", job.id, out, achieved)
    return out
