"""A ragged table as the artifact stores it: compact sizes, typed values, per-row scales (pure).

:mod:`ciess_core.storage` defines the layout and the quantisation; this module holds one stored
table, checks every rule of its files with a message naming the file and the rule, and converts
between it and the float :class:`~ciess_core.artifact.ragged.RaggedTable` the scorer reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ciess_core.artifact.ragged import (
    MAX_ABS_VALUE,
    RaggedTable,
    validate_ragged,
)
from ciess_core.errors import ArtifactError
from ciess_core.storage import (
    RUN_DTYPE,
    SCALE_DTYPE,
    ValueType,
    count_runs,
    dequantise,
    offsets_from_sizes,
    quantise,
    runs_pay,
    size_dtype,
    size_runs,
    unpack_int4,
)


def store_files(name: str, value_type: str, size_runs: bool = False) -> dict[str, str]:
    """Role ("sizes", "values", and "scales" for the integer types) -> file of table ``name``;
    with ``size_runs`` its sizes are stored as runs (``size_runs.npy``)."""
    sizes = "size_runs.npy" if size_runs else "sizes.npy"
    files = {"sizes": f"tables/{name}/{sizes}", "values": f"tables/{name}/values.npy"}
    if ValueType(value_type).quantised:
        files["scales"] = f"tables/{name}/scales.npy"
    return files


@dataclass(frozen=True, eq=False)
class StoredTable:
    """One table's files in memory.

    Attributes:
        name: the table's name (``embedding``, ``gmf``, ``mlp``).
        value_type: one of :data:`ciess_core.storage.VALUE_TYPES`.
        max_size: d_max.
        sizes: (rows,) unsigned, :func:`~ciess_core.storage.size_dtype` of ``max_size``.
        values: the values file's array (int4: two codes per byte).
        scales: float16 for the integer types (one per row, or one), else None.
        size_runs: the sizes are written as runs (:func:`~ciess_core.storage.size_runs`).
    """

    name: str
    value_type: str
    max_size: int
    sizes: npt.NDArray[np.generic]
    values: npt.NDArray[np.generic]
    scales: npt.NDArray[np.generic] | None = None
    size_runs: bool = False

    @property
    def files(self) -> dict[str, str]:
        return store_files(self.name, self.value_type, self.size_runs)

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """File role -> array, as written."""
        sizes = size_runs(self.sizes) if self.size_runs else self.sizes
        arrays = {"sizes": sizes, "values": self.values}
        if self.scales is not None:
            arrays["scales"] = self.scales
        return arrays

    def validate(self, num_rows: int) -> None:
        """Check every rule of the stored files; :class:`ArtifactError` names the broken one."""
        kind = ValueType(self.value_type)
        files = self.files
        sizes, values = self.sizes, self.values
        expected = size_dtype(self.max_size)
        if sizes.ndim != 1 or sizes.dtype != expected:
            raise ArtifactError(
                f"{files['sizes']}: expected a 1-D {expected} array (sizes up to "
                f"{self.max_size}), got {sizes.dtype} of shape {sizes.shape}"
            )
        if sizes.size != num_rows:
            raise ArtifactError(f"{files['sizes']}: expected {num_rows} sizes, got {sizes.size}")
        counts = sizes.astype(np.int64)
        if counts.size and (int(counts.min()) < 1 or int(counts.max()) > self.max_size):
            row = int(np.argmax((counts < 1) | (counts > self.max_size)))
            raise ArtifactError(
                f"{files['sizes']}: sizes must lie in [1, {self.max_size}], row {row} has "
                f"{int(counts[row])}"
            )
        if values.ndim != 1 or values.dtype != kind.storage_dtype:
            raise ArtifactError(
                f"{files['values']}: expected a 1-D {kind.storage_dtype} array for "
                f"{self.value_type} values, got {values.dtype} of shape {values.shape}"
            )
        total = int(counts.sum())
        length = kind.stored_length(total)
        if values.size != length:
            what = "bytes of packed int4 codes" if kind.packed else "values"
            raise ArtifactError(
                f"{files['values']}: the sizes add up to {total} values, which take {length} "
                f"{what}; the file holds {values.size}"
            )
        if kind.quantised:
            self._validate_codes(total)
            self._validate_scales(num_rows)

    def _validate_codes(self, total: int) -> None:
        kind, file = ValueType(self.value_type), self.files["values"]
        if kind.packed:
            if total % 2 and self.values.size and int(self.values[-1]) >> 4:
                raise ArtifactError(
                    f"{file}: {total} codes leave the last byte's high nibble unused; it must be 0"
                )
            codes = unpack_int4(self.values, total)
        else:
            codes = np.asarray(self.values)
        if codes.size and int(np.abs(codes.astype(np.int16)).max()) > kind.levels:
            position = int(np.argmax(np.abs(codes.astype(np.int16)) > kind.levels))
            raise ArtifactError(
                f"{file}: {self.value_type} codes must lie in [-{kind.levels}, {kind.levels}], "
                f"value {position} is {int(codes[position])}"
            )

    def _validate_scales(self, num_rows: int) -> None:
        kind, file, scales = ValueType(self.value_type), self.files["scales"], self.scales
        expected = kind.scale_count(num_rows)
        per = "for the table" if kind.table_scaled else f"per row ({num_rows})"
        if scales is None:
            raise ArtifactError(f"{file}: missing ({self.value_type} values need a scale {per})")
        if scales.ndim != 1 or scales.dtype != SCALE_DTYPE:
            raise ArtifactError(
                f"{file}: expected a 1-D float16 array, got {scales.dtype} of shape {scales.shape}"
            )
        if scales.size != expected:
            raise ArtifactError(f"{file}: expected one scale {per}, got {scales.size}")
        as_float = scales.astype(np.float32)
        bad = ~np.isfinite(as_float) | (as_float < 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise ArtifactError(f"{file}: scale of row {row} is {as_float[row]} (must be ≥ 0)")
        largest = as_float * kind.levels
        if largest.size and float(largest.max()) > MAX_ABS_VALUE:
            row = int(np.argmax(largest))
            raise ArtifactError(
                f"{file}: row {row}'s scale {as_float[row]:.6g} makes values up to "
                f"{largest[row]:.6g}, over the magnitude bound {MAX_ABS_VALUE:g}"
            )

    def to_ragged(self) -> RaggedTable:
        """The float table (integer types decoded to float32, float16 kept), validated."""
        sizes = self.sizes.astype(np.int64)
        values: npt.NDArray[np.floating]
        if ValueType(self.value_type).quantised:
            values = dequantise(self.values, self.scales, sizes, self.value_type)  # type: ignore[arg-type]
        else:
            values = self.values  # type: ignore[assignment]
        table = RaggedTable(
            sizes=self.sizes,  # type: ignore[arg-type]
            offsets=offsets_from_sizes(sizes),
            values=values,
            max_size=self.max_size,
            name=f"tables/{self.name}",
        )
        validate_ragged(table)
        return table


def store_table(table: RaggedTable, name: str, value_type: str) -> StoredTable:
    """``table`` (float values) stored as ``value_type``, its sizes as runs when that is
    smaller."""
    sizes = table.sizes.astype(np.int64)
    values, scales = quantise(table.values.astype(np.float32), sizes, value_type)
    return StoredTable(
        name=name,
        value_type=value_type,
        max_size=table.max_size,
        sizes=sizes.astype(size_dtype(table.max_size)),
        values=values,
        scales=scales,
        size_runs=runs_pay(sizes.size, table.max_size, count_runs(sizes)),
    )


def sizes_from_runs(
    runs: npt.NDArray[np.generic], num_rows: int, max_size: int, file: str
) -> npt.NDArray[np.generic]:
    """The per-row sizes of a ``size_runs`` file, every rule checked (the file named)."""
    if runs.ndim != 1 or runs.dtype != RUN_DTYPE:
        raise ArtifactError(
            f"{file}: expected a 1-D uint32 array of runs, got {runs.dtype} of shape {runs.shape}"
        )
    if runs.size % 2:
        raise ArtifactError(f"{file}: runs come in (size, count) pairs, got {runs.size} entries")
    pairs = runs.astype(np.int64).reshape(-1, 2)
    sizes, counts = pairs[:, 0], pairs[:, 1]
    bad = (sizes < 1) | (sizes > max_size)
    if bad.any():
        run = int(np.argmax(bad))
        raise ArtifactError(
            f"{file}: sizes must lie in [1, {max_size}], run {run} has {int(sizes[run])}"
        )
    if pairs.size and int(counts.min()) < 1:
        raise ArtifactError(f"{file}: run {int(np.argmin(counts))} repeats its size 0 times")
    if int(counts.sum()) != num_rows:
        raise ArtifactError(f"{file}: the runs cover {int(counts.sum())} rows, not {num_rows}")
    return np.repeat(sizes, counts).astype(size_dtype(max_size))
