"""A budget as the admin gives it (sparsity, parameters or bytes) as a target sparsity (pure).

Accounting, for N = users + items entities, d_max, T ragged tables (two for NCF, one otherwise):
parameters = T · Σ sizes; bytes = every stored byte of the T tables' files (values, the per-row
scales of int8 and int4, the sizes), as :func:`ciess_core.storage.stored_bytes` counts them, in
the served model's value type. A budget must leave every entity at least one dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ciess_core.artifact.manifest import Manifest
from ciess_core.sizes import highest_sparsity
from ciess_core.storage import largest_within, smallest_store, stored_bytes
from service.errors import BudgetError
from service.schemas import MAX_BUDGET_NUMBER

# How a served model's sizes were chosen (its manifest's size_scheme) as the job method that
# chooses them so: full width is equal sizes at d_max.
_METHOD_OF_SCHEME = {"equal": "equal", "full": "equal", "ciess": "search"}


@dataclass(frozen=True)
class Budget:
    """What a job must meet.

    Attributes:
        target_sparsity: c, the fraction of the dense tables pruned (at least).
        max_parameters: T · Σ sizes allowed.
        requested: the admin's own words, e.g. {"max_bytes": 100000}.
    """

    target_sparsity: float
    max_parameters: int
    requested: dict[str, float]


def table_bytes(manifest: Manifest, parameters: int) -> int:
    """Stored bytes of the model's tables holding ``parameters`` values in all, in its value
    type (the files' sizes)."""
    tables = len(manifest.tables)
    per_table = parameters // tables
    return stored_bytes(
        manifest.num_entities, per_table, manifest.value_dtype, manifest.max_size, tables
    )


def _parameters_within(manifest: Manifest, max_bytes: int) -> int:
    """The most parameters (a multiple of the table count) whose tables take at most
    ``max_bytes`` in the model's value type (below one dimension per entity, or -1, where they
    cannot hold that: the caller keeps at least one)."""
    tables = len(manifest.tables)
    per_table = largest_within(
        max_bytes,
        manifest.num_entities * manifest.max_size,
        lambda values: table_bytes(manifest, values * tables),
    )
    return per_table * tables


def resolve_budget(
    manifest: Manifest,
    target_sparsity: float | None = None,
    max_parameters: int | None = None,
    max_bytes: int | None = None,
    any_value_type: bool = False,
) -> Budget:
    """The budget given by exactly one of the three forms, for the model ``manifest`` describes.

    With ``any_value_type`` (a job whose byte planner chooses the value type: method
    ``search``), ``max_bytes`` may lie below one dimension per entity in the served model's type
    down to the smallest store of any type (:func:`~ciess_core.storage.smallest_store`); the
    budget is then one dimension per entity, and the job plans by the bytes.

    Raises:
        BudgetError: none or several forms given, or a budget that cannot be met (out of range,
            or less than one dimension per entity).
    """
    given = {
        name: value
        for name, value in (
            ("target_sparsity", target_sparsity),
            ("max_parameters", max_parameters),
            ("max_bytes", max_bytes),
        )
        if value is not None
    }
    if len(given) != 1:
        raise BudgetError(
            "give exactly one of target_sparsity, max_parameters or max_bytes, "
            f"got {sorted(given) or 'none'}"
        )
    for name in ("max_parameters", "max_bytes"):
        if name in given and given[name] > MAX_BUDGET_NUMBER:
            raise BudgetError(f"{name} must be at most {MAX_BUDGET_NUMBER} (2**63 - 1)")
    tables, entities, width = len(manifest.tables), manifest.num_entities, manifest.max_size
    dense = tables * entities * width
    minimum = tables * entities  # one dimension per entity
    if target_sparsity is not None:
        highest = highest_sparsity(width)
        if not (math.isfinite(target_sparsity) and 0.0 <= target_sparsity <= highest):
            raise BudgetError(
                f"target_sparsity must lie in [0, {highest:.6f}]: every one of the {entities} "
                f"users and items keeps at least 1 of {width} dimensions; got {target_sparsity}"
            )
        parameters = math.floor((1.0 - target_sparsity) * dense + 1e-9)
    elif max_parameters is not None:
        parameters = int(max_parameters)
        if parameters < minimum:
            raise BudgetError(
                f"max_parameters {parameters} is below the minimum {minimum}: {entities} users "
                f"and items × {tables} table(s) need at least 1 dimension each"
            )
    else:
        max_bytes = int(given["max_bytes"])
        # smallest_store weighs the served type too: every type's one dimension per entity
        least, value_type = (
            smallest_store(entities, width, tables)
            if any_value_type
            else (table_bytes(manifest, minimum), manifest.value_dtype)
        )
        if max_bytes < least:
            raise BudgetError(
                f"max_bytes {max_bytes} is below the smallest model, {least} bytes: {entities} "
                f"users and items × {tables} table(s) at 1 dimension of {value_type} each, "
                "with their sizes (and scales)"
            )
        parameters = max(minimum, _parameters_within(manifest, max_bytes))
    parameters = min(parameters, dense)
    sparsity = 1.0 - parameters / dense
    # Float rounding must never let the sparsity's parameter count exceed the budget.
    while math.floor((1.0 - sparsity) * dense + 1e-9) > parameters:
        sparsity = math.nextafter(sparsity, 1.0)
    return Budget(sparsity, parameters, {k: float(v) for k, v in given.items()})


def served_budget(manifest: Manifest) -> Budget:
    """The budget the model ``manifest`` describes was made for (its asked sparsity; a model
    made without one, by its achieved sparsity), resolved as :func:`resolve_budget` would."""
    asked = manifest.target_sparsity
    return resolve_budget(manifest, manifest.achieved_sparsity if asked is None else asked)


def sizing_method(manifest: Manifest) -> str | None:
    """The job method ("equal", "search") that sized the model, when its manifest says."""
    return _METHOD_OF_SCHEME.get(str(manifest.dataset.get("size_scheme")))
