"""Budgets in the admin's three forms, converted to a target sparsity (pure)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ciess_core.artifact.reader import read_manifest
from ciess_core.storage import smallest_store
from service.errors import BudgetError
from service.jobs.budget import resolve_budget, served_budget, sizing_method, table_bytes
from tests.service.conftest import BaseArtifact


@pytest.fixture(scope="module")
def manifest(base_model: BaseArtifact):  # type: ignore[no-untyped-def]
    return read_manifest(Path(base_model.artifact))


def test_target_sparsity_gives_the_parameter_count(manifest) -> None:  # type: ignore[no-untyped-def]
    budget = resolve_budget(manifest, target_sparsity=0.75)
    assert budget.max_parameters == 200 * 16 // 4
    assert budget.target_sparsity == 0.75
    assert budget.requested == {"target_sparsity": 0.75}


def test_parameters_and_bytes_round_down_to_a_feasible_sparsity(manifest) -> None:  # type: ignore[no-untyped-def]
    by_parameters = resolve_budget(manifest, max_parameters=1001)
    assert by_parameters.max_parameters == 1001
    assert math.floor((1 - by_parameters.target_sparsity) * 3200 + 1e-9) <= 1001
    limit = table_bytes(manifest, 1000) + 3  # 3 bytes: less than one more float32
    by_bytes = resolve_budget(manifest, max_bytes=limit)
    assert by_bytes.max_parameters == 1000
    assert table_bytes(manifest, by_bytes.max_parameters) <= limit
    # The files of a store of 1000 float32 values over 200 entities: values and sizes.
    assert table_bytes(manifest, 1000) == (128 + 1000 * 4) + (128 + 200)
    assert resolve_budget(manifest, max_parameters=10**9).target_sparsity == 0.0


@pytest.mark.parametrize(
    ("arguments", "phrase"),
    [
        ({"target_sparsity": 1 - 1 / 16 + 1e-6}, "at least 1 of 16"),
        ({"target_sparsity": -0.1}, "must lie in"),
        ({"target_sparsity": float("nan")}, "must lie in"),
        ({"max_parameters": 199}, "below the minimum 200"),
        ({"max_bytes": 10}, "below the smallest model"),
        ({}, "exactly one"),
        ({"target_sparsity": 0.5, "max_parameters": 1000}, "exactly one"),
        ({"target_sparsity": float("inf")}, "must lie in"),
        ({"max_parameters": 10**400}, "max_parameters must be at most"),
        ({"max_bytes": 10**400}, "max_bytes must be at most"),
    ],
)
def test_impossible_budgets_say_why(manifest, arguments, phrase) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BudgetError, match=phrase):
        resolve_budget(manifest, **arguments)


def test_the_minimum_budget_is_one_dimension_each(manifest) -> None:  # type: ignore[no-untyped-def]
    budget = resolve_budget(manifest, max_parameters=200)
    assert budget.target_sparsity == pytest.approx(1 - 1 / 16)


def test_the_largest_budget_number_is_the_dense_model(manifest) -> None:  # type: ignore[no-untyped-def]
    budget = resolve_budget(manifest, max_bytes=2**63 - 1)
    assert budget.target_sparsity == 0.0 and budget.max_parameters == 3200
    assert budget.requested == {"max_bytes": float(2**63 - 1)}


def test_the_served_budget_of_a_full_size_model_is_every_parameter(manifest) -> None:  # type: ignore[no-untyped-def]
    assert manifest.target_sparsity is None
    assert served_budget(manifest).max_parameters == 200 * 16
    assert sizing_method(manifest) == "equal"  # full width: equal sizes at d_max


def test_bytes_below_the_served_types_smallest_model_are_the_byte_planners(manifest) -> None:  # type: ignore[no-untyped-def]
    """One dimension per entity takes 1,256 bytes in the served float32, 686 in int4-table: a
    budget between the two is met only by a job that chooses the value type."""
    entities, tables = manifest.num_entities, len(manifest.tables)
    served_least = table_bytes(manifest, tables * entities)
    least, value_type = smallest_store(entities, manifest.max_size, tables)
    assert (served_least, least, value_type) == (1256, 686, "int4-table")
    between = (least + served_least) // 2
    with pytest.raises(BudgetError, match=r"below the smallest model, 1256 bytes: .* of float32"):
        resolve_budget(manifest, max_bytes=between)
    budget = resolve_budget(manifest, max_bytes=between, any_value_type=True)
    assert budget.max_parameters == entities * tables
    assert budget.target_sparsity == pytest.approx(1 - 1 / 16)
    with pytest.raises(BudgetError, match=r"below the smallest model, 686 bytes: .* of int4-table"):
        resolve_budget(manifest, max_bytes=least - 1, any_value_type=True)
    # Where the served type holds the bytes, both read them alike.
    assert resolve_budget(manifest, max_bytes=2000, any_value_type=True) == resolve_budget(
        manifest, max_bytes=2000
    )
