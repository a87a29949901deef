"""Admin: the kept model versions and rollback (promote a kept version).

A promotion validates and loads the artifact before anything changes (a broken one is a 409 and
the served model keeps serving), then points ``current.json`` at it (recorded in the promotion
history, the start-up fallbacks), serves it in this process and bumps the reload generation, so
that every process serves it within ``all_processes_within_seconds``. A budget job that is
running still promotes its own result when it finishes.

What is kept: :mod:`service.versions` (its retention rule runs after every job).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import Path, Request
from fastapi.concurrency import run_in_threadpool

from ciess_core.errors import ArtifactError
from service.deps import HolderDep, MetricsDep, SettingsDep, StoreDep, admin_router
from service.errors import ConflictError, NotFoundError, error_responses
from service.jobs.budget import served_budget
from service.jobs.store import JobStore
from service.model_holder import (
    ModelHolder,
    ServedModel,
    all_processes_within,
    load_served_model,
    read_pointer,
    request_reload,
)
from service.schemas import KeptModel, KeptModelBytes, KeptModels, PromoteResponse
from service.settings import Settings
from service.versions import KEEP_VERSIONS, KeptVersion, kept_versions, promote

logger = logging.getLogger(__name__)

router = admin_router()

# Versions are folder names: a version that is not one is a 422, never a path to look up.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
Version = Annotated[
    str,
    Path(
        pattern=VERSION_PATTERN,
        description="a kept version (GET /v1/admin/models)",
        examples=["20250101T120000Z-job3"],
    ),
]

_MODELS_EXAMPLE = {
    "served_version": "20250102T090000Z-job4",
    "keep": KEEP_VERSIONS,
    "models": [
        {
            "version": "20250102T090000Z-job4", "served": True, "current": True,
            "configured": False, "backbone": "lightgcn", "target_sparsity": 0.9,
            "sparsity": 0.9, "max_parameters": 3_200_000,
            "bytes": {"embedding_stores": 12_810_000, "files_on_disk": 14_100_000},
            "metrics": {"protocol": "clean", "test": {"recall@20": 0.071}},
            "created_at": "2025-01-02T09:00:00+00:00", "promoted_at": 1735808400.0,
            "job_id": 4, "problem": None,
        },
        {
            "version": "quickstart", "served": False, "current": False, "configured": True,
            "backbone": "lightgcn", "target_sparsity": None, "sparsity": 0.0,
            "max_parameters": 32_000_000,
            "bytes": {"embedding_stores": 128_010_000, "files_on_disk": 129_500_000},
            "metrics": {"protocol": "clean", "test": {"recall@20": 0.078}},
            "created_at": "2025-01-01T12:00:00+00:00", "promoted_at": None, "job_id": None,
            "problem": None,
        },
    ],
}  # fmt: skip

_PROMOTE_EXAMPLE = {
    "model_version": "quickstart",
    "previous_version": "20250102T090000Z-job4",
    "swapped": True,
    "all_processes_within_seconds": 1.4,
}


def kept_model(version: KeptVersion, served: str | None, current: str | None) -> KeptModel:
    manifest = version.manifest
    budget, sizes = None, None
    if manifest is not None:
        budget = served_budget(manifest).max_parameters
        sizes = KeptModelBytes(
            embedding_stores=manifest.memory.stored,
            files_on_disk=sum(entry.bytes for entry in manifest.files),
        )
    return KeptModel(
        version=version.version,
        served=version.version == served,
        current=version.version == current,
        configured=version.configured,
        backbone=manifest.backbone if manifest else None,
        target_sparsity=manifest.target_sparsity if manifest else None,
        sparsity=manifest.achieved_sparsity if manifest else None,
        max_parameters=budget,
        bytes=sizes,
        metrics=dict(manifest.metrics) if manifest else {},
        created_at=manifest.created_at if manifest else None,
        promoted_at=version.promoted_at,
        job_id=version.job_id,
        problem=version.problem,
    )


def _current_path(settings: Settings) -> str | None:
    """The artifact ``current.json`` (else the ``artifact_dir`` setting) names, resolved."""
    try:
        directory = read_pointer(settings)
    except ArtifactError:
        return None
    return None if directory is None else str(directory.resolve())


def _pointed_version(versions: list[KeptVersion], current_path: str | None) -> str | None:
    return next((v.version for v in versions if str(v.directory) == current_path), None)


def _promote_and_serve(
    holder: ModelHolder, settings: Settings, store: JobStore, model: ServedModel
) -> ServedModel | None:
    """Point ``current.json`` at ``model`` (recorded in the history), then serve it here;
    returns the model it replaced."""
    promote(settings, store, model.directory)
    return holder.serve_promoted(model)


@router.get(
    "/models",
    response_model=KeptModels,
    summary="Kept model versions, newest first, with their budget, bytes and metrics",
    responses={200: {"content": {"application/json": {"example": _MODELS_EXAMPLE}}}},
)
async def list_models(holder: HolderDep, store: StoreDep, settings: SettingsDep) -> KeptModels:
    """Every artifact the service keeps: those jobs made (``state_dir/artifacts``), the
    configured one and any promoted one; which one this process serves and which one
    ``current.json`` points at. A version whose manifest cannot be read says why in
    ``problem``."""
    versions = await run_in_threadpool(kept_versions, settings, store)
    served = holder.current.version if holder.current is not None else None
    current = await run_in_threadpool(_current_path, settings)
    pointed = _pointed_version(versions, current)
    return KeptModels(
        served_version=served,
        keep=KEEP_VERSIONS,
        models=[kept_model(version, served, pointed) for version in versions],
    )


@router.post(
    "/models/{version}/promote",
    response_model=PromoteResponse,
    summary="Serve a kept version (rollback): validated and loaded before the switch",
    responses={
        200: {"content": {"application/json": {"example": _PROMOTE_EXAMPLE}}},
        **error_responses(
            (404, 409, 413, 422),
            {
                404: "no kept version of that name",
                409: "the version's artifact does not load (damaged, or values out of "
                "bounds); the served model keeps serving",
                422: "not a version name",
            },
        ),
    },
)
async def promote_model(
    version: Version,
    request: Request,
    holder: HolderDep,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> PromoteResponse:
    """Validate and load ``version`` beside the served model, then point ``current.json`` at
    it, serve it here and tell the other processes, which serve it within
    ``all_processes_within_seconds``."""
    versions = await run_in_threadpool(kept_versions, settings, store)
    kept = next((v for v in versions if v.version == version), None)
    if kept is None:
        known = ", ".join(v.version for v in versions[:10])
        raise NotFoundError(f"no kept model version {version!r}; kept: {known or 'none'}")
    served = holder.current
    current = await run_in_threadpool(_current_path, settings)
    if served is not None and served.version == version and current == str(kept.directory):
        return PromoteResponse(
            model_version=version,
            previous_version=version,
            swapped=False,
            all_processes_within_seconds=0.0,
        )
    started = time.perf_counter()
    try:
        model = await run_in_threadpool(load_served_model, kept.directory, settings.scorer_threads)
    except (ArtifactError, OSError) as error:
        metrics.swap_failures.inc()
        raise ConflictError(
            f"model version {version} cannot be served: {error}; the served model keeps serving"
        ) from None
    load_seconds = time.perf_counter() - started
    # The pointer first: if it cannot be written nothing changes here either, and a watcher
    # that loaded the old pointer meanwhile sees the new one and drops its load.
    previous = await run_in_threadpool(_promote_and_serve, holder, settings, store, model)
    metrics.swaps.inc()
    # Every process loads the pointer again, even one that once failed this version.
    request.app.state.reload_generation = await run_in_threadpool(request_reload, settings)
    logger.info("promoted %s (was %s)", version, previous.version if previous else None)
    return PromoteResponse(
        model_version=version,
        previous_version=previous.version if previous else None,
        swapped=True,
        all_processes_within_seconds=all_processes_within(settings, load_seconds),
    )
