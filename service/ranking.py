"""External ids in, ranked external ids out: the request path's only numpy code.

Without an item filter this is exactly :meth:`ArtifactScorer.recommend`; with one, the scores of
the allowed items are ranked with the same rules (seen items out, ties towards the lower item id).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson

from service.errors import BudgetError, NotFoundError
from service.model_holder import ServedModel
from service.schemas import Recommendation, ScoredItem

_SHOWN_UNKNOWN = 5


class UnknownItemsError(BudgetError):
    """An item filter names items the model does not know (422)."""


def _internal_users(model: ServedModel, user_ids: Sequence[str]) -> npt.NDArray[np.int64]:
    internal = model.scorer.user_index(list(user_ids))
    if (internal < 0).any():
        unknown = [user_ids[i] for i in np.flatnonzero(internal < 0)[:_SHOWN_UNKNOWN]]
        count = int((internal < 0).sum())
        raise NotFoundError(
            f"unknown user id(s) {unknown}{' …' if count > len(unknown) else ''} "
            f"({count} of {len(user_ids)}); model {model.version} knows "
            f"{model.scorer.num_users} users"
        )
    return internal


def _allowed_items(model: ServedModel, item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
    lookup = model.item_lookup
    unknown = [item for item in item_ids if item not in lookup]
    if unknown:
        raise UnknownItemsError(
            f"item filter names {len(unknown)} unknown item id(s), e.g. {unknown[:_SHOWN_UNKNOWN]}"
        )
    return np.unique(np.asarray([lookup[item] for item in item_ids], dtype=np.int64))


def _filtered_top_k(
    model: ServedModel,
    users: npt.NDArray[np.int64],
    allowed: npt.NDArray[np.int64],
    k: int,
    exclude_seen: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    scores = model.scorer.score_all(users)[:, allowed]
    if exclude_seen:
        seen = model.scorer.seen[users][:, allowed].toarray() > 0
        scores[seen] = -np.inf
    k = min(k, allowed.size)
    candidates = np.broadcast_to(allowed, scores.shape)
    ranking = np.lexsort((candidates, -scores), axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, ranking, axis=1)
    top_items = np.where(np.isneginf(top_scores), -1, allowed[ranking])
    return top_items, top_scores


def ranked(
    model: ServedModel,
    user_ids: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    item_ids: Sequence[str] | None = None,
) -> list[tuple[list[str], list[float]]]:
    """Each user's top-k as (external item ids, scores), best first; empty slots dropped.

    Raises:
        NotFoundError: an unknown user (404).
        UnknownItemsError: an item filter with unknown items (422).
    """
    users = _internal_users(model, user_ids)
    if item_ids is None:
        items, scores = model.scorer.recommend(users, k, exclude_seen=exclude_seen)
    else:
        items, scores = _filtered_top_k(
            model, users, _allowed_items(model, item_ids), k, exclude_seen
        )
    external = model.scorer.external_item_ids
    keep = items >= 0
    return [
        (external[items[row][keep[row]]].tolist(), scores[row][keep[row]].tolist())
        for row in range(len(user_ids))
    ]


def recommend(
    model: ServedModel,
    user_ids: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    item_ids: Sequence[str] | None = None,
) -> list[Recommendation]:
    """:func:`ranked` as response objects."""
    return [
        Recommendation(
            user_id=user,
            items=[
                ScoredItem(item_id=label, score=score)
                for label, score in zip(labels, scores, strict=True)
            ],
        )
        for user, (labels, scores) in zip(
            user_ids, ranked(model, user_ids, k, exclude_seen, item_ids), strict=True
        )
    ]


def recommendation_json(
    user_id: str, ranking: tuple[list[str], list[float]], model_version: str
) -> bytes:
    """A :class:`service.schemas.RecommendationResponse` body, serialised in one step.

    orjson: UTF-8 and compact like FastAPI's own JSON responses, about ten times faster than the
    standard library here (the body was 8 % of a request's CPU). It would write a NaN or infinite
    score as null; like ``json.dumps(allow_nan=False)`` before it, this refuses one instead.
    """
    labels, scores = ranking
    if not all(map(math.isfinite, scores)):
        raise ValueError(f"non-finite score in the top-k of user {user_id!r}: {scores}")
    return orjson.dumps(
        {
            "user_id": user_id,
            "items": [
                {"item_id": label, "score": score}
                for label, score in zip(labels, scores, strict=True)
            ],
            "model_version": model_version,
        }
    )
