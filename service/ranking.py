"""External ids in, ranked external ids out: the request path's only numpy code.

Every ranking here orders by score, then by the lower internal item id (the scorer's order), and
pages by ranking the top ``k + offset`` and keeping ranks ``offset .. offset + k``.

- Known users without item rules: exactly :meth:`ArtifactScorer.recommend`.
- With an include list (``include_items``) or an exclude list (``exclude_items``): the scores of
  the items allowed, ranked with the same rules (seen items out, ties towards the lower item id).
- Unknown users, when the request opts in (``fallback=popular``): the items with the most
  training interactions (the artifact's seen matrix), the same for every such user.
- Similar items: cosine (or dot) of the item vectors the scorer multiplies users with
  (:meth:`ArtifactScorer.item_vectors`), the item itself left out. For NCF that is its GMF item
  table: the tower half of NCF's score has no item vector, so its similarity is the GMF half's.
- For items (a visitor known only by a list of items S): the ridge least-squares fold-in over the
  same item vectors Y, ``x = (YᵀY + λI)⁻¹ Σ_{i∈S} y_i`` with ``λ = trace(YᵀY) / w``: the user
  vector whose scores ``Y x`` best reproduce the visitor's row (1 on its items, 0 elsewhere), the
  implicit-feedback fold-in of Hu, Koren and Volinsky (2008) with one confidence (implicit's
  ``recalculate_user``). LightGCN's and NGCF's scores are dot products of a user vector with fixed
  item vectors, so any user is such an x, and this one is closed-form. LightGCN's own
  propagation (one step from the items' final vectors) leaves out a trained user's layer-0
  share, which is most of it (a median 82 % of the norm on ML-1M): recall@20 on held-out items,
  as a share of the trained users', is 0.99 for this fold-in, 0.60 for one propagation step,
  0.55 for the mean item vector (``bench/for_items.py``). λ → ∞ gives the mean's direction,
  λ → 0 the plain least-squares fit; recall is flat for λ from 0.5 to 3 times the default. NCF
  is refused (422): its score is a tower, nonlinear in a user embedding that no list of items
  determines.

The item vectors (their directions, lengths and fold-in matrix) and the item degrees (popularity)
are derived once per served model, on first use, and kept as long as that model is.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from service.errors import BudgetError, NotFoundError
from service.model_holder import ServedModel
from service.schemas import Fallback, Recommendation, ScoredItem, SimilarityMetric

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
Ranking = tuple[list[str], list[float]]

_SHOWN_UNKNOWN = 5
_T = TypeVar("_T")


class UnknownItemsError(BudgetError):
    """An item list names items the model does not know (422)."""


class NotSupportedError(BudgetError):
    """The served model's backbone cannot answer this kind of request (422)."""


class _PerModel(Generic[_T]):
    """A value derived from a served model: built on first use, kept as long as the model."""

    def __init__(self, build: Callable[[ServedModel], _T]) -> None:
        self._build = build
        self._values: weakref.WeakKeyDictionary[ServedModel, _T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, model: ServedModel) -> _T:
        value = self._values.get(model)
        if value is None:
            with self._lock:  # built once, even by concurrent first requests
                value = self._values.get(model)
                if value is None:
                    value = self._values[model] = self._build(model)
        return value


def _degrees(model: ServedModel) -> FloatArray:
    """(num_items,) float32 training interactions per item."""
    return model.scorer.item_degrees().astype(np.float32)


@dataclass(frozen=True)
class ItemGeometry:
    """The item vectors of a model, split into directions and lengths.

    Attributes:
        unit: (num_items, w) float32 item vectors Y scaled to length 1 (a zero vector stays 0).
        norms: (num_items,) float32 their lengths.
        fold_in: (w, w) float32 ``(YᵀY + λI)⁻¹``, λ the mean of YᵀY's diagonal.
    """

    unit: FloatArray
    norms: FloatArray
    fold_in: FloatArray


def _geometry(model: ServedModel) -> ItemGeometry:
    vectors = model.scorer.item_vectors()
    gram = (vectors.T @ vectors).astype(np.float64)
    ridge = float(np.trace(gram)) / gram.shape[0] or 1.0
    fold_in = np.linalg.inv(gram + ridge * np.eye(gram.shape[0])).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
    np.divide(vectors, norms[:, None], out=vectors, where=norms[:, None] > 0)
    return ItemGeometry(vectors, norms, fold_in)


item_degrees = _PerModel(_degrees)
item_geometry = _PerModel(_geometry)


# -- ids ----------------------------------------------------------------------------------------
def _internal_users(model: ServedModel, user_ids: Sequence[str]) -> IdArray:
    """Internal ids, -1 for an unknown user."""
    return model.scorer.user_index(list(user_ids))


def _unknown_users(model: ServedModel, user_ids: Sequence[str], internal: IdArray) -> NotFoundError:
    unknown = [user_ids[i] for i in np.flatnonzero(internal < 0)[:_SHOWN_UNKNOWN]]
    count = int((internal < 0).sum())
    return NotFoundError(
        f"unknown user id(s) {unknown}{' …' if count > len(unknown) else ''} "
        f"({count} of {len(user_ids)}); model {model.version} knows "
        f"{model.scorer.num_users} users"
    )


def internal_items(model: ServedModel, item_ids: Sequence[str], field: str) -> IdArray:
    """Sorted unique internal ids of external item ids.

    Raises:
        UnknownItemsError: naming ``field``, the count and the first few unknown ids (422).
    """
    internal = model.scorer.item_index(list(item_ids))
    missing = np.flatnonzero(internal < 0)
    if missing.size:
        shown = [item_ids[i] for i in missing[:_SHOWN_UNKNOWN]]
        raise UnknownItemsError(
            f"{field}: {missing.size} unknown item id(s), e.g. {shown}; "
            f"model {model.version} knows {model.scorer.num_items} items"
        )
    return np.unique(internal)


def _candidates(
    model: ServedModel, include_items: Sequence[str] | None, exclude_items: Sequence[str] | None
) -> IdArray | None:
    """Sorted internal ids the request may return; None: every item."""
    include = (
        None if include_items is None else internal_items(model, include_items, "include list")
    )
    exclude = (
        None if exclude_items is None else internal_items(model, exclude_items, "exclude list")
    )
    if exclude is None:
        return include
    every = np.arange(model.scorer.num_items) if include is None else include
    return np.setdiff1d(every, exclude, assume_unique=True)


# -- ranking ------------------------------------------------------------------------------------
def top_items(scores: FloatArray, candidates: IdArray, count: int) -> tuple[IdArray, FloatArray]:
    """Each row's ``count`` best, by score then lower item id.

    Args:
        scores: (B, M) float32; -inf marks an item that must not be returned.
        candidates: (M,) ascending internal item ids of the columns.
        count: list length (at most M are returned).

    Returns:
        (items (B, count) int64 internal ids, scores (B, count)); -1 and -inf past the end.
    """
    count = min(count, candidates.size)
    if count < candidates.size:  # the count + 1 best in some order: the cut's tie shows
        positions = np.argpartition(-scores, count, axis=1)[:, : count + 1]
    else:
        positions = np.broadcast_to(np.arange(candidates.size), scores.shape)
    values = np.take_along_axis(scores, positions, axis=1)
    order = np.lexsort((candidates[positions], -values), axis=1)
    positions = np.take_along_axis(positions, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    top, top_values = positions[:, :count].copy(), values[:, :count].copy()
    if count < candidates.size:
        # A tie across the cut: which of the tied items argpartition kept is arbitrary.
        cut, after = values[:, count - 1], values[:, count]
        for row in np.flatnonzero((cut == after) & ~np.isneginf(cut)):
            top[row] = np.lexsort((candidates, -scores[row]))[:count]
            top_values[row] = scores[row, top[row]]
    return np.where(np.isneginf(top_values), -1, candidates[top]), top_values


def _page(model: ServedModel, items: IdArray, scores: FloatArray, offset: int) -> list[Ranking]:
    """Ranks ``offset ..`` of each row as external ids and scores, empty slots dropped."""
    external = model.scorer.external_item_ids
    items, scores = items[:, offset:], scores[:, offset:]
    keep = items >= 0
    return [
        (external[items[row][keep[row]]].tolist(), scores[row][keep[row]].tolist())
        for row in range(items.shape[0])
    ]


def _rank_one(
    model: ServedModel, scores: FloatArray, candidates: IdArray, k: int, offset: int
) -> Ranking:
    """Ranks ``offset ..`` of the ``k + offset`` best of one row of ``scores`` ((M,), -inf: never
    returned) over ``candidates`` ((M,) ascending internal item ids), as external ids and scores."""
    (ranking,) = _page(model, *top_items(scores[None], candidates, k + offset), offset)
    return ranking


def _rank_known(
    model: ServedModel,
    users: IdArray,
    k: int,
    exclude_seen: bool,
    candidates: IdArray | None,
    offset: int,
) -> list[Ranking]:
    scorer = model.scorer
    if candidates is None:
        items, scores = scorer.recommend(users, k + offset, exclude_seen=exclude_seen)
        return _page(model, items, scores, offset)
    scores = scorer.score_all(users)[:, candidates]
    if exclude_seen:
        scores[scorer.seen_rows(users)[:, candidates].toarray()] = -np.inf
    return _page(model, *top_items(scores, candidates, k + offset), offset)


def rank_internal(model: ServedModel, users: IdArray, k: int, exclude_seen: bool) -> list[Ranking]:
    """Each user's top-k over every item as (external item ids, scores), best first.

    ``users`` are internal ids the caller has already resolved (the fast path: one lookup per
    request); an id outside the model raises ConfigError.
    """
    return _rank_known(model, users, k, exclude_seen, None, 0)


def _rank_popular(model: ServedModel, k: int, candidates: IdArray | None, offset: int) -> Ranking:
    counts = item_degrees(model)
    if candidates is None:
        candidates = np.arange(counts.size)
    return _rank_one(model, counts[candidates], candidates, k, offset)


def rank_users(
    model: ServedModel,
    user_ids: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    include_items: Sequence[str] | None = None,
    *,
    exclude_items: Sequence[str] | None = None,
    offset: int = 0,
    fallback: Fallback | None = None,
) -> list[tuple[Ranking, Fallback | None]]:
    """Each user's ranks ``offset+1 .. offset+k`` as (external item ids, scores), best first, and
    the fallback that answered it (None: the model did).

    Raises:
        NotFoundError: an unknown user without a fallback (404).
        UnknownItemsError: an include or exclude list with unknown items (422).
    """
    users = _internal_users(model, user_ids)
    known = users >= 0
    if fallback is None and not known.all():
        raise _unknown_users(model, user_ids, users)
    candidates = _candidates(model, include_items, exclude_items)
    if known.all():
        rankings = _rank_known(model, users, k, exclude_seen, candidates, offset)
        return [(ranking, None) for ranking in rankings]
    popular = _rank_popular(model, k, candidates, offset)  # the same for every unknown user
    rankings = (
        _rank_known(model, users[known], k, exclude_seen, candidates, offset) if known.any() else []
    )
    answered = iter(rankings)
    return [(next(answered), None) if is_known else (popular, fallback) for is_known in known]


def ranked(
    model: ServedModel,
    user_ids: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    item_ids: Sequence[str] | None = None,
) -> list[Ranking]:
    """Each known user's top-k as (external item ids, scores), best first; empty slots dropped.

    Raises:
        NotFoundError: an unknown user (404).
        UnknownItemsError: an item filter with unknown items (422).
    """
    return [ranking for ranking, _ in rank_users(model, user_ids, k, exclude_seen, item_ids)]


def as_recommendations(
    user_ids: Sequence[str], answers: Sequence[tuple[Ranking, Fallback | None]]
) -> list[Recommendation]:
    """:func:`rank_users`'s answers for ``user_ids`` as response objects."""
    return [
        Recommendation(
            user_id=user,
            items=[
                ScoredItem(item_id=label, score=score)
                for label, score in zip(labels, scores, strict=True)
            ],
            fallback=used,
        )
        for user, ((labels, scores), used) in zip(user_ids, answers, strict=True)
    ]


# -- item-based ---------------------------------------------------------------------------------
def similar_items(
    model: ServedModel, item_id: str, k: int, metric: SimilarityMetric = SimilarityMetric.COSINE
) -> Ranking:
    """The ``k`` items whose vectors are closest to ``item_id``'s, the item itself left out.

    Raises:
        NotFoundError: an unknown item (404).
    """
    item = int(model.scorer.item_index([item_id])[0])
    if item < 0:
        raise NotFoundError(
            f"unknown item id {item_id!r}; model {model.version} knows "
            f"{model.scorer.num_items} items"
        )
    geometry = item_geometry(model)
    scores = geometry.unit @ geometry.unit[item]
    if metric is SimilarityMetric.DOT:
        scores *= geometry.norms * geometry.norms[item]
    scores[item] = -np.inf
    return _rank_one(model, scores, np.arange(scores.size), k, 0)


def visitor_vector(model: ServedModel, items: IdArray) -> FloatArray:
    """(w,) float32 user vector of a visitor known by internal ``items``: the fold-in
    ``(YᵀY + λI)⁻¹ Σ_{i∈S} y_i`` (the module's docstring says why).

    Raises:
        NotSupportedError: an NCF model (422).
    """
    backbone = model.scorer.manifest.backbone
    if backbone not in ("lightgcn", "ngcf"):
        raise NotSupportedError(
            f"recommendations for a list of items need a model whose scores are dot products "
            f"with item vectors (lightgcn, ngcf); model {model.version} is {backbone}, whose "
            "tower is nonlinear in a user embedding that no list of items determines: use "
            "/v1/items/{item_id}/similar"
        )
    geometry = item_geometry(model)
    summed = geometry.norms[items] @ geometry.unit[items]  # Σ y_i
    return np.asarray(geometry.fold_in @ summed, dtype=np.float32)


def for_items(model: ServedModel, item_ids: Sequence[str], k: int, offset: int = 0) -> Ranking:
    """Ranks ``offset+1 .. offset+k`` for a visitor known by ``item_ids``, those items left out.

    Raises:
        UnknownItemsError: unknown items (422).
        NotSupportedError: an NCF model (422).
    """
    items = internal_items(model, item_ids, "item_ids")
    geometry = item_geometry(model)
    scores = (geometry.unit @ visitor_vector(model, items)) * geometry.norms
    scores[items] = -np.inf
    return _rank_one(model, scores, np.arange(scores.size), k, offset)


def recommendation_json(
    user_id: str,
    ranking: tuple[list[str], list[float]],
    model_version: str,
    fallback: Fallback | None = None,
) -> bytes:
    """A :class:`service.schemas.RecommendationResponse` body, serialised in one step.

    orjson: UTF-8 and compact like FastAPI's own JSON responses, about ten times faster than the
    standard library here (the body was 8 % of a request's CPU). It would write a NaN or infinite
    score as null; like ``json.dumps(allow_nan=False)`` before it, this refuses one instead.
    ``fallback`` appears only when one answered.
    """
    labels, scores = ranking
    if not all(map(math.isfinite, scores)):
        raise ValueError(f"non-finite score in the top-k of user {user_id!r}: {scores}")
    body: dict[str, object] = {
        "user_id": user_id,
        "items": [
            {"item_id": label, "score": score} for label, score in zip(labels, scores, strict=True)
        ],
        "model_version": model_version,
    }
    if fallback is not None:
        body["fallback"] = fallback.value
    return orjson.dumps(body)
