"""Admin: new budgets (as jobs), what budgets get at once, the job list, job status, cancellation
and model reload.

Every endpoint needs ``Authorization: Bearer <admin token>``: 401 without it, 403 when wrong.

The budget asked last wins: it cancels the jobs of earlier budgets. A budget is idempotent: the
same budget and method as a queued or running job answers that job (200, ``existing``), the
budget the served model was made for answers that nothing changes (200, no job), and a new job
waits in a queue of at most ``max_queued_jobs`` (429 beyond, and nothing queued).
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import Annotated, Any

from fastapi import Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from ciess_core.artifact.rewrites import SELECTION_METRIC
from service.deps import HolderDep, MetricsDep, ModelDep, SettingsDep, StoreDep, admin_router
from service.errors import NotReadyError, error_responses
from service.jobs.budget import Budget, resolve_budget, served_budget, sizing_method
from service.jobs.fast_path import FAST_PATH_JOBS, fast_path_options, plan_fast_path
from service.jobs.store import Job, JobDraft, JobState, JobStore
from service.model_holder import ServedModel, all_processes_within, request_reload
from service.schemas import (
    BudgetJob,
    BudgetOption,
    BudgetOptions,
    BudgetRequest,
    BudgetUnchanged,
    JobList,
    JobView,
    ReloadResponse,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

router = admin_router()

BUDGET_JOB = "budget"
# The jobs a budget request queues: a newer request supersedes them.
BUDGET_REQUEST_JOBS = (BUDGET_JOB, *FAST_PATH_JOBS)
# A full queue frees up as jobs start; a budget job takes minutes.
QUEUE_FULL_RETRY_AFTER_SECONDS = 60
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


def _served_already(model: ServedModel, budget: Budget, method: str | None) -> bool:
    """Whether the served model was made for ``budget`` (and sized by ``method``, if given):
    its parameters, and for a byte budget its stored bytes within it as well."""
    manifest = model.scorer.manifest
    if served_budget(manifest).max_parameters != budget.max_parameters:
        return False
    if manifest.memory.stored > budget.requested.get("max_bytes", math.inf):
        return False
    return method is None or sizing_method(manifest) == method


_BUDGET_RESPONSES = {
    status.HTTP_200_OK: {
        "description": "nothing new to do: an identical budget's queued or running job "
        "(``existing`` true, ``Location`` set), or, without ``id``, the served model's own "
        "budget (no job)",
        "model": BudgetJob | BudgetUnchanged,
        "content": {"application/json": {"examples": {
            "unchanged": {"value": {
                "message": "the served model 20250101T120000Z-job3 was made for this budget; "
                "no job queued", "model_version": "20250101T120000Z-job3",
                "target_sparsity": 0.9, "max_parameters": 3_200_000}},
        }}},
    },
    status.HTTP_202_ACCEPTED: {
        "description": "a new job, queued (poll ``Location``)",
        "model": BudgetJob,
    },
    **error_responses(
        (400, 413, 422, 429, 503),
        {
            422: "a budget that cannot be met, with the reason; none or several of the three "
            "forms; a value out of range (NaN and infinities included)",
            503: "no model loaded yet (a budget is relative to the served model)",
        },
    ),
}  # fmt: skip


@router.post(
    "/budget",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=None,  # by status, below
    summary="Set a new memory budget: queues a re-search job",
    responses=_BUDGET_RESPONSES,  # type: ignore[arg-type]
)
def set_budget(
    body: BudgetRequest, model: ModelDep, store: StoreDep, settings: SettingsDep, response: Response
) -> BudgetJob | BudgetUnchanged:
    """The budget is converted to a target sparsity for the served model (its entity counts,
    d_max and tables); the job retrains and exports a model within it, which then replaces the
    served one. Poll ``Location`` for progress.

    The budget asked last wins: a new budget cancels the queued and running jobs of earlier
    ones (``superseded``), and so does asking for the budget the served model was made for,
    which answers 200 without a job (``method`` then counts only when given). Asking again is
    safe: the same budget and method as a queued or running job answers that job (200,
    ``existing``: true). A budget whose jobs would take the queue past ``max_queued_jobs``
    answers 429 and queues nothing."""
    manifest = model.scorer.manifest
    method = body.method or settings.job_method
    planned_bytes = body.max_bytes if method == "search" else None  # the byte planner's job
    budget = resolve_budget(
        manifest,
        body.target_sparsity,
        body.max_parameters,
        body.max_bytes,
        any_value_type=planned_bytes is not None,
    )
    # The planner plans by the bytes: two byte budgets are one job only at the same bytes.
    same_budget = str(budget.max_parameters) if planned_bytes is None else f"bytes-{planned_bytes}"
    params = {
        "target_sparsity": budget.target_sparsity,
        "max_parameters": budget.max_parameters,
        "requested": budget.requested,
        "method": method,
        "base_artifact": str(model.directory),
        "base_version": model.version,
    }
    fast = None
    served = _served_already(model, budget, body.method)
    if planned_bytes is not None and not served:
        fast = _fast_path_draft(model, store, settings, planned_bytes)
    requested = store.request(
        JobDraft(BUDGET_JOB, partial(_replacing, params), f"{same_budget}:{method}"),
        fast=fast,
        supersedes=BUDGET_REQUEST_JOBS,
        max_queued=settings.max_queued_jobs,
        retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS,
        queue=not served,
    )
    if requested.superseded:
        logger.info("budget %s supersedes jobs %s", budget.requested, list(requested.superseded))
    job = requested.job
    if job is None:
        response.status_code = status.HTTP_200_OK
        return BudgetUnchanged(
            message=f"the served model {model.version} was made for this budget; no job queued",
            model_version=model.version,
            target_sparsity=budget.target_sparsity,
            max_parameters=budget.max_parameters,
            superseded=list(requested.superseded),
        )
    fast_job = requested.fast
    if requested.existing:
        response.status_code = status.HTTP_200_OK
        logger.info("budget %s: job %d has it already", budget.requested, job.id)
        fast_job = _fast_path_of(store, job)
    else:
        if fast_job is not None:
            logger.info("job %d queued: %s", fast_job.id, _fast_path_summary(fast_job))
        logger.info("job %d queued: budget %s (sparsity %.4f)", job.id, budget.requested,
                    budget.target_sparsity)  # fmt: skip
    response.headers["Location"] = f"/v1/admin/jobs/{job.id}"
    return BudgetJob(
        **job_view(job).model_dump(),
        existing=requested.existing,
        fast_path=None if fast_job is None else job_view(fast_job),
        superseded=list(requested.superseded),
    )


def _replacing(params: dict[str, Any], fast: Job | None) -> dict[str, Any]:
    """A budget job's parameters: with a fast path, the job it replaces only by validating
    better (``replace_if_better``)."""
    if fast is None:
        return params
    return {
        **params,
        "replace_if_better": {
            "job_id": fast.id,
            "metric": fast.params["metric"],
            "valid": fast.params["valid"],
        },
    }


def _fast_path_of(store: JobStore, job: Job) -> Job | None:
    """The fast path queued with budget job ``job`` (its ``replace_if_better``), if any."""
    fast = job.params.get("replace_if_better")
    return None if not fast else store.get(int(fast["job_id"]))


def _fast_path_draft(
    model: ServedModel, store: JobStore, settings: Settings, max_bytes: int
) -> JobDraft | None:
    """The fast path of a byte budget (:mod:`service.jobs.fast_path`) when a kept model meets it
    stored in another type, or turned and cut; None when none does."""
    plan = plan_fast_path(settings, store, model.scorer.manifest, max_bytes)
    if plan is None:
        return None
    return JobDraft(
        plan.kind,
        {**plan.params(), "max_bytes": max_bytes, "base_version": model.version},
        key=f"{plan.source_version}:{plan.value_type}:{plan.width}:{max_bytes}",
    )


def _fast_path_summary(fast: Job) -> str:
    params = fast.params
    width = params.get("width")
    return (
        f"{params['source_version']}{'' if width is None else f' turned, cut to {width},'} "
        f"stored as {params['value_type']} ({params['bytes']} bytes) meets "
        f"{params['max_bytes']} bytes at once"
    )


@router.get(
    "/budget/options",
    response_model=BudgetOptions,
    summary="What byte budgets get within seconds, and how each validates",
    responses=error_responses((503,), {503: "no model loaded yet"}),
)
def budget_options(model: ModelDep, store: StoreDep, settings: SettingsDep) -> BudgetOptions:
    """The models that the kept artifacts of the served model's data and backbone give without
    training (stored in fewer bits; a kept full LightGCN also turned and cut), as their runs
    validated them: at each size, the best. Empty when no kept artifact recorded any."""
    manifest = model.scorer.manifest
    dense = manifest.memory.dense
    return BudgetOptions(
        model_version=model.version,
        dense_fp32_bytes=dense,
        metric=SELECTION_METRIC,
        options=[
            BudgetOption(
                bytes=plan.bytes,
                byte_ratio=plan.bytes / dense,
                value_type=plan.value_type,
                width=plan.width,
                kind=plan.kind,
                source_version=plan.source_version,
                valid=plan.valid,
            )
            for plan in fast_path_options(settings, store, manifest)
        ],
    )


@router.get(
    "/jobs", response_model=JobList, summary="Jobs, newest first", responses=error_responses((422,))
)
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
    responses=error_responses((404, 422), {404: "no such job"}),
)
def get_job(job_id: JobId, store: StoreDep) -> JobView:
    return job_view(store.get(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel a job (a running one stops within a poll interval)",
    responses=error_responses((404, 409, 413, 422), {404: "no such job", 409: "already finished"}),
)
def cancel_job(job_id: JobId, store: StoreDep) -> JobView:
    return job_view(store.cancel(job_id))


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Reload the current artifact (current.json, else the configured artifact), in every "
    "process",
    responses=error_responses(
        (413, 503), {503: "the artifact could not be loaded; the old one serves"}
    ),
)
async def reload_model(
    request: Request, holder: HolderDep, settings: SettingsDep, metrics: MetricsDep
) -> ReloadResponse:
    """This process reloads now; the others (``ciess serve --workers N``) at their next check of
    the state folder (a reload generation they all watch, beside ``current.json``): within
    ``all_processes_within_seconds`` of the answer."""
    started = time.perf_counter()
    swapped = await run_in_threadpool(holder.refresh, settings, True)
    load_seconds = time.perf_counter() - started
    if swapped:
        metrics.swaps.inc()
    # This process is done: its own watcher must not reload again for this generation.
    request.app.state.reload_generation = await run_in_threadpool(request_reload, settings)
    current = holder.current
    if current is None:
        raise NotReadyError("no artifact is configured: set CIESS_ARTIFACT_DIR")
    return ReloadResponse(
        model_version=current.version,
        swapped=swapped,
        load_seconds=round(load_seconds, 3),
        all_processes_within_seconds=all_processes_within(settings, load_seconds),
    )
