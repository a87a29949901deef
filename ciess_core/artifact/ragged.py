"""Ragged embedding tables: one row per entity, each as long as the entity's size (pure numpy).

A masked table keeps the first ``sizes[n]`` dimensions of row ``n`` and zeroes the rest, so it is
stored without loss as flat ``values`` (the kept prefixes, row after row) and ``offsets`` (row ``n``
is ``values[offsets[n]:offsets[n + 1]]``). The constructor of :class:`RaggedTable` runs the cheap
checks (dimensions, dtypes, lengths); :func:`validate_ragged` runs the O(n) ones and names the
offending row and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ArtifactError
from ciess_core.storage import offsets_from_sizes, size_dtype

VALUE_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True, eq=False)
class RaggedTable:
    """A ragged table of ``num_rows`` rows, row ``n`` of length ``sizes[n]``.

    Attributes:
        sizes: (num_rows,) integer, each in [1, max_size].
        offsets: (num_rows + 1,) int64, offsets[0] = 0, diff(offsets) = sizes.
        values: (Σ sizes,) float32 or float16, the rows' kept prefixes back to back.
        max_size: d_max, the width of the dense table.
        name: what the table is called in messages (e.g. ``tables/embedding``).
    """

    sizes: npt.NDArray[np.integer]
    offsets: npt.NDArray[np.int64]
    values: npt.NDArray[np.floating]
    max_size: int
    name: str = "table"

    def __post_init__(self) -> None:
        where = self.name
        if self.max_size < 1:
            raise ArtifactError(f"{where}: max_size must be >= 1, got {self.max_size}")
        for label, array, ndim in (
            ("sizes", self.sizes, 1),
            ("offsets", self.offsets, 1),
            ("values", self.values, 1),
        ):
            if not isinstance(array, np.ndarray) or array.ndim != ndim:
                shape = getattr(array, "shape", None)
                raise ArtifactError(f"{where}: {label} must be a 1-D array, got shape {shape}")
        if self.sizes.dtype.kind not in "iu":
            raise ArtifactError(f"{where}: sizes must be integers, got dtype {self.sizes.dtype}")
        if self.offsets.dtype != np.int64:
            raise ArtifactError(f"{where}: offsets must be int64, got dtype {self.offsets.dtype}")
        if self.values.dtype.name not in VALUE_DTYPES:
            raise ArtifactError(
                f"{where}: values must be one of {sorted(VALUE_DTYPES)}, got {self.values.dtype}"
            )
        if self.offsets.size != self.sizes.size + 1:
            raise ArtifactError(
                f"{where}: offsets has {self.offsets.size} entries, expected num_rows + 1 = "
                f"{self.sizes.size + 1}"
            )

    @property
    def num_rows(self) -> int:
        return int(self.sizes.size)

    @property
    def num_values(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Bytes of sizes, offsets and values together."""
        return int(self.sizes.nbytes + self.offsets.nbytes + self.values.nbytes)

    def row(self, index: int) -> npt.NDArray[np.floating]:
        """Row ``index``: (sizes[index],) values."""
        return self.values[self.offsets[index] : self.offsets[index + 1]]


def _prefix_mask(sizes: npt.NDArray[np.integer], width: int) -> npt.NDArray[np.bool_]:
    """(n, width) bool, row r true on its first sizes[r] columns."""
    return np.arange(width)[None, :] < np.asarray(sizes)[:, None]


def pack(
    dense: npt.ArrayLike,
    sizes: npt.ArrayLike,
    max_size: int | None = None,
    value_dtype: str = "float32",
    name: str = "table",
) -> RaggedTable:
    """Pack the kept prefixes of a masked dense table.

    Args:
        dense: (n, width) float, width <= max_size; entries past a row's size are dropped (for a
            masked table they are zero, so nothing is lost).
        sizes: (n,) integers in [1, max_size]; a size beyond ``width`` is an error.
        max_size: d_max (default ``width``).
        value_dtype: "float32" or "float16".
        name: the table's name in messages.

    Returns:
        The validated ragged table.
    """
    matrix = np.asarray(dense)
    if matrix.ndim != 2:
        raise ArtifactError(f"{name}: dense table must be 2-D, got shape {matrix.shape}")
    if value_dtype not in VALUE_DTYPES:
        raise ArtifactError(f"{name}: value dtype must be one of {sorted(VALUE_DTYPES)}")
    width = matrix.shape[1]
    full = width if max_size is None else max_size
    size_array = np.asarray(sizes)
    if size_array.shape != (matrix.shape[0],):
        raise ArtifactError(
            f"{name}: sizes has shape {size_array.shape}, expected ({matrix.shape[0]},)"
        )
    if size_array.size and (size_array.min() < 1 or size_array.max() > min(width, full)):
        raise ArtifactError(
            f"{name}: sizes must lie in [1, {min(width, full)}], "
            f"got range [{size_array.min()}, {size_array.max()}]"
        )
    values = matrix[_prefix_mask(size_array, width)].astype(VALUE_DTYPES[value_dtype])
    table = RaggedTable(
        sizes=size_array.astype(size_dtype(full)),
        offsets=offsets_from_sizes(size_array),
        values=values,
        max_size=full,
        name=name,
    )
    validate_ragged(table)
    return table


def unpack(
    table: RaggedTable,
    width: int | None = None,
    rows: npt.NDArray[np.integer] | None = None,
    dtype: type[np.floating] = np.float32,
) -> npt.NDArray[np.floating]:
    """The zero-padded dense table, or some of its rows.

    Args:
        table: a validated ragged table.
        width: columns of the result, at least the largest size among ``rows`` (default: that
            largest size).
        rows: (m,) row indices (default all rows, in order).
        dtype: the result's float type.

    Returns:
        (m, width) array; row i holds ``table.row(rows[i])`` then zeros.
    """
    if rows is None:
        sizes = table.sizes.astype(np.int64)
        values = table.values
    else:
        sizes = table.sizes[rows].astype(np.int64)
        starts = table.offsets[rows]
        # Positions of every kept value of the chosen rows, row after row.
        within = np.arange(int(sizes.sum())) - np.repeat(offsets_from_sizes(sizes)[:-1], sizes)
        values = table.values[np.repeat(starts, sizes) + within]
    widest = int(sizes.max()) if sizes.size else 0
    columns = widest if width is None else width
    if columns < widest:
        raise ArtifactError(f"{table.name}: cannot unpack rows of size {widest} into {columns}")
    dense = np.zeros((sizes.size, columns), dtype=dtype)
    dense[_prefix_mask(sizes, columns)] = values
    return dense


MAX_ABS_VALUE = 1e4
"""Largest embedding value an artifact may store. Trained embeddings stay within a few units;
products of values near float32's range (e.g. 3e30) overflow to inf in the scores."""


def validate_ragged(table: RaggedTable) -> None:
    """Check every invariant of ``table``; raise :class:`ArtifactError` naming the broken one.

    Invariants: offsets[0] = 0; offsets non-decreasing; offsets[-1] = len(values);
    diff(offsets) = sizes; sizes in [1, max_size]; values finite and at most
    :data:`MAX_ABS_VALUE` in magnitude.
    """
    where, offsets, sizes = table.name, table.offsets, table.sizes
    if offsets[0] != 0:
        raise ArtifactError(f"{where}: offsets[0] must be 0, got {offsets[0]}")
    steps = np.diff(offsets)
    if steps.size and steps.min() < 0:
        row = int(np.argmax(steps < 0))
        raise ArtifactError(
            f"{where}: offsets must be non-decreasing, but offsets[{row + 1}] = "
            f"{offsets[row + 1]} < offsets[{row}] = {offsets[row]}"
        )
    if offsets[-1] != table.values.size:
        raise ArtifactError(
            f"{where}: offsets[-1] = {offsets[-1]} but values holds {table.values.size} entries"
        )
    if not np.array_equal(steps, sizes):
        row = int(np.argmax(steps != sizes))
        raise ArtifactError(
            f"{where}: row {row} spans offsets[{row}..{row + 1}] = {steps[row]} values but its "
            f"size is {sizes[row]}"
        )
    if sizes.size and (sizes.min() < 1 or sizes.max() > table.max_size):
        raise ArtifactError(
            f"{where}: sizes must lie in [1, {table.max_size}], "
            f"got range [{sizes.min()}, {sizes.max()}]"
        )
    if not np.all(np.isfinite(table.values)):
        position = int(np.argmax(~np.isfinite(table.values)))
        raise ArtifactError(f"{where}: values[{position}] is {table.values[position]}")
    magnitudes = np.abs(table.values)
    if magnitudes.size and magnitudes.max() > MAX_ABS_VALUE:
        position = int(np.argmax(magnitudes))
        raise ArtifactError(
            f"{where}: values[{position}] = {table.values[position]:.6g} exceeds the magnitude "
            f"bound {MAX_ABS_VALUE:g} ({int((magnitudes > MAX_ABS_VALUE).sum())} values do); "
            "scores computed from it would overflow"
        )
