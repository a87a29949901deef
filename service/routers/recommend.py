"""Top-k for one user or a batch of users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import ModelDep, SettingsDep
from service.errors import error_responses
from service.limits import check_ids
from service.ranking import ranked, recommend, recommendation_json
from service.schemas import (
    MAX_FILTER_ITEMS,
    MAX_ID_LENGTH,
    MAX_K,
    BatchRequest,
    BatchResponse,
    RecommendationResponse,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])

VERSION_HEADER = "X-Model-Version"
_UNKNOWN_USER = {
    "description": "unknown user",
    "content": {"application/json": {"example": {
        "detail": "unknown user id(s) ['u999'] (1 of 1); model v1 knows 120 users"}}},
}  # fmt: skip
_INVALID = (
    "k out of range, too many ids (the max_batch_users setting), an id longer than the "
    "max_id_length setting, unknown filter items, a malformed body"
)
_USER_ERRORS = {**error_responses((422, 503), {422: _INVALID}), 404: _UNKNOWN_USER}
_BATCH_ERRORS = {**error_responses((400, 413, 422, 503), {422: _INVALID}), 404: _UNKNOWN_USER}


# One user's top-k costs a fraction of a millisecond (docs/benchmarks/serving.md), less than the
# hop to the threadpool, so it runs on the event loop; a filtered request can rank up to
# MAX_FILTER_ITEMS items and goes to the threadpool, as does the batch endpoint (up to the
# max_batch_users setting's users). The body is serialised once, here, not validated again by
# FastAPI. Ids are checked against the limits (service.limits) before any is looked up.
@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationResponse,
    responses=_USER_ERRORS,
    summary="Top-k items for one user",
)
async def user_recommendations(
    model: ModelDep,
    settings: SettingsDep,
    user_id: Annotated[
        str, Path(max_length=MAX_ID_LENGTH, description="external user id", examples=["u42"])
    ],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="list length")] = 20,
    exclude_seen: Annotated[bool, Query(description="drop the user's training items")] = True,
    item_ids: Annotated[
        list[str] | None,
        Query(
            alias="item_id",
            max_length=MAX_FILTER_ITEMS,  # ids in the list; each id's length is checked below
            description="rank only these items (repeat the parameter); all items when absent",
        ),
    ] = None,
) -> Response:
    check_ids([user_id], "user_id", settings.max_id_length)
    if item_ids is None:
        (ranking,) = ranked(model, [user_id], k, exclude_seen)
    else:
        check_ids(item_ids, "item_id", settings.max_id_length)
        (ranking,) = await run_in_threadpool(ranked, model, [user_id], k, exclude_seen, item_ids)
    return Response(
        recommendation_json(user_id, ranking, model.version),
        media_type="application/json",
        headers={VERSION_HEADER: model.version},
    )


@router.post(
    "/recommendations",
    response_model=BatchResponse,
    responses=_BATCH_ERRORS,
    summary="Top-k items for a batch of users",
)
def batch_recommendations(
    model: ModelDep, settings: SettingsDep, response: Response, body: BatchRequest
) -> BatchResponse:
    check_ids(body.user_ids, "user_ids", settings.max_id_length, settings.max_batch_users)
    if body.item_ids is not None:
        check_ids(body.item_ids, "item_ids", settings.max_id_length)
    results = recommend(model, body.user_ids, body.k, body.exclude_seen, body.item_ids)
    response.headers[VERSION_HEADER] = model.version
    return BatchResponse(results=results, model_version=model.version)
