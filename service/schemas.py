"""Request and response bodies (kept flat: they are built on every top-k request)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000
MAX_BATCH_USERS = 1000
MAX_FILTER_ITEMS = 100_000


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
    user_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    k: int = Field(default=20, ge=1, le=MAX_K)
    exclude_seen: bool = True
    item_ids: list[str] | None = Field(
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
    """Exactly one of the three budget forms."""

    target_sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    max_parameters: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1)
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


class JobList(BaseModel):
    jobs: list[JobView]


class ReloadResponse(BaseModel):
    model_version: str
    swapped: bool
