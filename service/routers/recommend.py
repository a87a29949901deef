"""Top-k for one user or a batch of users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from service.deps import ModelDep
from service.ranking import recommend
from service.schemas import (
    MAX_FILTER_ITEMS,
    MAX_K,
    BatchRequest,
    BatchResponse,
    RecommendationResponse,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])

VERSION_HEADER = "X-Model-Version"
_ERRORS = {
    404: {"description": "unknown user", "content": {"application/json": {"example": {
        "detail": "unknown user id(s) ['u999'] (1 of 1); model v1 knows 120 users"}}}},
    422: {"description": "k or the batch out of range, unknown filter items, malformed body"},
    503: {"description": "no model loaded yet"},
}  # fmt: skip


# Plain ``def`` endpoints run in the threadpool: scoring is numpy/onnxruntime work that releases
# the GIL, and it must not block the event loop.
@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
    summary="Top-k items for one user",
)
def user_recommendations(
    model: ModelDep,
    response: Response,
    user_id: Annotated[str, Path(description="external user id", examples=["u42"])],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="list length")] = 20,
    exclude_seen: Annotated[bool, Query(description="drop the user's training items")] = True,
    item_ids: Annotated[
        list[str] | None,
        Query(
            alias="item_id",
            max_length=MAX_FILTER_ITEMS,
            description="rank only these items (repeat the parameter); all items when absent",
        ),
    ] = None,
) -> RecommendationResponse:
    (result,) = recommend(model, [user_id], k, exclude_seen, item_ids)
    response.headers[VERSION_HEADER] = model.version
    return RecommendationResponse(
        user_id=result.user_id, items=result.items, model_version=model.version
    )


@router.post(
    "/recommendations",
    response_model=BatchResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
    summary="Top-k items for a batch of users",
)
def batch_recommendations(model: ModelDep, response: Response, body: BatchRequest) -> BatchResponse:
    results = recommend(model, body.user_ids, body.k, body.exclude_seen, body.item_ids)
    response.headers[VERSION_HEADER] = model.version
    return BatchResponse(results=results, model_version=model.version)
