"""Top-k for one user or a batch of users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import ModelDep
from service.ranking import ranked, recommend, recommendation_json
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


# One user's top-k costs a fraction of a millisecond (docs/benchmarks/serving.md), less than the
# hop to the threadpool, so it runs on the event loop; a filtered request can rank up to
# MAX_FILTER_ITEMS items and goes to the threadpool, as does the batch endpoint (up to
# MAX_BATCH_USERS users). The body is serialised once, here, not validated again by FastAPI.
@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
    summary="Top-k items for one user",
)
async def user_recommendations(
    model: ModelDep,
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
) -> Response:
    if item_ids is None:
        (ranking,) = ranked(model, [user_id], k, exclude_seen)
    else:
        (ranking,) = await run_in_threadpool(ranked, model, [user_id], k, exclude_seen, item_ids)
    return Response(
        recommendation_json(user_id, ranking, model.version),
        media_type="application/json",
        headers={VERSION_HEADER: model.version},
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
