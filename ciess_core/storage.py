"""How an embedding table is stored, and what it costs in bytes (pure numpy).

A table of ``n`` rows with per-row sizes is stored as three ``.npy`` files:

- ``sizes``: one unsigned integer per row, one byte each when ``max_size`` ≤ 255 (offsets are
  derived from the sizes on load); or, when it takes fewer bytes (equal or per-side equal
  sizes), ``size_runs``: the sizes as runs, ``[size, count, size, count, ...]`` in uint32;
- ``values``: the kept prefixes of the rows back to back, as the table's value type;
- ``scales``: for the integer types only, one float16 per row (``int8``, ``int4``) or one for
  the whole table (``int8-table``, ``int4-table``).

Value types: ``float32``; ``float16``; ``int8`` (each row ``x`` stored as
``round(x / s)`` in [-127, 127] with ``s = max|x| / 127``); ``int4`` (the same in [-7, 7] with
``s = max|x| / 7``, two values per byte, the first in the low nibble). The quantisation is
symmetric: no zero point, since trained embeddings are centred on zero. ``int8-table`` and
``int4-table`` share one scale among all rows, the clip of the table's largest magnitude (1.0
to 0.3 of it, over the levels) with the least squared error, past which outliers saturate
(:func:`table_scale`): two bytes per row fewer, which at a few values per row is most of a
row's bytes.

The byte count of a store is the sum of its files' sizes, ``.npy`` headers included, so that a
manifest's bytes equal what is on disk; :func:`stored_bytes` computes it without writing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ciess_core.errors import ConfigError

VALUE_TYPES = ("float32", "float16", "int8", "int4", "int8-table", "int4-table")
"""Every value type a store may use: the float types, then the integer types with a scale per
row, then with one scale per table."""

QUANTISED_LEVELS = {"int8": 127, "int4": 7}
"""The largest stored magnitude of each integer type (symmetric, so -128 and -8 are unused)."""

_TABLE_SCALED = {"int8-table": "int8", "int4-table": "int4"}

SCALE_DTYPE = np.dtype(np.float16)
DENSE_DTYPE = np.dtype(np.float32)
RUN_DTYPE = np.dtype(np.uint32)


@dataclass(frozen=True)
class ValueType:
    """One of :data:`VALUE_TYPES` and how it is laid out."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in VALUE_TYPES:
            raise ConfigError(f"value type must be one of {list(VALUE_TYPES)}, got {self.name!r}")

    @property
    def codes(self) -> str:
        """How the values are coded: the name without its scale layout (``int4-table``:
        ``int4``)."""
        return _TABLE_SCALED.get(self.name, self.name)

    @property
    def quantised(self) -> bool:
        return self.codes in QUANTISED_LEVELS

    @property
    def table_scaled(self) -> bool:
        """One scale for the whole table rather than one per row."""
        return self.name in _TABLE_SCALED

    @property
    def levels(self) -> int:
        """The largest stored magnitude (integer types only)."""
        return QUANTISED_LEVELS[self.codes]

    @property
    def packed(self) -> bool:
        """Two 4-bit codes per byte."""
        return self.codes == "int4"

    @property
    def storage_dtype(self) -> np.dtype[np.generic]:
        """The dtype of the ``values`` file: int4 is packed into uint8."""
        return np.dtype(
            {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int4": np.uint8}[
                self.codes
            ]
        )

    def stored_length(self, num_values: int) -> int:
        """Entries of the ``values`` file for ``num_values`` values."""
        return (num_values + 1) // 2 if self.packed else num_values

    def scale_count(self, num_rows: int) -> int:
        """Entries of the ``scales`` file (0: the type has none)."""
        if not self.quantised:
            return 0
        return 1 if self.table_scaled else num_rows


def size_dtype(max_size: int) -> np.dtype[np.unsignedinteger]:
    """The narrowest unsigned integer type that holds every size up to ``max_size``."""
    if max_size < 1:
        raise ConfigError(f"max_size must be >= 1, got {max_size}")
    for candidate in (np.uint8, np.uint16, np.uint32):
        if max_size <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    raise ConfigError(f"max_size {max_size} does not fit in 32 bits")


def npy_bytes(length: int, dtype: npt.DTypeLike) -> int:
    """Size of the ``.npy`` file that ``np.save`` writes for a 1-D array (header included)."""
    header = io.BytesIO()
    kind = np.dtype(dtype)
    fields = {"descr": np.lib.format.dtype_to_descr(kind), "fortran_order": False}
    np.lib.format.write_array_header_1_0(header, {**fields, "shape": (length,)})
    return header.tell() + length * kind.itemsize


def size_runs(sizes: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """``sizes`` as runs of equal sizes: ``[size, count, size, count, ...]``."""
    array = np.asarray(sizes, dtype=np.int64)
    if array.size == 0:
        return np.zeros(0, dtype=RUN_DTYPE)
    starts = np.flatnonzero(np.r_[True, array[1:] != array[:-1]])
    counts = np.diff(np.r_[starts, array.size])
    return np.column_stack([array[starts], counts]).reshape(-1).astype(RUN_DTYPE)


def count_runs(sizes: npt.ArrayLike) -> int:
    """How many runs of equal sizes ``sizes`` holds."""
    array = np.asarray(sizes)
    return int(array.size and 1 + np.count_nonzero(array[1:] != array[:-1]))


def sizes_file_bytes(num_rows: int, max_size: int, num_runs: int | None = None) -> int:
    """Bytes of a table's sizes: one per row, or ``num_runs`` runs when given and smaller."""
    per_row = npy_bytes(num_rows, size_dtype(max_size))
    if num_runs is None:
        return per_row
    return min(per_row, npy_bytes(2 * num_runs, RUN_DTYPE))


def runs_pay(num_rows: int, max_size: int, num_runs: int) -> bool:
    """Whether ``num_runs`` runs take fewer bytes than one size per row."""
    return npy_bytes(2 * num_runs, RUN_DTYPE) < npy_bytes(num_rows, size_dtype(max_size))


def table_file_bytes(
    num_rows: int, num_values: int, value_type: str, max_size: int, num_runs: int | None = None
) -> dict[str, int]:
    """Bytes of each file of one stored table: ``sizes`` (per row, or as ``num_runs`` runs when
    given and smaller), ``values`` and (integer types) ``scales``."""
    kind = ValueType(value_type)
    files = {
        "sizes": sizes_file_bytes(num_rows, max_size, num_runs),
        "values": npy_bytes(kind.stored_length(num_values), kind.storage_dtype),
    }
    if kind.quantised:
        files["scales"] = npy_bytes(kind.scale_count(num_rows), SCALE_DTYPE)
    return files


def stored_bytes(
    num_rows: int,
    num_values: int,
    value_type: str,
    max_size: int,
    tables: int = 1,
    num_runs: int | None = None,
) -> int:
    """Every stored byte of ``tables`` tables of ``num_rows`` rows holding ``num_values`` values
    each (sizes in ``num_runs`` runs, when given): what a byte budget counts."""
    per_table = table_file_bytes(num_rows, num_values, value_type, max_size, num_runs)
    return tables * sum(per_table.values())


def smallest_store(num_rows: int, max_size: int, tables: int = 1) -> tuple[int, str]:
    """The bytes and value type of the smallest stores that keep one value a row in each of
    ``tables`` tables (one size per row): no byte budget below them can be met."""
    return min(
        (stored_bytes(num_rows, num_rows, value_type, max_size, tables), value_type)
        for value_type in VALUE_TYPES
    )


def dense_fp32_bytes(num_rows: int, max_size: int, tables: int = 1) -> int:
    """Bytes of the same tables dense at ``max_size`` in float32 (values only): the reference
    of a byte ratio."""
    return tables * num_rows * max_size * DENSE_DTYPE.itemsize


# -- quantisation ---------------------------------------------------------------------------------


def offsets_from_sizes(sizes: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """(n + 1,) int64 exclusive prefix sums of (n,) sizes: row ``r`` of the flat values is
    ``values[offsets[r]:offsets[r + 1]]``."""
    array = np.asarray(sizes, dtype=np.int64)
    offsets = np.zeros(array.size + 1, dtype=np.int64)
    np.cumsum(array, out=offsets[1:])
    return offsets


def quantise(
    values: npt.NDArray[np.floating], sizes: npt.NDArray[np.integer], value_type: str
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float16] | None]:
    """Store flat row-major ``values`` (rows of ``sizes``, every size ≥ 1) as ``value_type``.

    Returns the ``values`` file's array and, for the integer types, the scales (one per row, or
    one for a ``-table`` type; else None). Each integer value is ``round(x / s)`` clipped to
    ±levels. A row's ``s`` is its largest magnitude over the levels; a table's is the one of
    :func:`table_scale` (the squared error's least over clipped scales: values past it
    saturate). Scales are rounded to float16 first, so that decoding uses exactly the stored
    scale."""
    kind = ValueType(value_type)
    flat = np.asarray(values, dtype=np.float32)
    if not kind.quantised:
        return flat.astype(kind.storage_dtype), None
    if kind.table_scaled:
        scales = np.array([table_scale(flat, kind.levels)], dtype=SCALE_DTYPE)
    else:
        starts = offsets_from_sizes(sizes)[:-1]
        largest = np.maximum.reduceat(np.abs(flat), starts) if flat.size else np.zeros(0)
        scales = (largest / kind.levels).astype(SCALE_DTYPE)
    per_value = _per_value(scales, sizes, kind)
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(per_value > 0, flat / per_value, 0.0)
    codes = np.clip(np.rint(steps), -kind.levels, kind.levels).astype(np.int8)
    if kind.packed:
        return pack_int4(codes), scales
    return codes, scales


TABLE_CLIPS = tuple(round(1.0 - 0.05 * step, 2) for step in range(15))
"""The fractions of a table's largest magnitude that :func:`table_scale` tries (1.0 to 0.3)."""


def table_scale(values: npt.NDArray[np.float32], levels: int) -> np.float16:
    """The float16 scale of one table's ``values`` at ``levels`` with the least squared error
    among :data:`TABLE_CLIPS` of the largest magnitude (ties: the larger). One scale serves a
    whole table, so a few outliers would otherwise spread its levels over values most rows
    never reach (``docs/benchmarks/table-scale.md``: a retrained candidate of ML-1M's 0.01 byte
    budget loses 2.5 % of validation N@20 at the largest magnitude, 0.5 % at this scale)."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    best, best_error = np.float16(largest / levels), np.inf
    for clip in TABLE_CLIPS:
        scale = np.float16(clip * largest / levels)
        if scale <= 0:
            break
        step = np.float32(scale)
        decoded = np.clip(np.rint(values / step), -levels, levels) * step
        error = float(np.square(decoded - values, dtype=np.float64).sum())
        if error < best_error:
            best, best_error = scale, error
    return best


def _per_value(
    scales: npt.NDArray[np.float16], sizes: npt.NDArray[np.integer], kind: ValueType
) -> npt.NDArray[np.float32]:
    """Each value's scale: the table's, or its row's repeated over the row."""
    as_float = scales.astype(np.float32)
    if kind.table_scaled:
        return np.full(int(np.sum(sizes, dtype=np.int64)), as_float[0], dtype=np.float32)
    return np.repeat(as_float, np.asarray(sizes, dtype=np.int64))


def dequantise(
    stored: npt.NDArray[np.generic],
    scales: npt.NDArray[np.float16] | None,
    sizes: npt.NDArray[np.integer],
    value_type: str,
) -> npt.NDArray[np.float32]:
    """The float32 values of a store written by :func:`quantise` (a float store, converted)."""
    kind = ValueType(value_type)
    if not kind.quantised:
        return np.asarray(stored, dtype=np.float32)
    if scales is None:
        raise ConfigError(f"an {value_type} store needs its scales")
    counts = np.asarray(sizes, dtype=np.int64)
    total = int(counts.sum())
    codes = unpack_int4(stored, total) if kind.packed else np.asarray(stored)
    return codes.astype(np.float32) * _per_value(scales, counts, kind)


def pack_int4(codes: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """Two signed 4-bit codes per byte, the first in the low nibble; an odd count leaves a
    zero high nibble in the last byte."""
    nibbles = (np.asarray(codes, dtype=np.int8) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: npt.NDArray[np.generic], count: int) -> npt.NDArray[np.int8]:
    """The first ``count`` signed codes of :func:`pack_int4`'s bytes."""
    data = np.asarray(packed, dtype=np.uint8)
    nibbles = np.empty(data.size * 2, dtype=np.uint8)
    nibbles[0::2] = data & 0x0F
    nibbles[1::2] = data >> 4
    signed = (nibbles[:count].astype(np.int16) ^ 8) - 8
    return signed.astype(np.int8)


def quantisation_bound(largest: float, value_type: str) -> float:
    """The largest error :func:`quantise` makes on a row whose largest magnitude is
    ``largest`` (a ``-table`` type: on a value within its clipped scale's levels): half a step
    of the row's (the table's unclipped) scale, plus what the float16 rounding of the scale
    moves the largest value (float types: their own rounding)."""
    kind = ValueType(value_type)
    if kind.name == "float32":
        return 0.0
    if kind.name == "float16":
        return largest * 2.0**-11 + 2.0**-24
    step = largest / kind.levels
    return step * (0.5 + (kind.levels + 1) * 2.0**-11) + 2.0**-24 * kind.levels


def largest_within(budget: int, most: int, cost: Callable[[int], int]) -> int:
    """The largest count in [0, ``most``] whose ``cost`` (growing with the count) is at most
    ``budget``; -1 when not even 0 fits. A bisection."""
    if cost(0) > budget:
        return -1
    low, high = 0, most  # low fits; find the largest that does
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def equal_stored_bytes(
    num_rows: int, size: int, value_type: str, max_size: int, tables: int = 1
) -> int:
    """Every stored byte of ``tables`` stores of ``value_type`` whose ``num_rows`` rows all keep
    ``size`` values (one run of sizes)."""
    return stored_bytes(num_rows, num_rows * size, value_type, max_size, tables, num_runs=1)


def widest_equal_size(
    byte_budget: int, num_rows: int, value_type: str, max_size: int, tables: int = 1
) -> int:
    """The largest size that every one of ``num_rows`` rows can keep in ``tables`` stores of
    ``value_type`` within ``byte_budget`` (:func:`equal_stored_bytes`); 0 when not even a size
    of 1 fits."""
    values = parameters_within(byte_budget, num_rows, value_type, max_size, tables, num_runs=1)
    return min(max_size, values // num_rows) if values >= num_rows else 0


def parameters_within(
    byte_budget: int,
    num_rows: int,
    value_type: str,
    max_size: int,
    tables: int = 1,
    num_runs: int | None = None,
) -> int:
    """The most values per table (Σ sizes, at most ``num_rows · max_size``) whose ``tables``
    stores of ``value_type`` (sizes in ``num_runs`` runs, when given) take at most
    ``byte_budget`` bytes; -1 when not even an empty store fits."""
    return largest_within(
        byte_budget,
        num_rows * max_size,
        lambda values: stored_bytes(num_rows, values, value_type, max_size, tables, num_runs),
    )
