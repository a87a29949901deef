"""The fits between the search and the retraining: every pool assignment refitted at each users'
share of the budget (and, optionally, with each side's spread shrunk), scored by the evaluator,
best first; and the per-side equal assignment fitted the same way, the control to beat.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ciess_core.errors import ConfigError
from ciess_core.search.evaluators import QualityEvaluator
from ciess_core.search.files import BudgetFolder
from ciess_core.search.pool import shrink_sides, split_budget
from ciess_core.sizes import SizeAssignment, equal_sizes_within, parameter_budget

if TYPE_CHECKING:
    from ciess_core.search.pipeline import PipelineSpec

logger = logging.getLogger(__name__)

#: Users' shares of the budget tried by ``--fit-shares``: wide enough to hold every side split
#: the ML-1M and Yelp2018 searches produce (users are 62 % and 45 % of their entities).
DEFAULT_SHARE_GRID = tuple(round(0.3 + 0.05 * step, 2) for step in range(14))

#: Spread factors tried on each side by ``--fit-spread``
#: (:func:`~ciess_core.search.pool.shrink_spread`): equal sizes, half the search's spread, and the
#: search's own.
DEFAULT_SPREAD_GRID = (0.0, 0.5, 1.0)


def within_side_spread(sizes: SizeAssignment) -> float:
    """Root mean square distance of every size from its own side's mean (users', items').

    Zero when each side is equal within itself (ES with the share fit), whatever the split.
    """
    users, items = sizes.user_sizes, sizes.item_sizes
    deviations = np.concatenate([users - users.mean(), items - items.mean()])
    return float(np.sqrt(np.mean(deviations**2)))


class ScoredSizes(NamedTuple):
    """A size assignment and its validation score under the evaluator."""

    score: float
    sizes: SizeAssignment


def fit_shares(
    spec: PipelineSpec,
    evaluator: QualityEvaluator,
    budget: float,
    candidates: list[SizeAssignment],
    folder: BudgetFolder,
    record: str = "fit",
    value_type: str = "float32",
) -> list[ScoredSizes]:
    """Refit each candidate at every share of ``spec.share_grid`` and, with ``spec.spread_grid``,
    shrink the best variants' spreads; the best first (ties keep the order they were scored in).
    ``value_type``: every variant is scored with its tables stored as that type.

    Writes the fit's ``record`` (``fit.json``) in ``folder``, in that order: every variant's
    share (null: as the pool gave it), spread factors, users' and items' mean sizes,
    within-side spread, sparsity and validation score; then the variants themselves, which a
    later call with the same inputs (a resumed pipeline) returns without scoring anything.
    """
    metric = spec.training.selection_metric
    fingerprint = _fit_fingerprint(spec, budget, candidates, value_type)
    kept = folder.fitted(record, fingerprint)
    if kept is not None:  # a resumed pipeline: this fit finished in an earlier call
        logger.info("budget %g: %s reused (%d variants)", budget, record, len(kept))
        return [ScoredSizes(score, sizes) for score, sizes in kept]
    scored: list[tuple[float, SizeAssignment, dict[str, Any]]] = []

    def score(fitted: SizeAssignment, **described: Any) -> None:
        value = evaluator.evaluate(fitted, value_type).metrics[metric]
        row = {
            **described,
            "users_mean_size": float(fitted.user_sizes.mean()),
            "items_mean_size": float(fitted.item_sizes.mean()),
            "within_side_spread": within_side_spread(fitted),
            "sparsity": fitted.sparsity,
            f"valid_{metric}": value,
        }
        scored.append((value, fitted, row))

    for index, sizes in enumerate(candidates):
        score(sizes, candidate=index, user_share=None)
        for share in spec.share_grid:
            score(split_budget(sizes, budget, share), candidate=index, user_share=share)
        logger.info(
            "budget %g: %s, candidate %d of %d scored (best %s so far %.4f)",
            budget, record, index + 1, len(candidates), metric, max(e[0] for e in scored),
        )  # fmt: skip
    if spec.spread_grid:
        seen = {entry[1] for entry in scored}
        for _, base, described in sorted(scored, key=lambda entry: -entry[0])[: spec.retrain_top]:
            for users_factor in spec.spread_grid:
                for items_factor in spec.spread_grid:
                    fitted = shrink_sides(base, users_factor, items_factor)
                    if fitted in seen:  # factor 1, or a side already equal
                        continue
                    seen.add(fitted)
                    score(
                        fitted,
                        candidate=described["candidate"],
                        user_share=described["user_share"],
                        users_spread_factor=users_factor,
                        items_spread_factor=items_factor,
                    )
    scored.sort(key=lambda entry: -entry[0])
    folder.write_fit(record, [entry[2] for entry in scored])
    folder.write_fitted(record, fingerprint, [(entry[0], entry[1]) for entry in scored])
    logger.info("budget %g: first refit %s (%s %.4f)", budget, scored[0][2], metric, scored[0][0])
    return [ScoredSizes(entry[0], entry[1]) for entry in scored]


def _fit_fingerprint(
    spec: PipelineSpec, budget: float, candidates: list[SizeAssignment], value_type: str
) -> str:
    """What a fit's result depends on besides its folder's run (the evaluator's supernet and
    split): the candidates, the grids, the metric, the budget and the value type."""
    inputs = {
        "candidates": [sizes.key for sizes in candidates],
        "share_grid": list(spec.share_grid),
        "spread_grid": list(spec.spread_grid),
        "retrain_top": spec.retrain_top,
        "metric": spec.training.selection_metric,
        "budget": repr(budget),
        "value_type": value_type,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def flat_equal_sizes(
    spec: PipelineSpec, num_users: int, num_items: int, budget: float
) -> SizeAssignment:
    """Every entity an equal share of ``budget``'s parameters (sizes differ by at most one)."""
    max_size = spec.search.max_size
    total = parameter_budget(num_users + num_items, max_size, budget)
    return equal_sizes_within(num_users, num_items, max_size, total, spend_all=True)


def equal_split_candidate(
    spec: PipelineSpec,
    evaluator: QualityEvaluator | None,
    num_users: int,
    num_items: int,
    budget: float,
    folder: BudgetFolder,
) -> SizeAssignment:
    """Per-side equal sizes that spend the whole budget: the control a searched assignment has to
    beat, fitted as the search's assignments are.

    Without a share grid, every entity gets an equal share of ``parameter_budget`` (sizes differ
    by at most one, :func:`~ciess_core.sizes.equal_sizes_within`). With ``spec.share_grid``, that
    assignment is refitted at every users' share by :func:`fit_shares` (``equal-fit.json``), so
    that each side stays equal within itself and the evaluator picks the split between the sides.
    """
    flat = flat_equal_sizes(spec, num_users, num_items, budget)
    if not spec.share_grid:
        return flat
    if evaluator is None:
        raise ConfigError("the share fit of the equal candidate needs the evaluator")
    return fit_shares(spec, evaluator, budget, [flat], folder, "equal-fit")[0].sizes
