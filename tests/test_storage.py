"""Stored value types: quantisation round trips within their error bounds, int4 packing, and byte
counts equal to the files ``np.save`` writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ciess_core.errors import ConfigError
from ciess_core.storage import (
    VALUE_TYPES,
    ValueType,
    count_runs,
    dequantise,
    npy_bytes,
    offsets_from_sizes,
    pack_int4,
    quantisation_bound,
    quantise,
    size_dtype,
    size_runs,
    sizes_file_bytes,
    stored_bytes,
    unpack_int4,
)


@st.composite
def rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Flat values of 1–12 rows of 1–9 values each, magnitudes from 1e-3 to 1e3."""
    sizes = np.array(draw(st.lists(st.integers(1, 9), min_size=1, max_size=12)), dtype=np.int64)
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0, 1e3]))
    values = draw(
        arrays(
            np.float32,
            int(sizes.sum()),
            elements=st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_infinity=False),
        )
    )
    return values * np.float32(scale), sizes


@settings(max_examples=120, deadline=None)
@given(rows(), st.sampled_from(VALUE_TYPES))
def test_every_value_type_round_trips_within_its_bound(
    data: tuple[np.ndarray, np.ndarray], value_type: str
) -> None:
    values, sizes = data
    stored, scales = quantise(values, sizes, value_type)
    kind = ValueType(value_type)
    assert stored.dtype == kind.storage_dtype
    assert stored.size == kind.stored_length(values.size)
    assert (scales is not None) == kind.quantised
    decoded = dequantise(stored, scales, sizes, value_type)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    assert scales is None or scales.size == kind.scale_count(sizes.size)
    starts = offsets_from_sizes(sizes)[:-1]
    largest = np.maximum.reduceat(np.abs(values), starts)
    bound = np.repeat([quantisation_bound(float(m), value_type) for m in largest], sizes)
    if kind.table_scaled:  # one clipped scale: values within its levels keep the bound
        assert scales is not None
        reach = float(scales[0]) * (kind.levels + 0.5)
        bound = np.full_like(bound, quantisation_bound(float(np.abs(values).max()), value_type))
        within = np.abs(values) <= reach
        assert np.all(np.abs(decoded - values)[within] <= bound[within] + 1e-12)
        # never a larger squared error than the unclipped scale's
        unclipped = np.float32(np.float16(np.abs(values).max() / kind.levels))
        if unclipped > 0:
            plain = np.clip(np.rint(values / unclipped), -kind.levels, kind.levels) * unclipped
            assert np.square(decoded - values, dtype=np.float64).sum() <= np.square(
                plain - values, dtype=np.float64
            ).sum() * (1 + 1e-9)
    else:
        assert np.all(np.abs(decoded - values) <= bound + 1e-12)
    if kind.quantised:
        codes = unpack_int4(stored, values.size) if kind.packed else stored
        assert np.abs(codes.astype(np.int16)).max() <= kind.levels
        # The largest magnitude of a row (of the table) is stored at the largest level.
        if kind.table_scaled and np.abs(values).max() > 1e-3:
            assert np.abs(codes.astype(np.int16)).max() >= kind.levels - 1
        elif np.all(largest > 1e-3):
            per_row = np.maximum.reduceat(np.abs(codes.astype(np.int16)), starts)
            assert np.all(per_row >= kind.levels - 1)


def test_a_row_of_zeros_stays_zero() -> None:
    values = np.array([0.0, 0.0, 0.5, -1.0], dtype=np.float32)
    sizes = np.array([2, 2])
    for value_type in ("int8", "int4"):
        stored, scales = quantise(values, sizes, value_type)
        assert scales is not None and scales[0] == 0
        assert dequantise(stored, scales, sizes, value_type)[:2].tolist() == [0.0, 0.0]


@given(st.lists(st.integers(-8, 7), max_size=41))
def test_int4_packing_round_trips_two_codes_per_byte(codes: list[int]) -> None:
    packed = pack_int4(np.array(codes, dtype=np.int8))
    assert packed.dtype == np.uint8 and packed.size == (len(codes) + 1) // 2
    assert unpack_int4(packed, len(codes)).tolist() == codes
    if len(codes) % 2:
        assert packed[-1] >> 4 == 0  # the unused high nibble is zero


def test_the_low_nibble_holds_the_first_code() -> None:
    assert pack_int4(np.array([1, -1], dtype=np.int8)).tolist() == [0xF1]


@pytest.mark.parametrize("length", [0, 1, 7, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8, np.uint16])
def test_npy_bytes_is_the_size_of_the_file_np_save_writes(length: int, dtype: type) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(length, dtype=dtype), allow_pickle=False)
    assert npy_bytes(length, dtype) == buffer.tell()


def test_stored_bytes_counts_values_scales_and_sizes() -> None:
    header = npy_bytes(0, np.uint8)
    assert stored_bytes(10, 30, "float32", 128) == (header + 120) + (header + 10)
    assert stored_bytes(10, 31, "int4", 128) == (header + 16) + (header + 20) + (header + 10)
    assert stored_bytes(10, 31, "int4-table", 128) == (header + 16) + (header + 2) + (header + 10)
    assert stored_bytes(10, 30, "int8", 300, tables=2) == 2 * (
        (header + 30) + (header + 20) + (header + 20)  # sizes of up to 300: two bytes each
    )


def test_sizes_take_the_narrowest_unsigned_type() -> None:
    assert size_dtype(128) == np.uint8 and size_dtype(255) == np.uint8
    assert size_dtype(256) == np.uint16
    with pytest.raises(ConfigError, match="max_size"):
        size_dtype(0)
    with pytest.raises(ConfigError, match="value type must be one of"):
        ValueType("int2")


@given(st.lists(st.integers(1, 300), min_size=0, max_size=60))
def test_sizes_as_runs_round_trip_and_are_counted_as_the_smaller_file(sizes: list[int]) -> None:
    runs = size_runs(sizes)
    assert runs.dtype == np.uint32 and runs.size == 2 * count_runs(sizes)
    pairs = runs.astype(np.int64).reshape(-1, 2)
    assert np.repeat(pairs[:, 0], pairs[:, 1]).tolist() == sizes
    assert np.all(pairs[1:, 0] != pairs[:-1, 0])  # maximal runs
    per_row = npy_bytes(len(sizes), size_dtype(300))
    assert sizes_file_bytes(len(sizes), 300, count_runs(sizes)) == min(
        per_row, npy_bytes(runs.size, np.uint32)
    )


def test_a_table_scale_clips_outliers_when_that_lowers_the_error() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 1.0, 4000).astype(np.float32)
    values[0] = 12.0  # one outlier would spread int4's 7 levels over ±12
    sizes = np.full(400, 10)
    stored, scales = quantise(values, sizes, "int4-table")
    assert scales is not None and float(scales[0]) < 12.0 / 7 * 0.7
    decoded = dequantise(stored, scales, sizes, "int4-table")
    unclipped = np.float32(np.float16(12.0 / 7))
    plain = np.clip(np.rint(values / unclipped), -7, 7) * unclipped
    assert np.square(decoded - values).sum() < 0.5 * np.square(plain - values).sum()
    assert decoded[0] == pytest.approx(7 * float(scales[0]))  # the outlier saturates
    evenly = np.linspace(-1.0, 1.0, 15, dtype=np.float32)  # exactly on int4's levels
    _, kept = quantise(evenly, np.array([15]), "int4-table")
    assert kept is not None and float(kept[0]) == float(np.float16(1.0 / 7))  # nothing clipped
