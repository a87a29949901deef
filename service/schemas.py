"""Request and response bodies (kept flat: they are built on every top-k request)."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_K = 1000
# Hard ceilings, checked by the schema before any id is validated; the settings max_batch_users
# and max_id_length (service.settings) set the limits in force, at most these.
MAX_BATCH_USERS = 10_000
MAX_ID_LENGTH = 1024
MAX_FILTER_ITEMS = 100_000
# Pagination: the ranking computed is top-(k + offset), at most every item of the model.
MAX_OFFSET = 10_000
# SQLite's (and JSON-safe) integer range: a larger budget number is a 422, not an overflow later.
MAX_BUDGET_NUMBER = 2**63 - 1

ExternalId = Annotated[str, Field(max_length=MAX_ID_LENGTH)]


class Fallback(str, enum.Enum):
    """What answers for a user the model does not know, when the request opts in."""

    POPULAR = "popular"  # the items with the most training interactions


class SimilarityMetric(str, enum.Enum):
    """How two item vectors compare: ``cosine`` (direction only) or ``dot`` (as the model's
    scores do, which favours items with long vectors: often the popular ones)."""

    COSINE = "cosine"
    DOT = "dot"


class ScoredItem(BaseModel):
    item_id: str = Field(description="external item id")
    score: float


class Recommendation(BaseModel):
    user_id: str = Field(description="external user id")
    items: list[ScoredItem] = Field(description="best first; shorter than k if fewer remain")
    fallback: Fallback | None = Field(
        default=None,
        description="present only for a user the model does not know, answered by the fallback "
        "the request asked for ('popular': most training interactions first, the score being "
        "that count)",
    )


class RecommendationResponse(Recommendation):
    model_version: str = Field(description="the artifact that answered")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "items": [{"item_id": "i7", "score": 3.21}, {"item_id": "i3", "score": 2.9}],
                    "model_version": "20250101T120000Z-job3",
                },
                {
                    "user_id": "a-new-visitor",
                    "items": [{"item_id": "i2", "score": 811.0}, {"item_id": "i9", "score": 640.0}],
                    "model_version": "20250101T120000Z-job3",
                    "fallback": "popular",
                },
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
    k: int = Field(default=20, ge=1, le=MAX_K, strict=True)
    offset: int = Field(
        default=0,
        ge=0,
        le=MAX_OFFSET,
        strict=True,
        description="skip this many of the best items (pagination): the answer is ranks "
        "offset+1 .. offset+k, shorter or empty past the last item",
    )
    exclude_seen: bool = Field(default=True, strict=True)
    include_items: list[ExternalId] | None = Field(
        default=None,
        max_length=MAX_FILTER_ITEMS,
        description="rank only these items (external ids); all items when absent",
    )
    exclude_items: list[ExternalId] | None = Field(
        default=None,
        max_length=MAX_FILTER_ITEMS,
        description="never return these items (external ids)",
    )
    item_ids: list[ExternalId] | None = Field(
        default=None,
        max_length=MAX_FILTER_ITEMS,
        description="the former name of include_items (not both)",
        json_schema_extra={"deprecated": True},  # OpenAPI only: no warning on each access
    )
    fallback: Fallback | None = Field(
        default=None,
        description="answer users the model does not know with this fallback (flagged in their "
        "result) instead of a 404",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_ids": ["u1", "u2"], "k": 10},
                {"user_ids": ["u1", "a-new-visitor"], "k": 10, "offset": 10, "fallback": "popular"},
                {"user_ids": ["u1"], "include_items": ["i1", "i2", "i3"], "k": 2},
                {"user_ids": ["u1"], "exclude_items": ["i7"]},
            ]
        },
    )

    @model_validator(mode="after")
    def _one_include_list(self) -> BatchRequest:
        if self.item_ids is not None and self.include_items is not None:
            raise ValueError("give include_items or its former name item_ids, not both")
        return self

    @property
    def included(self) -> list[str] | None:
        """The include list, under either name."""
        return self.include_items if self.include_items is not None else self.item_ids


class BatchResponse(BaseModel):
    results: list[Recommendation]
    model_version: str


class SimilarItemsResponse(BaseModel):
    item_id: str = Field(description="the external item id asked about")
    metric: SimilarityMetric
    items: list[ScoredItem] = Field(description="most similar first, the item itself left out")
    model_version: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "item_id": "i7",
                    "metric": "cosine",
                    "items": [{"item_id": "i3", "score": 0.93}, {"item_id": "i12", "score": 0.9}],
                    "model_version": "20250101T120000Z-job3",
                }
            ]
        }
    )


class ForItemsRequest(BaseModel):
    item_ids: list[ExternalId] = Field(
        min_length=1,
        max_length=MAX_FILTER_ITEMS,
        description="the visitor's items (external ids; repeats count once), never returned",
    )
    k: int = Field(default=20, ge=1, le=MAX_K, strict=True)
    offset: int = Field(
        default=0, ge=0, le=MAX_OFFSET, strict=True, description="skip this many of the best items"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"item_ids": ["i7", "i3", "i12"], "k": 10}]},
    )


class ForItemsResponse(BaseModel):
    items: list[ScoredItem] = Field(description="best first; shorter than k if fewer remain")
    model_version: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "i5", "score": 2.71}, {"item_id": "i1", "score": 2.5}],
                    "model_version": "20250101T120000Z-job3",
                }
            ]
        }
    )


class ModelBytes(BaseModel):
    embedding_stores: int = Field(
        description="every stored byte of the embedding tables (values, per-row scales of "
        "int8/int4, sizes; the files' sizes): what a byte budget counts"
    )
    embedding_stores_detail: dict[str, int] = Field(
        description="those bytes by part: values, scales, sizes"
    )
    dense_equivalent: int = Field(description="the same tables dense at d_max in float32")
    files_on_disk: int
    resident: int = Field(description="what the scorer keeps in memory after loading")


class ModelFallback(BaseModel):
    """The promoted version that did not load (another one serves)."""

    version: str = Field(description="the version current.json points at ('current.json' when "
                         "the pointer itself cannot be read)")  # fmt: skip
    reason: str = Field(description="why it did not load")
    at: float = Field(description="UNIX time of the failure")


class ModelInfo(BaseModel):
    version: str
    backbone: str
    max_size: int = Field(description="d_max")
    target_sparsity: float | None = Field(description="the budget asked, as a sparsity")
    budget_bytes: int | None = Field(
        default=None,
        description="the byte budget asked (every stored byte of the embedding stores), when "
        "the model was made for one",
    )
    sparsity: float = Field(description="the sparsity achieved")
    num_users: int
    num_items: int
    value_dtype: str
    bytes: ModelBytes
    metrics: dict[str, Any]
    dataset: dict[str, Any]
    created_at: str
    loaded_at: float = Field(description="UNIX time this process loaded it")
    fallback_from: ModelFallback | None = Field(
        default=None,
        description="set when the promoted version (current.json) did not load and this one "
        "serves instead: the version that failed and why",
    )

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
        strict=True,
        description="fraction of the dense tables pruned; one of the three forms",
    )
    max_parameters: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BUDGET_NUMBER,
        strict=True,
        description="stored embedding values, all tables together; one of the three forms",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BUDGET_NUMBER,
        strict=True,
        description="every stored byte of the embedding stores (values, scales, sizes, file "
        "headers); with method 'search' the byte planner picks the value type and sizes, down "
        "to the smallest store of any type (one value a row); with 'equal', the served model's "
        "type; one of the three forms",
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
        description="true: the queued or running job of an identical budget (same budget and "
        "method), answered with 200 instead of a new job (202)"
    )
    fast_path: JobView | None = Field(
        default=None,
        description="a byte budget that a kept model meets by storing its values in fewer "
        "bits ('requantise'), or a kept full LightGCN turned to its principal axes and cut to "
        "equal sizes ('turn'): the job that serves it within seconds; this job then replaces it "
        "only if its pick validates better",
    )
    superseded: list[int] = Field(
        default_factory=list,
        description="the jobs of earlier budgets that this one cancelled (the budget asked last "
        "wins); running ones stop within a poll interval",
    )


class BudgetOption(BaseModel):
    """A model that a byte budget of at least its bytes gets within seconds (the fast path)."""

    bytes: int = Field(description="its embedding stores' bytes")
    byte_ratio: float = Field(
        description="those bytes as a share of the served model's dense float32 tables"
    )
    value_type: str = Field(description="the type its tables are stored as")
    width: int | None = Field(
        description="null: the kept model as it is, stored as value_type; else the equal size "
        "every user and item is cut to after turning its table to its principal axes"
    )
    kind: Literal["requantise", "turn"] = Field(description="the job that writes it")
    source_version: str = Field(description="the kept artifact it is written from")
    valid: float = Field(description="its validation score on the selection metric")


class BudgetOptions(BaseModel):
    """What byte budgets get within seconds: the fast path's options, fewest bytes first, each
    validating better than every option of fewer bytes. A budget of at least an option's bytes
    (``max_bytes`` with the ``search`` method) is served by the last option within it, then the
    byte planner's job replaces that only if its pick validates better."""

    model_version: str = Field(description="the served model, whose data and backbone they share")
    dense_fp32_bytes: int = Field(description="the served model's tables dense in float32")
    metric: str = Field(description="the validation metric of 'valid' (the one selected on)")
    options: list[BudgetOption]

    model_config = ConfigDict(protected_namespaces=())


class BudgetUnchanged(BaseModel):
    """The answer to a budget the served model already meets: no job (200)."""

    message: str
    model_version: str = Field(description="the served model, which keeps serving")
    target_sparsity: float = Field(description="the budget, as resolved for the served model")
    max_parameters: int
    superseded: list[int] = Field(
        default_factory=list,
        description="the jobs of other budgets that asking for the served one cancelled",
    )

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
    load_seconds: float = Field(description="how long this process took to load the artifact")
    all_processes_within_seconds: float = Field(
        description="every other process of the service (``ciess serve --workers N``) reloads "
        "at its next check of the state folder, every poll_seconds: within poll_seconds plus "
        "its own load time, estimated as twice this process's"
    )


class JobsReadiness(BaseModel):
    """Whether budget jobs can run: a job worker is alive (registered in the job store, its
    heartbeat fresh, its process present)."""

    can_run: bool
    workers: int = Field(description="job workers alive")


class Readiness(BaseModel):
    """``/readyz``: 200 when a model is loaded and answers (503 otherwise); ``jobs`` says
    whether budget jobs can run, which does not change the status."""

    status: Literal["ready", "not ready"]
    model_version: str | None
    jobs: JobsReadiness
    fallback_from: ModelFallback | None = Field(
        default=None, description="as in GET /v1/model: the promoted version that did not load"
    )

    model_config = ConfigDict(protected_namespaces=())


class KeptModelBytes(BaseModel):
    embedding_stores: int = Field(description="every stored byte of the embedding tables")
    files_on_disk: int


class KeptModel(BaseModel):
    """One kept model version (an artifact folder), from its manifest."""

    version: str
    served: bool = Field(description="this process serves it now")
    current: bool = Field(description="current.json points at it (the promoted version)")
    configured: bool = Field(description="the artifact_dir setting's artifact")
    backbone: str | None
    target_sparsity: float | None = Field(description="the budget asked")
    sparsity: float | None = Field(description="the sparsity achieved")
    max_parameters: int | None = Field(description="the budget as stored values")
    bytes: KeptModelBytes | None
    metrics: dict[str, Any]
    created_at: str | None = Field(description="ISO-8601 UTC time of the export")
    promoted_at: float | None = Field(description="UNIX time it was last promoted")
    job_id: int | None = Field(description="the job that made and promoted it")
    problem: str | None = Field(
        default=None, description="why its manifest cannot be read (it cannot be promoted)"
    )

    model_config = ConfigDict(protected_namespaces=())


class KeptModels(BaseModel):
    served_version: str | None
    keep: int = Field(
        description="the retention rule: after each job, the artifacts beyond this many newest "
        "are removed, except the promoted one, the last promoted ones and those jobs use"
    )
    models: list[KeptModel] = Field(description="newest first")


class PromoteResponse(BaseModel):
    model_version: str = Field(description="the version now promoted and served")
    previous_version: str | None
    swapped: bool = Field(description="false when it was served already")
    all_processes_within_seconds: float = Field(
        description="every process of the service serves it within this many seconds"
    )

    model_config = ConfigDict(protected_namespaces=())
