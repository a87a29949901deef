"""Request and response bodies (kept flat: they are built on every top-k request)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000
# Hard ceilings, checked by the schema before any id is validated; the settings max_batch_users
# and max_id_length (service.settings) set the limits in force, at most these.
MAX_BATCH_USERS = 10_000
MAX_ID_LENGTH = 1024
MAX_FILTER_ITEMS = 100_000
# SQLite's (and JSON-safe) integer range: a larger budget number is a 422, not an overflow later.
MAX_BUDGET_NUMBER = 2**63 - 1

ExternalId = Annotated[str, Field(max_length=MAX_ID_LENGTH)]


class ScoredItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float


class Recommendation(BaseModel):
    user_id: str = Field(description="external user id")
    items: list[ScoredItem] = Field(description="best first; shorter than k if fewer remain")


class RecommendationResponse(Recommendation):
    model_version: str = Field(description="the artifact that answered")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "items": [{"item_id": "i7", "score": 3.21}, {"item_id": "i3", "score": 2.9}],
                    "model_version": "20250101T120000Z-job3",
                }
            ]
        }
    )


class BatchRequest(BaseModel):
    user_ids: list[ExternalId] = Field(
        min_length=1,
        max_length=MAX_BATCH_USERS,
        description="external user ids: at most the max_batch_users setting (1,000 by "
        "default), each at most max_id_length characters (256 by default)",
    )
    k: int = Field(default=20, ge=1, le=MAX_K)
    exclude_seen: bool = True
    item_ids: list[ExternalId] | None = Field(
        default=None,
        max_length=MAX_FILTER_ITEMS,
        description="rank only these items (external ids); all items when absent",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_ids": ["u1", "u2"], "k": 10}]},
    )


class BatchResponse(BaseModel):
    results: list[Recommendation]
    model_version: str


class ModelBytes(BaseModel):
    embedding_values: int = Field(description="stored ragged values")
    offsets_and_sizes: int
    dense_equivalent: int = Field(description="the same tables dense at d_max in float32")
    files_on_disk: int
    resident: int = Field(description="what the scorer keeps in memory after loading")


class ModelInfo(BaseModel):
    version: str
    backbone: str
    max_size: int = Field(description="d_max")
    target_sparsity: float | None = Field(description="the budget asked")
    sparsity: float = Field(description="the sparsity achieved")
    num_users: int
    num_items: int
    value_dtype: str
    bytes: ModelBytes
    metrics: dict[str, Any]
    dataset: dict[str, Any]
    created_at: str
    loaded_at: float = Field(description="UNIX time this process loaded it")

    model_config = ConfigDict(protected_namespaces=())


class BudgetRequest(BaseModel):
    """A memory budget for the served model: exactly one of ``target_sparsity``,
    ``max_parameters`` or ``max_bytes`` (the others absent or null; none or several is a 422).
    Every user and item keeps at least one dimension, which bounds each form (422 beyond)."""

    target_sparsity: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="fraction of the dense tables pruned; one of the three forms",
    )
    max_parameters: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BUDGET_NUMBER,
        description="stored embedding values, all tables together; one of the three forms",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BUDGET_NUMBER,
        description="bytes of the stored tables with their offsets and sizes; one of the "
        "three forms",
    )
    method: Literal["equal", "search"] | None = Field(
        default=None,
        description="sizes by ES ('equal') or the CIESS search ('search'); default: the "
        "service's job_method setting",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"target_sparsity": 0.9},
                {"max_bytes": 50_000_000, "method": "search"},
                {"max_parameters": 1_000_000},
            ]
        },
    )


class JobView(BaseModel):
    id: int
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str
    progress: float = Field(ge=0.0, le=1.0)
    message: str
    params: dict[str, Any]
    artifact_version: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None


class BudgetJob(JobView):
    existing: bool = Field(
        description="true: the queued or running job of an identical budget (same budget, "
        "method and base model), answered with 200 instead of a new job (202)"
    )


class BudgetUnchanged(BaseModel):
    """The answer to a budget the served model already meets: no job (200)."""

    message: str
    model_version: str = Field(description="the served model, which keeps serving")
    target_sparsity: float = Field(description="the budget, as resolved for the served model")
    max_parameters: int

    model_config = ConfigDict(protected_namespaces=())


class ErrorMessage(BaseModel):
    """The body of every error but the request-validation 422 (which lists its errors)."""

    detail: str


class ValidationIssue(BaseModel):
    """One reason a request failed validation (FastAPI's shape, bounded: service.errors)."""

    type: str
    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the field")
    msg: str
    input: Any = Field(
        default=None,
        description="the value refused: at most 64 characters of it, a summary of a list or an "
        "object, 'NaN' or 'Infinity' for a non-finite number",
    )
    ctx: dict[str, Any] | None = None


class ValidationErrors(BaseModel):
    """A request that failed validation (422): its first ten issues, then a count of the rest."""

    detail: list[ValidationIssue]


class JobList(BaseModel):
    jobs: list[JobView]


class ReloadResponse(BaseModel):
    model_version: str
    swapped: bool
