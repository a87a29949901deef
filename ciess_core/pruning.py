"""Magnitude pruning, the baseline of the lightweight-embedding benchmark (Tran et al., 2024):
one dense model, the smallest |w| of each table zeroed, at least ``row_minimum`` values kept per
row, no retraining.

A pruned table is stored sparse, each row's kept values with their column indices: ``counts``
(one unsigned integer per row, one byte when d_max ≤ 255), ``columns`` (one per kept value, one
byte when d_max ≤ 256) and ``values`` (float32), as three ``.npy`` files. Its bytes count all
three, headers included, as :mod:`ciess_core.storage` counts a ragged store's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ConfigError
from ciess_core.storage import DENSE_DTYPE, largest_within, npy_bytes, size_dtype


def pruned_bytes(num_rows: int, kept: int, max_size: int, tables: int = 1) -> int:
    """Every stored byte of ``tables`` sparse tables of ``num_rows`` rows keeping ``kept``
    values each."""
    column_dtype = size_dtype(max(max_size - 1, 1))
    per_table = (
        npy_bytes(num_rows, size_dtype(max_size))
        + npy_bytes(kept, column_dtype)
        + npy_bytes(kept, DENSE_DTYPE)
    )
    return tables * per_table


def kept_within(byte_budget: int, num_rows: int, max_size: int, tables: int = 1) -> int:
    """The most values per table whose sparse stores take at most ``byte_budget`` bytes (-1:
    not even empty tables fit)."""
    return largest_within(
        byte_budget,
        num_rows * max_size,
        lambda kept: pruned_bytes(num_rows, kept, max_size, tables),
    )


def magnitude_mask(
    weight: npt.NDArray[np.floating], kept: int, row_minimum: int
) -> npt.NDArray[np.bool_]:
    """(n, d) mask keeping ``kept`` entries of ``weight``: every row's ``row_minimum`` largest
    magnitudes, then the largest magnitudes left over the whole table (ties: the lower flat
    index first)."""
    rows, width = weight.shape
    if not 0 <= row_minimum <= width:
        raise ConfigError(f"row_minimum must lie in [0, {width}], got {row_minimum}")
    if not rows * row_minimum <= kept <= rows * width:
        raise ConfigError(
            f"kept must lie in [{rows * row_minimum}, {rows * width}] for {rows} rows keeping "
            f"at least {row_minimum} each, got {kept}"
        )
    magnitude = np.abs(np.asarray(weight, dtype=np.float64))
    mask = np.zeros((rows, width), dtype=bool)
    if row_minimum:
        per_row = np.argsort(-magnitude, axis=1, kind="stable")[:, :row_minimum]
        np.put_along_axis(mask, per_row, True, axis=1)
    rest = kept - int(mask.sum())
    if rest:
        candidates = np.flatnonzero(~mask.reshape(-1))
        order = np.argsort(-magnitude.reshape(-1)[candidates], kind="stable")[:rest]
        mask.reshape(-1)[candidates[order]] = True
    return mask
