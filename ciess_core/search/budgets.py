"""The pipeline's two kinds of budget: a target sparsity (a share of the float32 parameters
pruned, the paper's) and a byte budget (every stored byte of the embedding stores, the product's).

A byte budget is kept as a ratio of the dense float32 bytes of the embedding tables
(:func:`~ciess_core.storage.dense_fp32_bytes`), so that it reads the same on every dataset;
``--budget-bytes`` is turned into a ratio once the data's shape is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ciess_core.errors import ConfigError
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import dense_fp32_bytes, parameters_within


@dataclass(frozen=True)
class ByteBudget:
    """At most ``ratio`` × the dense float32 bytes of the embedding tables, every stored byte
    (values, scales, sizes, file headers) counted."""

    ratio: float

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"a byte ratio must lie in (0, 1], got {self.ratio}")

    @classmethod
    def of_bytes(cls, budget: int, num_rows: int, max_size: int, tables: int) -> ByteBudget:
        """The budget of ``budget`` bytes for ``tables`` tables of ``num_rows`` rows."""
        dense = dense_fp32_bytes(num_rows, max_size, tables)
        if not 0 < budget <= dense:
            raise ConfigError(
                f"a byte budget must lie in [1, {dense}] (the dense float32 tables' bytes), "
                f"got {budget}"
            )
        return cls(budget / dense)

    def allowed_bytes(self, num_rows: int, max_size: int, tables: int) -> int:
        """The bytes this budget allows ``tables`` tables of ``num_rows`` rows."""
        return math.floor(self.ratio * dense_fp32_bytes(num_rows, max_size, tables) + 1e-6)

    def parameters(self, value_type: str, num_rows: int, max_size: int, tables: int) -> int:
        """The most values per table that ``value_type`` stores within this budget (-1: none)."""
        allowed = self.allowed_bytes(num_rows, max_size, tables)
        return parameters_within(allowed, num_rows, value_type, max_size, tables)

    @property
    def label(self) -> str:
        """How folders, timings and summaries name it: ``bytes-<ratio>``, the ratio in six
        significant digits (``bytes-0.05``) when they give it back exactly, else in all the
        digits it needs: two budgets a few bytes apart get folders of their own."""
        short = f"{self.ratio:g}"
        return f"bytes-{short if float(short) == self.ratio else repr(self.ratio)}"


Budget = float | ByteBudget
"""A target sparsity or a byte budget."""


def budget_label(budget: Budget) -> str:
    """``0.9`` for a sparsity, ``bytes-0.05`` for a byte budget."""
    return budget.label if isinstance(budget, ByteBudget) else f"{budget:g}"


def check_within(budget: Budget, sizes: SizeAssignment, value_type: str, tables: int) -> None:
    """Raise ConfigError when ``sizes`` stored as ``value_type`` in ``tables`` tables exceed
    ``budget`` (a bug, never a choice: every candidate is planned within its budget)."""
    if isinstance(budget, ByteBudget):
        used = sizes.bytes(value_type, tables)
        allowed = budget.allowed_bytes(sizes.num_entities, sizes.max_size, tables)
        if used > allowed:
            raise ConfigError(f"{budget.label} exceeded: {used} bytes stored, {allowed} allowed")
    elif sizes.sparsity < budget - 1e-12:
        raise ConfigError(f"budget {budget} exceeded by the chosen assignment")


def sparsity_of(parameters: int, num_rows: int, max_size: int) -> float:
    """The sparsity of ``parameters`` kept values, such that
    :func:`~ciess_core.sizes.parameter_budget` gives ``parameters`` back."""
    return 1.0 - parameters / (num_rows * max_size)
