"""Admin: new budgets (as jobs), the job list, job status, cancellation and model reload.

Every endpoint needs ``Authorization: Bearer <admin token>``: 401 without it, 403 when wrong.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from service.deps import HolderDep, MetricsDep, ModelDep, SettingsDep, StoreDep, require_admin
from service.errors import NotReadyError
from service.jobs.budget import resolve_budget
from service.jobs.store import Job, JobState
from service.schemas import BudgetRequest, JobList, JobView, ReloadResponse

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"description": "no bearer token"},
        403: {"description": "wrong bearer token"},
    },
)

BUDGET_JOB = "budget"
# SQLite integers are signed 64-bit: a larger id is a 422, not an OverflowError in the store.
MAX_JOB_ID = 2**63 - 1
JobId = Annotated[int, Path(ge=1, le=MAX_JOB_ID, description="job id")]


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        kind=job.kind,
        state=job.state.value,
        stage=job.stage,
        progress=job.progress,
        message=job.message,
        params=dict(job.params),
        artifact_version=job.version,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
    )


@router.post(
    "/budget",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Set a new memory budget: queues a re-search job",
    responses={422: {"description": "a budget that cannot be met, with the reason"}},
)
def set_budget(
    body: BudgetRequest, model: ModelDep, store: StoreDep, settings: SettingsDep, response: Response
) -> JobView:
    """The budget is converted to a target sparsity for the served model (its entity counts,
    d_max and tables); the job retrains and exports a model within it, which then replaces the
    served one. Poll ``Location`` for progress."""
    budget = resolve_budget(
        model.scorer.manifest, body.target_sparsity, body.max_parameters, body.max_bytes
    )
    job = store.submit(
        BUDGET_JOB,
        {
            "target_sparsity": budget.target_sparsity,
            "max_parameters": budget.max_parameters,
            "requested": budget.requested,
            "method": body.method or settings.job_method,
            "base_artifact": str(model.directory),
            "base_version": model.version,
        },
    )
    logger.info("job %d queued: budget %s (sparsity %.4f)", job.id, budget.requested,
                budget.target_sparsity)  # fmt: skip
    response.headers["Location"] = f"/v1/admin/jobs/{job.id}"
    return job_view(job)


@router.get("/jobs", response_model=JobList, summary="Jobs, newest first")
def list_jobs(
    store: StoreDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    return JobList(jobs=[job_view(job) for job in store.list_jobs(state, limit)])


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job's state, stage and progress",
    responses={404: {"description": "no such job"}},
)
def get_job(job_id: JobId, store: StoreDep) -> JobView:
    return job_view(store.get(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel a job (a running one stops within a poll interval)",
    responses={404: {"description": "no such job"}, 409: {"description": "already finished"}},
)
def cancel_job(job_id: JobId, store: StoreDep) -> JobView:
    return job_view(store.cancel(job_id))


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Reload the current artifact (current.json, else the configured artifact)",
    responses={503: {"description": "the artifact could not be loaded; the old one serves"}},
)
async def reload_model(
    holder: HolderDep, settings: SettingsDep, metrics: MetricsDep
) -> ReloadResponse:
    swapped = await run_in_threadpool(holder.refresh, settings, True)
    if swapped:
        metrics.swaps.inc()
    current = holder.current
    if current is None:
        raise NotReadyError("no artifact is configured: set CIESS_ARTIFACT_DIR")
    return ReloadResponse(model_version=current.version, swapped=swapped)
