"""Top-k for one user, a batch of users or a list of items (a visitor), and similar items.

How each ranking is made (fallback, include/exclude lists, pagination, the visitor's vector, item
similarity): :mod:`service.ranking`. Every route here answers an unknown query parameter with a
422 naming it: a misspelt ``ofset`` must not silently give the first page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from service.deps import ModelDep, SettingsDep
from service.errors import error_responses
from service.limits import check_ids
from service.ranking import (
    as_recommendations,
    for_items,
    rank_users,
    ranked,
    recommendation_json,
    similar_items,
)
from service.schemas import (
    MAX_FILTER_ITEMS,
    MAX_ID_LENGTH,
    MAX_K,
    MAX_OFFSET,
    BatchRequest,
    BatchResponse,
    Fallback,
    ForItemsRequest,
    ForItemsResponse,
    RecommendationResponse,
    ScoredItem,
    SimilarItemsResponse,
    SimilarityMetric,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])

VERSION_HEADER = "X-Model-Version"
_UNKNOWN_USER = {
    "description": "unknown user (and no fallback asked for)",
    "content": {"application/json": {"example": {
        "detail": "unknown user id(s) ['u999'] (1 of 1); model v1 knows 120 users"}}},
}  # fmt: skip
_UNKNOWN_ITEM = {
    "description": "unknown item",
    "content": {"application/json": {"example": {
        "detail": "unknown item id 'i999'; model v1 knows 80 items"}}},
}  # fmt: skip
_INVALID = (
    "k or offset out of range, an unknown query parameter, too many ids (the max_batch_users "
    "setting), an id longer than the max_id_length setting, unknown items in an item list, a "
    "malformed body"
)
_USER_ERRORS = {**error_responses((422, 503), {422: _INVALID}), 404: _UNKNOWN_USER}
_BATCH_ERRORS = {**error_responses((400, 413, 422, 503), {422: _INVALID}), 404: _UNKNOWN_USER}
_ITEM_ERRORS = {**error_responses((422, 503), {422: _INVALID}), 404: _UNKNOWN_ITEM}
_FOR_ITEMS_ERRORS = error_responses(
    (400, 413, 422, 503),
    {422: f"{_INVALID}, or a model without a graph (NCF: its users are free embeddings)"},
)


def _only_query(*names: str) -> Callable[[Request], None]:
    """A dependency refusing (422, FastAPI's error shape) any query parameter but ``names``."""
    allowed = frozenset(names)
    takes = ", ".join(names) if names else "no query parameters"

    def only_known_parameters(request: Request) -> None:
        unknown = [name for name in request.query_params if name not in allowed]
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ("query", name),
                        "msg": f"unknown query parameter (this route takes {takes})",
                        "input": request.query_params[name],
                    }
                    for name in unknown
                ]
            )

    return only_known_parameters


K = Annotated[int, Query(ge=1, le=MAX_K, description="list length")]
Offset = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_OFFSET,
        description="skip this many of the best items (pagination): the answer is ranks "
        "offset+1 .. offset+k, shorter or empty past the last item",
    ),
]


# One user's top-k costs a fraction of a millisecond (docs/benchmarks/serving.md), less than the
# hop to the threadpool, so the plain request runs on the event loop; one with an item filter, an
# offset (up to MAX_OFFSET more items ranked) or a fallback goes to the threadpool, as do the
# batch, item and for-items routes. Bodies are serialised once, here, not validated again by
# FastAPI. Ids are checked against the limits (service.limits) before any is looked up. The plain
# request is usually answered ahead of this route by service.fast_path, identically.
@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationResponse,
    responses=_USER_ERRORS,
    summary="Top-k items for one user",
    dependencies=[Depends(_only_query("k", "offset", "exclude_seen", "item_id", "fallback"))],
)
async def user_recommendations(
    model: ModelDep,
    settings: SettingsDep,
    user_id: Annotated[
        str, Path(max_length=MAX_ID_LENGTH, description="external user id", examples=["u42"])
    ],
    k: K = 20,
    offset: Offset = 0,
    exclude_seen: Annotated[bool, Query(description="drop the user's training items")] = True,
    item_ids: Annotated[
        list[str] | None,
        Query(
            alias="item_id",
            max_length=MAX_FILTER_ITEMS,  # ids in the list; each id's length is checked below
            description="rank only these items (repeat the parameter); all items when absent",
        ),
    ] = None,
    fallback: Annotated[
        Fallback | None,
        Query(
            description="answer a user the model does not know with this fallback (flagged "
            "in the answer's 'fallback') instead of a 404"
        ),
    ] = None,
) -> Response:
    check_ids([user_id], "user_id", settings.max_id_length)
    used: Fallback | None = None
    if item_ids is None and offset == 0 and fallback is None:
        (ranking,) = ranked(model, [user_id], k, exclude_seen)
    else:
        if item_ids is not None:
            check_ids(item_ids, "item_id", settings.max_id_length)
        ((ranking, used),) = await run_in_threadpool(
            lambda: rank_users(
                model, [user_id], k, exclude_seen, item_ids, offset=offset, fallback=fallback
            )
        )
    return Response(
        recommendation_json(user_id, ranking, model.version, used),
        media_type="application/json",
        headers={VERSION_HEADER: model.version},
    )


@router.post(
    "/recommendations",
    response_model=BatchResponse,
    response_model_exclude_none=True,
    responses=_BATCH_ERRORS,
    summary="Top-k items for a batch of users",
    dependencies=[Depends(_only_query())],
)
def batch_recommendations(
    model: ModelDep, settings: SettingsDep, response: Response, body: BatchRequest
) -> BatchResponse:
    check_ids(body.user_ids, "user_ids", settings.max_id_length, settings.max_batch_users)
    for name, items in (("include_items", body.included), ("exclude_items", body.exclude_items)):
        if items is not None:
            check_ids(items, name, settings.max_id_length)
    answers = rank_users(
        model,
        body.user_ids,
        body.k,
        body.exclude_seen,
        body.included,
        exclude_items=body.exclude_items,
        offset=body.offset,
        fallback=body.fallback,
    )
    results = as_recommendations(body.user_ids, answers)
    response.headers[VERSION_HEADER] = model.version
    return BatchResponse(results=results, model_version=model.version)


@router.post(
    "/recommendations/for-items",
    response_model=ForItemsResponse,
    responses=_FOR_ITEMS_ERRORS,
    summary="Top-k items for a visitor known by a list of items",
    description="The visitor's user vector is the ridge least-squares fold-in over the item "
    "vectors the model scores users against, x = (YᵀY + λI)⁻¹ Σ_{i in items} y_i with λ the "
    "mean of YᵀY's diagonal: the vector whose scores best reproduce the visitor's items (1) and "
    "the others (0). On ML-1M (LightGCN) it recovers held-out items as well as the trained "
    "users' own vectors (recall@20 0.248 against 0.249; popularity 0.112). LightGCN and NGCF "
    "only: NCF, whose score is nonlinear in the user, answers 422. The given items are never "
    "returned.",
    dependencies=[Depends(_only_query())],
)
def recommendations_for_items(
    model: ModelDep, settings: SettingsDep, response: Response, body: ForItemsRequest
) -> ForItemsResponse:
    check_ids(body.item_ids, "item_ids", settings.max_id_length)
    labels, scores = for_items(model, body.item_ids, body.k, body.offset)
    response.headers[VERSION_HEADER] = model.version
    return ForItemsResponse(items=_scored(labels, scores), model_version=model.version)


@router.get(
    "/items/{item_id}/similar",
    response_model=SimilarItemsResponse,
    responses=_ITEM_ERRORS,
    summary="Items most similar to an item",
    description="By the item vectors the model scores users against (LightGCN: the propagated "
    "vectors; NGCF: the concatenated layers; NCF: its GMF item table, the half of its score "
    "that has item vectors). No user is involved: nothing is excluded but the item itself.",
    dependencies=[Depends(_only_query("k", "metric"))],
)
def similar(
    model: ModelDep,
    settings: SettingsDep,
    response: Response,
    item_id: Annotated[
        str, Path(max_length=MAX_ID_LENGTH, description="external item id", examples=["i7"])
    ],
    k: K = 20,
    metric: Annotated[
        SimilarityMetric, Query(description="cosine (direction) or dot (as scores are made)")
    ] = SimilarityMetric.COSINE,
) -> SimilarItemsResponse:
    check_ids([item_id], "item_id", settings.max_id_length)
    labels, scores = similar_items(model, item_id, k, metric)
    response.headers[VERSION_HEADER] = model.version
    return SimilarItemsResponse(
        item_id=item_id, metric=metric, items=_scored(labels, scores), model_version=model.version
    )


def _scored(labels: list[str], scores: list[float]) -> list[ScoredItem]:
    return [
        ScoredItem(item_id=label, score=score) for label, score in zip(labels, scores, strict=True)
    ]
