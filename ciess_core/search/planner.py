"""The byte planner: for a byte budget, which value type and which sizes to retrain.

Sizes and precision multiply: a byte budget leaves each value type
(:data:`~ciess_core.storage.VALUE_TYPES`) its own parameter budget, the most values whose stores
fit (:meth:`~ciess_core.search.budgets.ByteBudget.parameters`): float32 few, int4 eight times as
many. For every type that fits at least one value per entity, the planner takes the search's
assignments at that parameter budget (one search serves them all: the pool keeps the best at
every planned sparsity, :func:`search_budgets`) and the per-side equal sizes, refits them
(:func:`~ciess_core.search.fit.fit_shares`), and scores every variant on held-out validation by
the evaluator with the tables stored as that type (simulated quantisation). The best searched
candidates (``retrain_top``) and the best equal one, over every type, go on to be retrained with
their value type. Beside them, where its tables fit, the trained full model itself stored as each
type that fits (post-training quantisation; no retraining, :func:`full_candidates`). The
pipeline's pick on validation chooses among them all. No candidate can
exceed the budget: its sizes keep at most its type's parameter budget, and the plan checks its
bytes again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ciess_core.errors import ConfigError
from ciess_core.search.budgets import ByteBudget, sparsity_of
from ciess_core.search.evaluators import QualityEvaluator
from ciess_core.search.files import BudgetFolder
from ciess_core.search.fit import ScoredSizes, fit_shares, flat_equal_sizes
from ciess_core.search.pool import AssignmentPool
from ciess_core.search.retraining import FULL_KIND, Candidate
from ciess_core.search.teachers import keeps_phase_teachers
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import VALUE_TYPES, dense_fp32_bytes, parameters_within, smallest_store

if TYPE_CHECKING:
    from ciess_core.search.pipeline import PipelineSpec

logger = logging.getLogger(__name__)


def planned_sparsities(
    spec: PipelineSpec, budget: ByteBudget, num_entities: int
) -> dict[str, float]:
    """Each value type that fits at least one value per entity within ``budget``, and the
    sparsity of the most values it can keep."""
    max_size, tables = spec.search.max_size, spec.backbone_tables
    planned = {}
    for value_type in VALUE_TYPES:
        parameters = budget.parameters(value_type, num_entities, max_size, tables)
        if parameters >= num_entities:
            planned[value_type] = sparsity_of(parameters, num_entities, max_size)
    return planned


def check_byte_budgets(spec: PipelineSpec, num_entities: int) -> None:
    """Refuse, before any training, a byte budget of ``spec`` under which no value type keeps
    one value per entity (:func:`planned_sparsities` would plan nothing).

    Raises:
        ConfigError: naming each such budget, its bytes and the smallest store's.
    """
    max_size, tables = spec.search.max_size, spec.backbone_tables
    dense = dense_fp32_bytes(num_entities, max_size, tables)
    too_small = [
        f"{ratio:g} ({ByteBudget(ratio).allowed_bytes(num_entities, max_size, tables):,} bytes)"
        for ratio in spec.byte_ratios
        if not planned_sparsities(spec, ByteBudget(ratio), num_entities)
    ]
    if too_small:
        least, value_type = smallest_store(num_entities, max_size, tables)
        raise ConfigError(
            f"byte budget {', '.join(too_small)} cannot keep one value for each of the "
            f"{num_entities:,} users and items: the smallest store, {value_type} with one value "
            f"a row, takes {least:,} bytes, {least / dense:.5f} of the dense float32 tables' "
            f"{dense:,}"
        )


def search_budgets(spec: PipelineSpec, num_entities: int) -> tuple[float, ...]:
    """The search's budgets (its pool keeps the best assignments at each): ``spec.search``'s and
    every sparsity that a byte budget of ``spec.byte_ratios`` plans, without repeats."""
    budgets = list(spec.search.budgets)
    for ratio in spec.byte_ratios:
        for sparsity in planned_sparsities(spec, ByteBudget(ratio), num_entities).values():
            if all(abs(sparsity - known) > 1e-12 for known in budgets):
                budgets.append(sparsity)
    return tuple(budgets)


EQUAL_SIZE_RUNS = 8
"""Runs of equal sizes a per-side equal assignment's budget leaves room for: the share fit's
rounding leaves each side two or three distinct sizes, gathered larger first
(:func:`gather_sides`); eight runs take 64 bytes."""


def _equal_candidate(
    spec: PipelineSpec,
    evaluator: QualityEvaluator,
    budget: ByteBudget,
    value_type: str,
    sparsity: float,
    num_users: int,
    num_items: int,
    folder: BudgetFolder,
) -> ScoredSizes:
    """The best per-side equal sizes of ``value_type`` within ``budget``. Their sizes are
    stored as a few runs, not a byte per row, so they get the values those bytes hold; should
    a fit spread them over more runs than that leaves room for, they fall back to the
    parameters of one size per row (``sparsity``)."""
    num_entities, max_size = num_users + num_items, spec.search.max_size
    allowed = budget.allowed_bytes(num_entities, max_size, spec.backbone_tables)
    parameters = parameters_within(
        allowed, num_entities, value_type, max_size, spec.backbone_tables, EQUAL_SIZE_RUNS
    )
    record = f"equal-fit-{value_type}"
    roomier = sparsity_of(min(parameters, num_entities * max_size), num_entities, max_size)
    for target in dict.fromkeys((roomier, sparsity)):
        flat = flat_equal_sizes(spec, num_users, num_items, target)
        best = fit_shares(spec, evaluator, target, [flat], folder, record, value_type)[0]
        gathered = gather_sides(best.sizes)
        if gathered != best.sizes:  # the same sizes, each side's larger ones first: fewer runs
            score = evaluator.evaluate(gathered, value_type).metrics[spec.training.selection_metric]
            best = ScoredSizes(score, gathered)
        if best.sizes.bytes(value_type, spec.backbone_tables) <= allowed:
            return best
    raise ConfigError(f"{budget.label}: no per-side equal sizes of {value_type} fit")


def gather_sides(sizes: SizeAssignment) -> SizeAssignment:
    """``sizes`` with each side's sizes in descending order: the same sizes per side, in as few
    runs as they allow (per-side equal sizes, which differ by at most one: two per side)."""
    users = np.sort(sizes.user_sizes)[::-1]
    items = np.sort(sizes.item_sizes)[::-1]
    return SizeAssignment(users, items, sizes.max_size)


def full_candidates(
    spec: PipelineSpec, budget: ByteBudget, num_users: int, num_items: int
) -> list[Candidate]:
    """The full model as a candidate in each value type whose full-size stores fit ``budget``.
    Offered when the pipeline keeps a full model per phase (distillation from phase teachers,
    the shipped recipe): those are the candidate's models, so it needs no training."""
    if not keeps_phase_teachers(spec):
        return []
    tables, max_size = spec.backbone_tables, spec.search.max_size
    allowed = budget.allowed_bytes(num_users + num_items, max_size, tables)
    full = SizeAssignment.full(num_users, num_items, max_size)
    return [
        Candidate(full, FULL_KIND, value_type)
        for value_type in VALUE_TYPES
        if full.bytes(value_type, tables) <= allowed
    ]


def plan_candidates(
    spec: PipelineSpec,
    evaluator: QualityEvaluator,
    pool: AssignmentPool,
    budget: ByteBudget,
    num_users: int,
    num_items: int,
    folder: BudgetFolder,
) -> list[Candidate]:
    """The candidates to retrain for ``budget``, best validation score first, then the full
    model's (:func:`full_candidates`); writes
    ``plan.json`` in ``folder`` (every value type's room and its best scores)."""
    num_entities = num_users + num_items
    max_size, tables = spec.search.max_size, spec.backbone_tables
    allowed = budget.allowed_bytes(num_entities, max_size, tables)
    planned = planned_sparsities(spec, budget, num_entities)
    if not planned:
        raise ConfigError(
            f"a byte budget of {allowed} bytes (ratio {budget.ratio:g}) cannot store one value "
            f"per user and item in any value type ({list(VALUE_TYPES)})"
        )
    metric = spec.training.selection_metric
    searched: list[tuple[float, Candidate]] = []
    equal: list[tuple[float, Candidate]] = []
    plan: list[dict[str, Any]] = []
    for value_type, sparsity in planned.items():
        fitted = fit_shares(
            spec,
            evaluator,
            sparsity,
            pool.selection(sparsity),
            folder,
            f"fit-{value_type}",
            value_type,
        )
        searched += [
            (entry.score, Candidate(entry.sizes, "search", value_type))
            for entry in fitted[: spec.retrain_top]
        ]
        row: dict[str, Any] = {
            "value_type": value_type,
            "sparsity": sparsity,
            "parameters": budget.parameters(value_type, num_entities, max_size, tables),
            f"search_valid_{metric}": fitted[0].score,
        }
        if spec.equal_candidate:
            best = _equal_candidate(spec, evaluator, budget, value_type, sparsity, num_users,
                                    num_items, folder)  # fmt: skip
            equal.append((best.score, Candidate(best.sizes, "equal", value_type)))
            row[f"equal_valid_{metric}"] = best.score
            row["equal_parameters"] = best.sizes.parameters
        plan.append(row)
    chosen = sorted(searched, key=lambda entry: -entry[0])[: spec.retrain_top]
    chosen += sorted(equal, key=lambda entry: -entry[0])[:1]
    chosen.sort(key=lambda entry: -entry[0])
    kept = [(float("nan"), c) for c in full_candidates(spec, budget, num_users, num_items)]
    chosen += kept  # scored on validation by the full model itself, not by the supernet
    for _, candidate in chosen:
        used = candidate.sizes.bytes(candidate.value_type, tables)
        if used > allowed:
            raise ConfigError(f"planned candidate takes {used} bytes over the budget {allowed}")
    folder.write_fit(
        "plan",
        [
            {"budget_bytes": allowed, "byte_ratio": budget.ratio, "value_types": plan},
            *[
                {
                    "kind": candidate.kind,
                    "value_type": candidate.value_type,
                    "bytes": candidate.sizes.bytes(candidate.value_type, tables),
                    f"valid_{metric}": None if np.isnan(score) else score,
                }
                for score, candidate in chosen
            ],
        ],
    )
    logger.info(
        "%s: retraining %s",
        budget.label,
        ", ".join(
            f"{c.kind} {c.value_type}" + ("" if np.isnan(s) else f" ({s:.4f})") for s, c in chosen
        ),
    )
    return [candidate for _, candidate in chosen]
